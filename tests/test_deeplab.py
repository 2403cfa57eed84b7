"""`--model deeplabv3`: torchvision's DeepLabv3 from the torch cache, with a random checkpoint written there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.deeplab import build_deeplab, checkpoint_path
from pipeline.errors import ModelError
from pipeline.segment import load_segmenter

NAME = "deeplabv3-resnet50"   # the smaller backbone keeps the tests quick; same code path as ResNet101


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory) -> Path:
    """A TORCH_HOME whose hub cache holds a randomly initialised DeepLabv3 under torchvision's file name."""
    from torchvision.models.segmentation import deeplabv3_resnet50

    home = tmp_path_factory.mktemp("torch")
    net = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    path = home / "hub" / "checkpoints" / "deeplabv3_resnet50_coco-cd0a2569.pth"
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)   # as torchvision publishes it: a plain state_dict with the aux head
    return home


@pytest.fixture
def cache(torch_home, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    assert Path(torch.hub.get_dir()) == torch_home / "hub"
    return torch_home


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    return tmp_path / "empty"


def test_checkpoint_path_is_torchvisions_cache_name(cache):
    assert checkpoint_path("deeplabv3") == cache / "hub" / "checkpoints" / "deeplabv3_resnet101_coco-586e9e4e.pth"
    assert checkpoint_path(NAME).is_file()


def test_loads_from_the_cache_and_returns_person_probabilities(cache):
    seg = load_segmenter(NAME, work_size=(64, 48), precision="fp32")
    assert seg.work_size == (64, 48) and seg.person_index == 15
    frames = np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    prob = seg(frames)
    assert prob.shape == (2, 48, 64) and prob.dtype == np.float32
    assert np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1
    # p(class 15) of a 21-way softmax, not an argmax: an untrained net gives about 1/21 everywhere
    assert len(np.unique(prob.round(4))) > 10 and prob.mean() < 0.5


def test_default_work_size_is_small_enough_for_a_cpu(cache):
    assert load_segmenter(NAME).work_size == (384, 216)


def test_process_end_to_end(cache, make_video, probe, tmp_path):
    clip = make_video(tmp_path / "in.mp4", size=(96, 64), frames=4)
    out = tmp_path / "out.mp4"
    result = CliRunner().invoke(main, ["process", str(clip), "-o", str(out), "--model", NAME,
                                       "--work-size", "64x48", "--thumb-every", "0", "--threads", "1",
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    facts = probe(out)
    assert facts["frames"] == 4 and (facts["width"], facts["height"]) == (96, 64)


@pytest.mark.parametrize("name", ["deeplabv3", NAME])
def test_empty_cache_says_how_to_get_the_weights(empty_cache, make_video, tmp_path, name):
    clip = make_video(tmp_path / "in.mp4", size=(64, 48), frames=2)
    out = tmp_path / "out.mp4"
    result = CliRunner().invoke(main, ["process", str(clip), "-o", str(out), "--model", name, "--quiet"])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "https://download.pytorch.org/models/deeplabv3_" in lines[0]
    assert str(empty_cache / "hub" / "checkpoints") in lines[0]
    assert not out.exists() and not list(tmp_path.glob("*.partial*"))


def test_foreign_checkpoint_is_a_model_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = checkpoint_path(NAME)
    path.parent.mkdir(parents=True)
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ModelError, match="not deeplabv3-resnet50 weights"):
        load_segmenter(NAME)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a readable checkpoint"):
        load_segmenter(NAME)


def test_aux_head_is_dropped_for_inference():
    assert build_deeplab(NAME).aux_classifier is None


def test_batch_fingerprints_and_ships_deeplab_by_its_cached_checkpoint(cache, empty_cache, monkeypatch):
    from pipeline.batch import model_fingerprint
    from pipeline.distributed import model_blob

    monkeypatch.setenv("TORCH_HOME", str(cache))
    fingerprint = model_fingerprint(Path(NAME))
    assert fingerprint not in ("missing", model_fingerprint(None))
    blob = model_blob(Path(NAME))
    assert blob["name"] == NAME and blob["files"] == {}   # each node reads its own torch cache
    monkeypatch.setenv("TORCH_HOME", str(empty_cache))
    assert model_fingerprint(Path(NAME)) == "missing"
    with pytest.raises(ModelError, match="weights not found"):
        model_blob(Path(NAME))
