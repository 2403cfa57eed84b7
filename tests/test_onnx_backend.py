"""The int8 ONNX Runtime backend (pipeline/onnx_backend.py): export, agreement with torch at any
working size, when `auto` uses it, and that the shipped int8 copy belongs to the shipped weights."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import make_tiny_dataset, make_tiny_model
from pipeline.errors import ModelError
from pipeline.onnx_backend import OnnxSegmenter, WEIGHTS_HASH_KEY, export_int8, int8_path, weights_sha256
from pipeline.segment import DEFAULT_MODEL, UnetSegmenter, build_unet, load_config, load_segmenter, \
    model_files, save_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A tiny random U-Net with its int8 copy, calibrated on the tiny disc dataset."""
    folder = tmp_path_factory.mktemp("int8")
    torch.manual_seed(0)
    model = make_tiny_model(folder)
    export_int8(model, make_tiny_dataset(folder / "data", n=8) / "images")
    return model


def frames(size: tuple[int, int], n: int = 2) -> np.ndarray:
    w, h = size
    return np.random.default_rng(1).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", [(64, 48), (80, 48), (48, 64)])   # 48/32 and 80/32: the odd-size resizes
def test_int8_agrees_with_torch_at_any_working_size(exported, size):
    torch_seg = load_segmenter(exported, backend="torch", precision="fp32", work_size=size)
    int8_seg = load_segmenter(exported, backend="onnx", work_size=size)
    assert isinstance(int8_seg, OnnxSegmenter) and int8_seg.backend == "onnx-int8"
    x = frames(size)
    a, b = torch_seg(x), int8_seg(x)
    assert b.shape == a.shape == (2, size[1], size[0]) and b.dtype == np.float32
    assert 0 <= b.min() and b.max() <= 1
    assert np.abs(a - b).mean() < 0.02


def test_export_records_the_weights_it_was_made_from(exported):
    seg = load_segmenter(exported, backend="onnx")
    assert seg.metadata[WEIGHTS_HASH_KEY] == weights_sha256(exported)
    assert int8_path(exported) in model_files(exported)   # batch fingerprints and Ray blobs carry it


def test_auto_uses_int8_only_when_it_is_there_and_fresh(exported, tmp_path):
    assert isinstance(load_segmenter(exported), OnnxSegmenter)
    assert isinstance(load_segmenter(exported, backend="torch"), UnetSegmenter)

    bare = make_tiny_model(tmp_path, "bare")                # no int8 copy: torch, quietly
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(load_segmenter(bare), UnetSegmenter)
    with pytest.raises(ModelError, match="export-int8"):
        load_segmenter(bare, backend="onnx")

    stale = tmp_path / "stale.safetensors"                  # retrained after the export
    shutil.copy(int8_path(exported), int8_path(stale))
    torch.manual_seed(1)
    config = load_config(exported)
    save_model(build_unet(config), config, stale)
    with pytest.warns(UserWarning, match="other weights"):
        assert isinstance(load_segmenter(stale), UnetSegmenter)
    with pytest.raises(ModelError, match="re-run"):
        load_segmenter(stale, backend="onnx")


def int8_weight_range(path: Path) -> tuple[int, int]:
    import onnx
    from onnx import numpy_helper

    weights = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
               if t.data_type == onnx.TensorProto.INT8]
    assert weights, f"{path}: no int8 weights"
    return min(int(w.min()) for w in weights), max(int(w.max()) for w in weights)


@pytest.fixture(params=["exported", "shipped"])
def int8_file(request) -> Path:
    """The int8 copy of a fresh export and of the shipped model: export_int8 now, and what ships."""
    return int8_path(request.getfixturevalue("exported") if request.param == "exported" else DEFAULT_MODEL)


def test_int8_weights_are_7_bit_so_avx2_cpus_do_not_saturate(int8_file):
    """Full-range int8 weights saturate ONNX Runtime's uint8 x int8 products on CPUs without VNNI."""
    low, high = int8_weight_range(int8_file)
    assert -64 <= low and high <= 64
    assert high - low > 64      # still using the 7-bit range, not collapsed


def test_int8_graph_moves_data_in_uint8(int8_file):
    """Every reshape, transpose and resize reads a dequantised tensor, so ONNX Runtime fuses it into a
    uint8 op; a DepthToSpace (torch's pixel shuffle) would stay in float (unet.ReshapePixelShuffle)."""
    import onnx

    graph = onnx.load(str(int8_file)).graph
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    movers = [node for node in graph.node if node.op_type in ("Reshape", "Transpose", "Resize")]
    assert not [node.name for node in graph.node if node.op_type == "DepthToSpace"]
    assert len(movers) == 4 * 5      # (reshape, transpose, reshape, resize) for each of the 5 upsamplings
    assert all(made_by.get(node.input[0]) == "DequantizeLinear" for node in movers)


def test_export_needs_calibration_images(tiny_model, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no images"):
        export_int8(tiny_model, tmp_path / "empty", out=tmp_path / "x.int8.onnx")
    assert not (tmp_path / "x.int8.onnx").exists()


def test_export_int8_command(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main

    model = make_tiny_model(tmp_path)
    data = make_tiny_dataset(tmp_path / "data", n=4)
    result = CliRunner().invoke(main, ["export-int8", str(model), "--calibration", str(data / "images"),
                                       "--count", "2"])
    assert result.exit_code == 0, result.output
    assert int8_path(model).is_file()
    assert load_segmenter(model, backend="onnx").metadata["blurvid.calibration_images"] == "2"
    bad = CliRunner().invoke(main, ["export-int8", str(data / "images"), "--calibration", str(data)])
    assert bad.exit_code != 0


def test_the_shipped_int8_model_is_made_from_the_shipped_weights():
    """A retrained default model must ship with a re-exported int8 copy (make model does both)."""
    seg = load_segmenter(DEFAULT_MODEL, backend="onnx")
    assert seg.metadata[WEIGHTS_HASH_KEY] == weights_sha256(DEFAULT_MODEL)
    assert isinstance(load_segmenter(), OnnxSegmenter)      # what process uses by default on a CPU


@pytest.mark.media
def test_shipped_int8_masks_match_torch_on_real_frames(media_dir):
    import cv2

    from pipeline.process import fit_work_size
    from pipeline.video import VideoReader

    torch_seg, int8_seg = load_segmenter(backend="torch"), load_segmenter(backend="onnx")
    with VideoReader(media_dir / "talking" / "s18.mp4") as reader:
        size = fit_work_size(torch_seg.work_size, (reader.info.width, reader.info.height))
        small = np.stack([cv2.resize(f.rgb, size, interpolation=cv2.INTER_AREA)
                          for _, f in zip(range(8), reader)])
    a, b = torch_seg(small) > 0.5, int8_seg(small) > 0.5
    assert (a & b).sum() / (a | b).sum() > 0.97
