"""The U-Net as an int8 ONNX Runtime model: the fast CPU backend.

    export_int8("my-model.safetensors", calibration=Path("data/train/images"))  # -> my-model.int8.onnx
    seg = load_onnx_segmenter("my-model.safetensors")   # uses my-model.int8.onnx beside the weights
    prob = seg(frames)   # (B, h, w, 3) uint8 -> (B, h, w) float32 p(person), like UnetSegmenter

Why: on an avx512_vnni CPU, ONNX Runtime's int8 convolutions run the 192×112 U-Net in about 15 ms
per frame on one core, against 38 ms for torch under bf16 autocast and 50 ms for ONNX Runtime in
fp32 (pipeline/bench.py, `blurvid evaluate`). The quantised model is exported from the same fastai
network and weights; its IoU on the evaluation sets is within 0.1 points (0.001) of the torch model's, and
MODEL.md lists both.

How: torch.onnx exports the network with dynamic batch, height and width (every aspect ratio gets
its own working size, process.fit_work_size), ONNX Runtime's `quantize_static` turns it into a QDQ
graph with per-channel int8 weights (7-bit, see export_int8) and uint8 activations whose ranges
come from calibration images. Before export the head is fused into the last upsampling
(unet.LeanUnet.fuse_head) and the pixel shuffles are written as reshapes (unet.ReshapePixelShuffle),
so that no tensor leaves uint8 between two convolutions: 13–18 % faster per frame on an avx2
CPU, p(person) within 0.0001 of the earlier export's, the same IoU (MODEL.md).
The weights' SHA-256 is stored in the ONNX file, so a model retrained after its export is never run
through a stale int8 copy (load_onnx_segmenter refuses it; segment.load_segmenter falls back to torch).
"""

from __future__ import annotations

import hashlib
import random
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import ModelError

# segment.load_segmenter(backend=...): "onnx" runs NAME.int8.onnx, "torch" the network, "auto" picks.
BACKENDS = ("auto", "torch", "onnx")
WEIGHTS_HASH_KEY = "blurvid.weights_sha256"
CALIBRATION_IMAGES = 64   # images whose activations set the int8 ranges
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def int8_path(weights: str | Path) -> Path:
    """Where the int8 ONNX model of `weights` lives: NAME.int8.onnx beside NAME.safetensors."""
    return Path(weights).with_suffix(".int8.onnx")


def weights_sha256(weights: str | Path) -> str:
    digest = hashlib.sha256()
    with open(Path(weights).with_suffix(".safetensors"), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OnnxSegmenter:
    """Runs an ONNX U-Net with ONNX Runtime on the CPU: uint8 frames in, p(person) out.

        seg = OnnxSegmenter("model.int8.onnx", config, threads=1)
        prob = seg(frames)   # (B, h, w, 3) uint8 -> (B, h, w) float32
    """

    backend = "onnx-int8"

    def __init__(self, path: str | Path, config, *, work_size: tuple[int, int] | None = None,
                 threads: int = 1, person_index: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Do not spin waiting for work: decoding and encoding need the other cores between calls.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        self.config = config
        self.work_size = tuple(work_size or config.work_size)
        self.person_index = config.person_index if person_index is None else person_index
        self.mean = np.asarray(config.mean, np.float32) * 255
        self.scale = 1 / (np.asarray(config.std, np.float32) * 255)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected (B, h, w, 3) uint8 frames, got {frames.shape} {frames.dtype}")
        x = (frames.astype(np.float32) - self.mean) * self.scale
        logits = self.session.run(None, {self.input_name: np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]
        # softmax over the classes, only for the person channel: p = 1 / Σ exp(l_c − l_person)
        rel = logits - logits[:, self.person_index:self.person_index + 1]
        return (1 / np.exp(rel).sum(axis=1)).astype(np.float32)


def load_onnx_segmenter(weights: str | Path, *, work_size: tuple[int, int] | None = None,
                        threads: int = 1) -> OnnxSegmenter:
    """The int8 segmenter for `weights` (NAME.safetensors): NAME.int8.onnx, checked to be made from them."""
    from pipeline.segment import load_config

    weights = Path(weights)
    path = int8_path(weights)
    if not path.exists():
        raise ModelError(f"{path}: no int8 model beside the weights; make it with "
                         f"`blurvid export-int8 {weights} --calibration IMAGES`")
    if not onnxruntime_available():
        raise ModelError("the onnx backend needs onnxruntime: pip install onnxruntime")
    config = load_config(weights)
    segmenter = OnnxSegmenter(path, config, work_size=work_size, threads=threads)
    if segmenter.metadata.get(WEIGHTS_HASH_KEY) != weights_sha256(weights):
        raise ModelError(f"{path}: made from other weights than {weights.with_suffix('.safetensors').name} "
                         f"(retrained since?); re-run `blurvid export-int8 {weights} --calibration IMAGES`")
    return segmenter


def export_int8(weights: str | Path, calibration: str | Path, *, out: str | Path | None = None,
                count: int = CALIBRATION_IMAGES, seed: int = 0) -> Path:
    """Export `weights` to an int8 ONNX model (default NAME.int8.onnx), calibrated on up to `count`
    images drawn (reproducibly, by `seed`) from the folder `calibration`; returns its path.

    The weights are quantised to 7 bits (-64..64, `reduce_range`). On CPUs without VNNI (avx2 only)
    ONNX Runtime multiplies uint8 by int8 with an instruction whose 16-bit pair sums saturate; with
    full 8-bit weights the shipped model lost 0.3-0.4 IoU points there (EG1800 0.950, CCP 0.899
    against 0.952 / 0.903 in torch); with 7-bit weights no pair sum can saturate (2 * 255 * 64 <
    2**15), and it scores as torch does (0.952 / 0.903) there, at the same speed (MODEL.md).
    """
    import onnx
    import torch
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    from pipeline.segment import fuse_for_inference, load_model
    from pipeline.unet import shuffles_as_reshapes

    model, config = load_model(weights)
    model = shuffles_as_reshapes(fuse_for_inference(model))
    images = sorted(p for p in Path(calibration).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
        if Path(calibration).is_dir() else []
    if not images:
        raise ModelError(f"{calibration}: no images to calibrate the int8 model with")
    images = random.Random(seed).sample(images, min(count, len(images)))
    w, h = config.work_size
    mean, std = np.asarray(config.mean, np.float32) * 255, np.asarray(config.std, np.float32) * 255

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = self._batches()

        def _batches(self) -> Iterator[dict]:
            for path in images:
                bgr = cv2.imread(str(path))
                if bgr is None:
                    continue
                rgb = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (w, h), interpolation=cv2.INTER_AREA)
                yield {"x": ((rgb.astype(np.float32) - mean) / std).transpose(2, 0, 1)[None].copy()}

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    out = Path(out) if out is not None else int8_path(weights)
    with tempfile.TemporaryDirectory(prefix="blurvid-int8-") as tmp:
        fp32, prepared, quantised = (Path(tmp) / n for n in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        axes = {0: "batch", 2: "height", 3: "width"}
        # The TorchScript exporter (deprecated, still shipped): it records the U-Net's size-matching
        # resizes as shape arithmetic for any input size, and needs no onnxscript.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model.float(), (torch.zeros(1, 3, h, w),), str(fp32), dynamo=False,
                              input_names=["x"], output_names=["logits"], opset_version=17,
                              dynamic_axes={"x": axes, "logits": axes})
        # Symbolic shape inference cannot follow the dynamic height and width through the resizes.
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(quantised), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        result = onnx.load(str(quantised))
        onnx.helper.set_model_props(result, {WEIGHTS_HASH_KEY: weights_sha256(weights),
                                             "blurvid.calibration_images": str(len(images))})
        partial = out.with_name(f".{out.name}.partial")
        onnx.save(result, str(partial))
        partial.replace(out)
    return out
