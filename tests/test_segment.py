"""Model files and Segmenters: tiny U-Nets built on the fly, safetensors round trips, fastai exports."""

import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ModelError
from pipeline.segment import (DEFAULT_MODEL, ModelConfig, UnetSegmenter, build_unet, load_model,
                              load_segmenter, save_model)

TINY = ModelConfig(work_size=(64, 48))


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory) -> Path:
    return save_model(build_unet(TINY), TINY, tmp_path_factory.mktemp("model") / "tiny.safetensors")


def frames(n=2, size=(64, 48), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size[1], size[0], 3), dtype=np.uint8)


def test_segmenter_returns_soft_probabilities(tiny_model_file):
    seg = load_segmenter(tiny_model_file)
    prob = seg(frames(3))
    assert seg.work_size == (64, 48)
    assert prob.shape == (3, 48, 64) and prob.dtype == np.float32
    assert np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1
    # softmax, not argmax: an untrained net is unsure almost everywhere
    assert len(np.unique(prob.round(3))) > 10


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_saved_weights_are_as_readable_as_their_config(tmp_path):
    """Under the usual umask (022) the weights come out 0644 like the JSON, not 0600."""
    import os

    old = os.umask(0o022)
    try:
        path = save_model(build_unet(TINY), TINY, tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    weights, config = path.stat().st_mode & 0o777, path.with_suffix(".json").stat().st_mode & 0o777
    assert weights == config == 0o644


def test_round_trip_keeps_outputs(tiny_model_file):
    model, config = load_model(tiny_model_file)
    assert config == TINY
    x = frames(1)
    a = UnetSegmenter(model, config)(x)
    b = load_segmenter(tiny_model_file.with_suffix(".json"))(x)  # either file of the pair works
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_work_size_override_runs_at_other_sizes(tiny_model_file):
    seg = load_segmenter(tiny_model_file, work_size=(96, 64))
    assert seg(frames(1, size=(96, 64))).shape == (1, 64, 96)


def test_rejects_wrong_frames(tiny_model_file):
    seg = load_segmenter(tiny_model_file)
    with pytest.raises(ValueError):
        seg(frames(1).astype(np.float32))


@pytest.mark.parametrize("damage", ["missing", "no-json", "corrupt", "bad-json", "wrong-shape",
                                    "suffix", "directory"])
def test_bad_model_files_raise_model_error(tmp_path, tiny_model_file, damage):
    weights, config = tmp_path / "m.safetensors", tmp_path / "m.json"
    weights.write_bytes(tiny_model_file.read_bytes())
    config.write_text(tiny_model_file.with_suffix(".json").read_text())
    target = weights
    if damage == "missing":
        target = tmp_path / "nope.safetensors"
    elif damage == "no-json":
        config.unlink()
    elif damage == "corrupt":
        weights.write_bytes(b"\x00" * 100)
    elif damage == "bad-json":
        config.write_text("{not json")
    elif damage == "wrong-shape":
        config.write_text(ModelConfig(classes=("a", "b", "c")).to_json())
    elif damage == "suffix":
        target = tmp_path / "m.onnx"
        target.write_bytes(b"x")
    elif damage == "directory":
        target = tmp_path
    with pytest.raises(ModelError) as err:
        load_segmenter(target)
    assert "\n" not in str(err.value)


def test_fastai_export_loads_without_notebook_helpers(tmp_path, tiny_dataset):
    """The reference posts' .pkl refers to `create_mask`, defined only in their notebook's __main__."""
    from fastai.data.block import DataBlock
    from fastai.data.transforms import RandomSplitter, get_image_files
    from fastai.vision.augment import Resize
    from fastai.vision.core import PILMask
    from fastai.vision.data import ImageBlock, MaskBlock
    from fastai.vision.learner import unet_learner
    from fastai.vision.models import resnet18
    from PIL import Image

    def create_mask(p):
        return PILMask.create((np.asarray(Image.open(tiny_dataset / "masks" / (p.stem + ".png"))) > 127)
                              .astype(np.uint8))

    create_mask.__module__ = "__main__"
    create_mask.__qualname__ = "create_mask"
    main = sys.modules["__main__"]
    main.create_mask = create_mask
    try:
        block = DataBlock(blocks=(ImageBlock, MaskBlock(codes=["background", "person"])),
                          get_items=get_image_files, get_y=create_mask,
                          splitter=RandomSplitter(seed=0), item_tfms=Resize((48, 64)))
        dls = block.dataloaders(tiny_dataset / "images", bs=2, num_workers=0)
        learn = unet_learner(dls, resnet18, pretrained=False, n_out=2)
        learn.export(tmp_path / "export.pkl")
    finally:
        del main.create_mask

    seg = load_segmenter(tmp_path / "export.pkl")
    assert seg.work_size == (64, 48)          # read from the export's Resize
    prob = seg(frames(2))
    assert prob.shape == (2, 48, 64) and 0 <= prob.min() and prob.max() <= 1


def test_corrupt_pickle_is_a_model_error(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"definitely not a pickle")
    with pytest.raises(ModelError, match="not a loadable fastai export"):
        load_segmenter(bad)


@pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="the default model has not been trained yet")
def test_default_model_loads():
    seg = load_segmenter()
    w, h = seg.work_size
    assert seg(frames(1, size=(w, h))).shape == (1, h, w)


@pytest.fixture
def tiny_dataset(tmp_path):
    from helpers import make_tiny_dataset
    return make_tiny_dataset(tmp_path / "tiny")


@pytest.mark.media
@pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="the default model has not been trained yet")
def test_default_model_quality_floor(tmp_path):
    """Regression floor for the shipped model on EG1800 test portraits.

    MODEL.md: IoU 0.956 / 0.955 (torch / int8) on all 264; these first 24 measured 0.951 (v22;
    v21: 0.953; v20 and v19: 0.949; v18: 0.950; v17: 0.947; v16: 0.944; v15: 0.942; v14 and v13:
    0.943; v12: 0.940; v10 and v11: 0.942; v8 and v9: 0.927) with the int8 copy that load_segmenter()
    picks on a CPU (v14's 7-bit copy: 0.943 on an avx2-only CPU too, where the 8-bit one scored
    0.933). The floor sits 4 points under v14.
    """
    from pipeline.evaluate import evaluate_masks

    eg1800 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "eg1800"
    if not (eg1800 / "test.txt").is_file():
        pytest.skip("../shared/datasets/eg1800 not found: the quality floor needs its test split")
    names = (eg1800 / "test.txt").read_text().split()[:24]
    split = tmp_path / "first-test-images.txt"
    split.write_text("\n".join(names))
    scores = evaluate_masks(load_segmenter(), eg1800, split=split)
    assert scores.images == 24
    assert scores.iou > 0.90
