"""Tests for pipeline.dataprep on tiny synthetic datasets.

    .venv/bin/python -m pytest tests/test_dataprep.py -q

The teacher tests need ai-edge-litert and the two selfie models (../shared/tools/get-teacher.sh);
they skip, saying why, where either is missing.
"""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from pipeline import dataprep
from pipeline.dataprep import Cutout, Placement

MAX_SIDE = 64


def _person(h: int, w: int, *, full_body: bool, soft: bool) -> np.ndarray:
    """A head-and-shoulders (or standing) blob; soft=True gives EG1800-like anti-aliased edges."""
    msk = np.zeros((h, w), np.uint8)
    if full_body:
        cv2.ellipse(msk, (w // 2, h // 6), (w // 10, h // 12), 0, 0, 360, 255, -1)        # head
        cv2.rectangle(msk, (w // 3, h // 4), (2 * w // 3, h - h // 10), 255, -1)          # body to the feet
    else:
        cv2.ellipse(msk, (w // 2, h // 3), (w // 5, h // 5), 0, 0, 360, 255, -1)
        cv2.rectangle(msk, (w // 6, h // 2), (5 * w // 6, h - 1), 255, -1)                # cut by the bottom edge
    if soft:
        msk = cv2.GaussianBlur(msk, (5, 5), 0)
    return msk


def _dataset(root: Path, prefix: str, size: tuple[int, int], *, n_train: int, n_test: int, full_body: bool) -> None:
    """images/, masks/, train.txt, test.txt; test images are pure magenta so a leak would show."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    h, w = size
    train = [f"{prefix}tr{i}" for i in range(n_train)]
    test = [f"{prefix}te{i}" for i in range(n_test)]
    rng = np.random.default_rng(0)
    for stem in train + test:
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        if stem in test:
            img[:] = (255, 0, 255)
        cv2.imwrite(str(root / "images" / f"{stem}.jpg"), img)
        cv2.imwrite(str(root / "masks" / f"{stem}.png"), _person(h, w, full_body=full_body, soft=True))
    (root / "train.txt").write_text("\n".join(train) + "\n")
    (root / "test.txt").write_text("\n".join(test) + "\n")


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """A miniature ../shared: eg1800-like portraits, ccp-like full-body photos, three rooms, no media."""
    root = tmp_path / "shared"
    _dataset(root / "datasets" / "eg1800", "eg", (96, 72), n_train=5, n_test=3, full_body=False)
    _dataset(root / "datasets" / "ccp-person", "cc", (120, 80), n_train=5, n_test=3, full_body=True)
    rooms = root / "datasets" / "backgrounds"
    rooms.mkdir()
    for i, size in enumerate([(90, 160), (120, 160), (100, 100)]):
        cv2.imwrite(str(rooms / f"room{i}.jpg"), np.full((*size, 3), 40 + 60 * i, np.uint8))
    return root


def _build(shared: Path, out: Path) -> dict:
    return dataprep.build(shared, out, max_side=MAX_SIDE, quality=90, teacher_dir=None, composites=(6, 4),
                          walls=4)


def _pairs(train: Path) -> list[tuple[Path, Path]]:
    images = sorted((train / "images").iterdir())
    return [(p, train / "masks" / f"{p.stem}.png") for p in images]


def test_test_split_never_reaches_training(shared: Path, tmp_path: Path) -> None:
    _build(shared, tmp_path / "out")
    names = [p.stem for p in (tmp_path / "out" / "train" / "images").iterdir()]
    assert names, "nothing was built"
    assert not [n for n in names if "te" in n.split("_")[-1]], "a test.txt stem was used for training"
    # by content too: test images are pure magenta, which the random training images never are
    for img_path, _ in _pairs(tmp_path / "out" / "train"):
        img = cv2.imread(str(img_path)).astype(int)
        magenta = (img[..., 0] > 200) & (img[..., 1] < 60) & (img[..., 2] > 200)
        assert magenta.mean() < 0.2, img_path.name
    assert sorted(p.stem for p in (tmp_path / "out" / "eval" / "eg1800-test" / "images").iterdir()) == \
        ["egte0", "egte1", "egte2"]
    assert len(list((tmp_path / "out" / "eval" / "ccp-test" / "masks").iterdir())) == 3


def test_masks_binary_aligned_and_within_max_side(shared: Path, tmp_path: Path) -> None:
    _build(shared, tmp_path / "out")
    pairs = _pairs(tmp_path / "out" / "train")
    assert len(pairs) == len(list((tmp_path / "out" / "train" / "masks").iterdir()))
    for img_path, msk_path in pairs:
        img = cv2.imread(str(img_path), cv2.IMREAD_UNCHANGED)
        msk = cv2.imread(str(msk_path), cv2.IMREAD_UNCHANGED)
        assert msk is not None and msk.ndim == 2 and msk.dtype == np.uint8, msk_path.name
        assert set(np.unique(msk)) <= {0, 255}, msk_path.name
        assert msk.any(), f"{msk_path.name}: no person"
        assert img.shape[:2] == msk.shape, img_path.name
        assert max(img.shape[:2]) <= MAX_SIDE, img_path.name


def test_manifest_counts_match_files(shared: Path, tmp_path: Path) -> None:
    manifest = _build(shared, tmp_path / "out")
    on_disk = json.loads((tmp_path / "out" / "MANIFEST.json").read_text())
    assert on_disk == manifest
    assert manifest["train_total"] == len(list((tmp_path / "out" / "train" / "images").iterdir()))
    assert manifest["train_counts"]["eg1800"] == 5 and manifest["train_counts"]["ccp"] == 5
    assert manifest["train_counts"]["ccp-crop"] == 5
    assert manifest["heldout_clips"] == list(dataprep.HELDOUT_CLIPS)
    assert manifest["seed"] == dataprep.SEED and manifest["teacher"] is None


def test_build_is_reproducible(shared: Path, tmp_path: Path) -> None:
    def digest(out: Path) -> dict[str, str]:
        return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted((out / "train").rglob("*")) if p.is_file()}
    _build(shared, tmp_path / "a")
    _build(shared, tmp_path / "b")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_webp_build_has_the_same_samples_and_loads_for_training(shared: Path, tmp_path: Path) -> None:
    from fastai.vision.core import PILImage

    from pipeline.train import find_pairs

    _build(shared, tmp_path / "jpg")
    manifest = dataprep.build(shared, tmp_path / "webp", max_side=MAX_SIDE, quality=80, image_format="webp",
                              teacher_dir=None, composites=(6, 4), walls=4)
    assert manifest["image_format"] == "webp" and manifest["quality"] == 80
    jpg, webp = tmp_path / "jpg" / "train", tmp_path / "webp" / "train"
    assert {p.suffix for p in (webp / "images").iterdir()} == {".webp"}
    assert sorted(p.stem for p in (webp / "images").iterdir()) == sorted(p.stem for p in (jpg / "images").iterdir())
    for msk in (webp / "masks").iterdir():   # same samples: the masks are lossless and must match exactly
        assert msk.read_bytes() == (jpg / "masks" / msk.name).read_bytes(), msk.name
        img = cv2.imread(str(webp / "images" / f"{msk.stem}.webp"))
        assert img is not None and img.shape[:2] == cv2.imread(str(msk), cv2.IMREAD_GRAYSCALE).shape
    pairs = find_pairs(webp)
    assert len(pairs) == manifest["train_total"]
    h, w = cv2.imread(str(pairs[0])).shape[:2]
    assert PILImage.create(pairs[0]).size == (w, h)   # what the training DataBlock opens them with


def test_unknown_image_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_format"):
        dataprep.SampleWriter(tmp_path, max_side=64, quality=80, image_format="gif")


def test_ccp_full_body_subset(shared: Path, tmp_path: Path) -> None:
    manifest = dataprep.build(shared, tmp_path / "out", max_side=MAX_SIDE, ccp_full_body=2, teacher_dir=None,
                              composites=(0, 0), walls=0)
    assert manifest["train_counts"]["ccp"] == 2 and manifest["train_counts"]["ccp-crop"] == 5


def test_more_composites_keep_the_smaller_builds_rooms_and_walls(shared: Path, tmp_path: Path) -> None:
    def files(out: Path, prefix: str) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted((out / "train" / "images").glob(f"{prefix}*"))}

    common = ["--shared", str(shared), "--max-side", str(MAX_SIDE), "--no-teacher"]
    assert dataprep.main([*common, "--out", str(tmp_path / "small"), "--composites", "3", "2", "2"]) == 0
    assert dataprep.main([*common, "--out", str(tmp_path / "large"), "--composites", "9", "6", "6"]) == 0
    manifest = json.loads((tmp_path / "large" / "MANIFEST.json").read_text())
    assert manifest["composites"] == {"rooms": 9, "photos": 6, "walls": 6, "colour_match": dataprep.COLOUR_MATCH}
    assert manifest["train_counts"]["composite-room"] == 9 and manifest["train_counts"]["composite-wall"] == 6
    for prefix in ("comproom_", "compwall_"):
        small, large = files(tmp_path / "small", prefix), files(tmp_path / "large", prefix)
        assert len(small) < len(large) and small.items() <= large.items(), prefix   # kept byte for byte, and more


def test_negative_composite_count_is_refused(shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        dataprep.main(["--shared", str(shared), "--out", str(tmp_path / "out"), "--composites", "1", "-1", "1"])
    assert exc.value.code != 0 and "--composites" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_wall_composites_put_one_labelled_person_on_a_plain_background(shared: Path, tmp_path: Path) -> None:
    manifest = dataprep.build(shared, tmp_path / "out", max_side=MAX_SIDE, teacher_dir=None, composites=(0, 0),
                              walls=8)
    assert manifest["train_counts"]["composite-wall"] == 8
    pairs = [pair for pair in _pairs(tmp_path / "out" / "train") if pair[0].stem.startswith("compwall_")]
    assert len(pairs) == 8
    for img_path, msk_path in pairs:
        grey = cv2.cvtColor(cv2.imread(str(img_path)), cv2.COLOR_BGR2GRAY)
        msk = cv2.imread(str(msk_path), cv2.IMREAD_GRAYSCALE)
        texture = np.abs(cv2.Laplacian(grey.astype(np.float32), cv2.CV_32F))
        person = cv2.erode(msk, np.ones((3, 3), np.uint8)) > 0
        backdrop = cv2.dilate(msk, np.ones((7, 7), np.uint8)) == 0
        assert person.any() and backdrop.any(), img_path.name
        # the fixture's people are noise; the backdrop must be far smoother, and unlabelled
        assert texture[backdrop].mean() < 0.25 * texture[person].mean(), img_path.name


def test_plain_walls_are_flat_or_defocused(tmp_path: Path) -> None:
    rooms = [tmp_path / f"busy{i}.png" for i in range(2)]     # all detail, so only defocus can smooth them
    for i, room in enumerate(rooms):
        cv2.imwrite(str(room), np.random.default_rng(i).integers(0, 255, (80, 120, 3), dtype=np.uint8))
    for seed in range(8):
        wall = dataprep.plain_wall(rooms, np.random.default_rng(seed), size=64)
        assert wall.shape == (64, 64, 3) and wall.dtype == np.uint8
        # sensor noise and a gentle light gradient at most: once the noise is smoothed away, no edges
        smooth = cv2.GaussianBlur(wall.astype(np.float32), (0, 0), 3)
        assert np.abs(cv2.Laplacian(smooth, cv2.CV_32F)).mean() < 0.2


def test_paste_label_is_the_pasted_persons_mask() -> None:
    pha = _person(40, 30, full_body=False, soft=False)
    cut = Cutout(np.full((40, 30, 3), (10, 200, 30), np.uint8), pha, False, False, True)
    bgr = np.full((50, 80, 3), 128, np.uint8)
    at = Placement(x=60, y=10, w=30, h=40)          # overhangs the right edge by 10 px
    com, msk = dataprep.paste(bgr, np.zeros((50, 80), np.uint8), cut, at)
    want = np.zeros((50, 80), np.uint8)
    want[10:50, 60:80] = pha[:, :20]
    np.testing.assert_array_equal(msk, want)
    # the person continues past the canvas edge, so erode as if the outside were background
    inner = cv2.erode(want, np.ones((5, 5), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
    assert (com[inner] == (10, 200, 30)).all()       # the person's own colour inside
    assert (com[cv2.dilate(want, np.ones((5, 5), np.uint8)) == 0] == 128).all()   # the room untouched outside


def test_paste_keeps_a_background_person_labelled() -> None:
    pha = np.full((10, 10), 255, np.uint8)
    cut = Cutout(np.zeros((10, 10, 3), np.uint8), pha, False, False, True)
    bgr_msk = np.zeros((40, 40), np.uint8)
    bgr_msk[0:20, 25:40] = 255
    _, msk = dataprep.paste(np.zeros((40, 40, 3), np.uint8), bgr_msk, cut, Placement(0, 30, 10, 10))
    assert (msk[0:20, 25:40] == 255).all() and (msk[30:40, 0:10] == 255).all()
    assert msk.sum() == (20 * 15 + 100) * 255


def test_placement_is_bottom_anchored_and_inside() -> None:
    rng = np.random.default_rng(1)
    for i in range(50):
        cut = Cutout(np.zeros((60, 40, 3), np.uint8), np.full((60, 40), 255, np.uint8), False, False, i % 2 == 0)
        at = dataprep.choose_placement(cut, (90, 160), rng)
        if cut.bottom:
            assert at.y + at.h == 90
        else:
            assert 90 - 0.1 * 90 <= at.y + at.h <= 90
        assert at.y >= 0, "the head must not leave the frame"
        assert -at.w // 5 - 1 <= at.x <= 160 - at.w + at.w // 5 + 1


def test_placement_of_a_side_cut_person_fills_the_width() -> None:
    cut = Cutout(np.zeros((60, 40, 3), np.uint8), np.full((60, 40), 255, np.uint8), True, True, True)
    for seed in range(30):
        rng = np.random.default_rng(seed)
        H = 100
        W = round(H * dataprep.canvas_aspect(cut, rng))
        at = dataprep.choose_placement(cut, (H, W), rng)
        assert at.x <= 0 and at.x + at.w >= W and at.y + at.h == H
        assert at.y >= 0, "the head must not leave the frame"


def test_upper_body_crop_cuts_through_the_body() -> None:
    msk = _person(300, 200, full_body=True, soft=False)
    img = np.zeros((300, 200, 3), np.uint8)
    y0, y1 = 300 // 6 - 300 // 12, 300 - 300 // 10 + 1      # the blob's box
    for seed in range(20):
        crop = dataprep.upper_body_crop(img, msk, np.random.default_rng(seed))
        assert crop is not None
        cimg, cmsk = crop
        assert cimg.shape[:2] == cmsk.shape
        assert cmsk[-1].any(), "the crop's bottom edge should cut through the person"
        assert 0.45 * (y1 - y0) <= cmsk.shape[0] <= 0.75 * (y1 - y0)
    assert dataprep.upper_body_crop(img, np.zeros_like(msk), np.random.default_rng(0)) is None


@pytest.mark.parametrize("shape", [(480, 360), (830, 550), (100, 50), (1280, 720)])
def test_fit_max_side(shape: tuple[int, int]) -> None:
    img = np.zeros((*shape, 3), np.uint8)
    msk = np.zeros(shape, np.uint8)
    msk[shape[0] // 4:, shape[1] // 4:] = 255
    out_img, out_msk = dataprep.fit_max_side(img, msk, 384)
    assert max(out_img.shape[:2]) == min(384, max(shape))   # shrinks to the limit, never enlarges
    assert out_img.shape[:2] == out_msk.shape and set(np.unique(out_msk)) <= {0, 255}


def test_binarize_thresholds_soft_masks() -> None:
    np.testing.assert_array_equal(dataprep.binarize(np.array([0, 28, 127, 128, 226, 255], np.uint8)),
                                  [0, 0, 0, 255, 255, 255])


def test_heldout_clips_are_not_training_clips(tmp_path: Path) -> None:
    media = tmp_path / "media"
    for clip in (*dataprep.HELDOUT_CLIPS, "grid/a.mpg", "asl/b.mkv", "talking/d12.mp4"):
        (media / clip).parent.mkdir(parents=True, exist_ok=True)
        (media / clip).write_bytes(b"")
    (media / "SOURCES.md").write_text("not a clip")
    assert dataprep.training_clips(media) == ["asl/b.mkv", "grid/a.mpg", "talking/d12.mp4"]
    assert set(dataprep.EVAL_FRAME_CLIPS) <= set(dataprep.HELDOUT_CLIPS)


def test_real_media_split() -> None:
    media = Path(__file__).resolve().parents[1].parent / "shared" / "media"
    if not media.is_dir():
        pytest.skip(f"{media} not found")
    clips = dataprep.training_clips(media)
    assert len([c for c in clips if c.startswith("grid/")]) == 9
    assert len([c for c in clips if c.startswith("asl/")]) == 18
    assert [c for c in clips if c.startswith("talking/")] == ["talking/d12.mp4"]
    assert all((media / c).is_file() for c in dataprep.HELDOUT_CLIPS)


def _tiny_clip(path: Path, *, seconds: float = 2.0, fps: int = 10, size: tuple[int, int] = (96, 64)) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(int(seconds * fps)):
            rgb = np.full((size[1], size[0], 3), (i * 10) % 255, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def test_sample_frames_by_time(tmp_path: Path) -> None:
    clip = _tiny_clip(tmp_path / "c.mp4")
    times = [t for t, rgb in dataprep.sample_frames(clip, interval=0.5, cap=10)]
    assert times == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert len(list(dataprep.sample_frames(clip, interval=0.1, cap=3))) == 3
    _, rgb = next(dataprep.sample_frames(clip, interval=1, cap=1))
    assert rgb.shape == (64, 96, 3) and rgb.dtype == np.uint8


@pytest.fixture
def teacher() -> dataprep.Teacher:
    pytest.importorskip("ai_edge_litert", reason="teacher runtime ai-edge-litert not installed")
    for name in dataprep.TEACHER_MODELS.values():
        if not (dataprep.DEFAULT_TEACHER_DIR / name).is_file():
            pytest.skip(f"teacher model {name} not in {dataprep.DEFAULT_TEACHER_DIR}: "
                        "run ../shared/tools/get-teacher.sh")
    return dataprep.Teacher(dataprep.DEFAULT_TEACHER_DIR)


def test_teacher_probability_shape_and_choice(teacher: dataprep.Teacher) -> None:
    assert teacher.kind_for(288, 360) == "landscape"
    assert teacher.kind_for(512, 512) == "general" and teacher.kind_for(1280, 720) == "general"
    for h, w in [(288, 360), (1280, 720)]:
        prob = teacher(np.full((h, w, 3), 90, np.uint8))
        assert prob.shape == (h, w) and prob.dtype == np.float32
        assert 0.0 <= prob.min() and prob.max() <= 1.0
    assert set(teacher.describe()["models"]) == {"general", "landscape"}


def test_label_clip_writes_binary_teacher_masks(teacher: dataprep.Teacher, tmp_path: Path) -> None:
    media = tmp_path / "media"
    (media / "grid").mkdir(parents=True)
    _tiny_clip(media / "grid" / "x.mp4")
    out = dataprep.SampleWriter(tmp_path / "train", max_side=MAX_SIDE, quality=90)
    probs = tmp_path / "probs"
    probs.mkdir()
    dataprep.label_clip(teacher, media, "grid/x.mp4", out, interval=0.5, cap=3, source="teacher-grid", probs=probs)
    assert out.counts == {"teacher-grid": 3}
    for img_path, msk_path in _pairs(tmp_path / "train"):
        msk = cv2.imread(str(msk_path), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(msk)) <= {0, 255} and msk.shape == cv2.imread(str(img_path)).shape[:2]
    assert sorted(p.name for p in probs.iterdir()) == [f"clip_grid-x_{j:03d}.png" for j in range(3)]


def test_video_weighted_view_repeats_only_video_frames(tmp_path: Path) -> None:
    train = tmp_path / "train"
    for sub in ("images", "masks"):
        (train / sub).mkdir(parents=True)
    for stem in ("eg1800_0001", "clip_grid-x_000"):
        cv2.imwrite(str(train / "images" / f"{stem}.jpg"), np.zeros((8, 8, 3), np.uint8))
        cv2.imwrite(str(train / "masks" / f"{stem}.png"), np.full((8, 8), 255, np.uint8))
    view = tmp_path / "weighted"
    assert dataprep.build_video_weighted(train, view, weight=3) == 4
    images = sorted(p.name for p in (view / "images").iterdir())
    assert images == ["clip_grid-x_000.jpg", "clip_grid-x_000_rep1.jpg", "clip_grid-x_000_rep2.jpg", "eg1800_0001.jpg"]
    assert sorted(p.stem for p in (view / "masks").iterdir()) == [Path(n).stem for n in images]
    assert all((view / "images" / n).resolve() == (train / "images" / "clip_grid-x_000.jpg").resolve()
               for n in images[:3])
    assert dataprep.build_video_weighted(train, view, weight=1) == 2   # rebuilt, nothing stale left
    assert len(list((view / "masks").iterdir())) == 2


def test_weighted_view_repeats_each_prefix_its_own_number_of_times(tmp_path: Path) -> None:
    train = tmp_path / "train"
    for sub in ("images", "masks"):
        (train / sub).mkdir(parents=True)
    for stem in ("ccp_0001", "ccpcrop_0001", "clip_grid-x_000", "eg1800_0001"):
        cv2.imwrite(str(train / "images" / f"{stem}.jpg"), np.zeros((8, 8, 3), np.uint8))
        cv2.imwrite(str(train / "masks" / f"{stem}.png"), np.full((8, 8), 255, np.uint8))
    view = tmp_path / "weighted"
    assert dataprep.build_weighted_view(train, view, {"ccp_": 3, "clip_": 2}) == 7
    stems = sorted(p.stem for p in (view / "images").iterdir())
    assert stems == ["ccp_0001", "ccp_0001_rep1", "ccp_0001_rep2", "ccpcrop_0001",   # "ccp_" is not "ccpcrop_"
                     "clip_grid-x_000", "clip_grid-x_000_rep1", "eg1800_0001"]
    assert sorted(p.stem for p in (view / "masks").iterdir()) == stems
    assert dataprep.build_weighted_view(train, view, dataprep.CCP_CLIP_WEIGHTS) == 7   # the v18 view: 2, 2, 2
