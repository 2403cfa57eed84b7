"""Hard-example views: the images a model gets wrong are found per kind and repeated."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import make_tiny_dataset
from pipeline import dataprep, hardmining


class RedDiscReader:
    """A segmenter that finds the tiny dataset's red disc exactly, so only a wrong mask scores low."""

    work_size = (64, 48)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        r, g, b = (frames[..., i].astype(int) for i in range(3))
        return ((r > 150) & (g < 110) & (b < 110)).astype(np.float32)


WRONG_MASKS = {"eg1800_003", "eg1800_005", "ccp_002"}


@pytest.fixture
def train(tmp_path: Path) -> Path:
    """8 portraits, 4 street photos and 2 video frames (a red disc each); three masks drawn wrong."""
    root = make_tiny_dataset(tmp_path / "train", n=14)
    names = [f"eg1800_{i:03d}" for i in range(8)] + [f"ccp_{i:03d}" for i in range(4)] + ["clip_000", "clip_001"]
    for i, name in enumerate(names):
        for sub, suffix in (("images", ".jpg"), ("masks", ".png")):
            (root / sub / f"{i:03d}{suffix}").rename(root / sub / f"{name}{suffix}")
        if name in WRONG_MASKS:   # the disc moved to a corner: the reader's answer now misses it
            wrong = np.zeros((48, 64), np.uint8)
            cv2.circle(wrong, (8, 8), 12, 255, -1)
            cv2.imwrite(str(root / "masks" / f"{name}.png"), wrong)
    return root


def test_the_hardest_of_each_kind_are_the_wrongly_labelled(train: Path) -> None:
    scores = hardmining.score_images(RedDiscReader(), train, ("eg1800_", "ccp_"))
    assert len(scores) == 12 and not any(stem.startswith("clip_") for stem in scores)
    assert min(scores[s] for s in scores if s not in WRONG_MASKS) > 0.9
    assert max(scores[s] for s in WRONG_MASKS) < 0.2
    # a quarter of each kind: 2 of 8 portraits, 1 of 4 street photos
    assert hardmining.hardest(scores, ("eg1800_", "ccp_"), share=0.25) == WRONG_MASKS
    assert hardmining.hardest(scores, ("eg1800_",), share=0.25) == {"eg1800_003", "eg1800_005"}


def test_hard_view_doubles_every_link_to_a_hard_image(train: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    assert dataprep.build_weighted_view(train, base, {"ccp_": 2}) == 8 + 2 * 4 + 2
    view = tmp_path / "hard"
    # 2 portraits once each, the street photo's two base links twice each
    assert hardmining.build_hard_view(base, view, WRONG_MASKS) == 18 + 2 + 2
    images = sorted(p.stem for p in (view / "images").iterdir())
    masks = sorted(p.stem for p in (view / "masks").iterdir())
    assert images == masks
    assert images.count("ccp_002_hard") == 1 and "ccp_002_rep1_hard" in images and "eg1800_000_hard" not in images
    for entry in (view / "images").iterdir():
        assert entry.is_symlink() and entry.resolve().parent == (train / "images").resolve()
    assert (view / "images" / "ccp_002_rep1_hard.jpg").resolve().stem == "ccp_002"
    # building again replaces the view instead of adding to it
    assert hardmining.build_hard_view(base, view, {"eg1800_000"}) == 18 + 1


def test_command_line_writes_the_view(train: Path, tmp_path: Path, tiny_model: Path, capsys) -> None:
    view = tmp_path / "hard"
    # the training set itself as the base, as README's own-footage example does
    assert hardmining.main(["--model", str(tiny_model), "--train", str(train), "--base", str(train),
                            "--out", str(view), "--backend", "torch", "--share", "0.5"]) == 0
    # half of the 8 portraits and of the 4 street photos: 4 + 2 extra links
    assert len(list((view / "images").iterdir())) == 14 + 4 + 2
    assert f"{view}: 20 images (6 hard of 12 scored" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        hardmining.main(["--model", str(tiny_model), "--train", str(train), "--base", str(train),
                         "--out", str(view), "--share", "1.5"])


def test_floor_leaves_wrong_labels_out_and_lists_them(train: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(hardmining, "load_segmenter", lambda model, backend: RedDiscReader())
    base = tmp_path / "base"
    dataprep.build_weighted_view(train, base, {"ccp_": 2})
    view = tmp_path / "hard"
    assert hardmining.main(["--model", "disc", "--train", str(train), "--base", str(base), "--out", str(view),
                            "--prefix", "eg1800_", "--prefix", "ccp_", "--floor", "0.5"]) == 0
    targets = [entry.resolve().stem for entry in (view / "images").iterdir()]
    assert not WRONG_MASKS & set(targets)                     # every link to a wrong label is gone
    # the base's 18 links less 2 portraits and ccp_002's 2 links, plus the one hard portrait of the 6 left
    # (a quarter of 3 street photos rounds down to none)
    assert len(targets) == 18 - 2 - 2 + 1
    assert sum(entry.stem.endswith("_hard") for entry in (view / "images").iterdir()) == 1
    listed = [line.split("\t")[0] for line in (view / "suspects.txt").read_text().splitlines()]
    assert listed == sorted(WRONG_MASKS)
    assert "3 scoring under 0.5 left out" in capsys.readouterr().out


@pytest.mark.parametrize("problem", ["no such prefix", "missing train", "missing base", "missing model"])
def test_bad_input_is_one_line_and_no_view(train: Path, tmp_path: Path, tiny_model: Path, capsys,
                                           problem: str) -> None:
    args = {"--model": str(tiny_model), "--train": str(train), "--base": str(train),
            "--out": str(tmp_path / "hard"), "--backend": "torch"}
    if problem == "no such prefix":
        args["--prefix"] = "nobody_"
    else:
        key = {"missing train": "--train", "missing base": "--base", "missing model": "--model"}[problem]
        args[key] = str(tmp_path / "nope.safetensors")
    assert hardmining.main([item for pair in args.items() for item in pair]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert not (tmp_path / "hard").exists()
