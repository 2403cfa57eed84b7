"""Person segmentation: model files, the U-Net, and Segmenters that turn frames into probabilities.

    seg = load_segmenter()                      # the shipped default model
    seg = load_segmenter("my-model.safetensors")  # weights + my-model.json beside it
    seg = load_segmenter(backend="torch")        # not the int8 ONNX Runtime copy of the weights
    prob = seg(frames)   # frames (B, h, w, 3) uint8 at seg.work_size -> (B, h, w) float32 p(person)

A Segmenter is anything with a `work_size` (w, h) and that call: the fastai U-Net here, a fastai
`.pkl` learner, or a fake in tests. The network is fastai's DynamicUnet over a ResNet18 encoder with
two classes (background, person); its soft output is softmax(logits)[:, 1], never an argmax, so the
compositor can blend smoothly at the edges.

Model files are safetensors weights plus a JSON config (ModelConfig) with everything needed to rebuild
and feed the network. Loading one runs no code. A fastai `.pkl` export is pickle, which runs code
when loaded, so it is only ever loaded when the user names it.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import types
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from pipeline.errors import ModelError
from pipeline.onnx_backend import BACKENDS, int8_path

MODELS_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL = MODELS_DIR / "person-unet-r18.safetensors"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONFIG_VERSION = 1
# UnetSegmenter(precision=...): "bf16" runs the network under bf16 autocast, "auto" picks bf16 where the
# hardware does it natively (avx512_bf16/AMX CPUs, CUDA) and fp32 elsewhere, where emulated bf16 is slower.
PRECISIONS = ("auto", "fp32", "bf16")


class Segmenter(Protocol):
    """Frames at `work_size` in, person probabilities out."""

    work_size: tuple[int, int]  # (w, h) the frames must have

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """frames (B, h, w, 3) uint8 RGB -> (B, h, w) float32 in [0, 1]."""
        ...


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild and feed a U-Net from its weights (stored as JSON beside them)."""

    arch: str = "resnet18"                       # encoder; only resnet18 is built here
    classes: tuple[str, ...] = ("background", "person")
    work_size: tuple[int, int] = (256, 144)      # (w, h) frames are resized to before inference
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per-channel normalisation of RGB in [0, 1]
    std: tuple[float, float, float] = IMAGENET_STD
    # DynamicUnet options. last_cross, self_attention and bottle cost the most at inference time.
    unet: dict[str, Any] = field(default_factory=lambda: {
        "blur": False, "blur_final": True, "self_attention": False,
        "last_cross": False, "bottle": False,
    })
    version: int = CONFIG_VERSION
    training: dict[str, Any] = field(default_factory=dict)  # data, recipe, time, hardware
    metrics: dict[str, Any] = field(default_factory=dict)   # measured by `blurvid evaluate`

    @property
    def person_index(self) -> int:
        return self.classes.index("person") if "person" in self.classes else len(self.classes) - 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        raw = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        for key in ("classes", "work_size", "mean", "std"):
            if key in raw:
                raw[key] = tuple(raw[key])
        return cls(**raw)


def fit_work_size(work_size: tuple[int, int], frame_size: tuple[int, int], multiple: int = 16) -> tuple[int, int]:
    """The model's pixel budget reshaped to the frame's aspect ratio, in multiples of `multiple`.

    A landscape model size (256×144) becomes 144×256 for a portrait phone video instead of squashing it.
    """
    (w, h), (fw, fh) = work_size, frame_size
    aspect = fw / fh
    area = w * h
    new_w = math.sqrt(area * aspect)
    new_h = area / new_w
    return (max(multiple, round(new_w / multiple) * multiple),
            max(multiple, round(new_h / multiple) * multiple))


def build_unet(config: ModelConfig) -> nn.Module:
    """A fresh (randomly initialised) fastai DynamicUnet with a ResNet18 encoder, as `config` says.

    The options blurvid ships with are built by pipeline.unet without importing fastai (320 MB less
    memory); any other option set by fastai itself. Both have the same parameter names.
    """
    from pipeline import unet

    if config.arch != "resnet18":
        raise ModelError(f"unknown architecture {config.arch!r}: only 'resnet18' is supported")
    if unet.supports(config.unet):
        return unet.LeanUnet(n_out=len(config.classes))
    with warnings.catch_warnings():   # fastai's imports warn about torch.jit and pandas options
        warnings.simplefilter("ignore")
        from fastai.vision.learner import create_unet_model
        from fastai.vision.models import resnet18

    w, h = config.work_size
    return create_unet_model(resnet18, n_out=len(config.classes), img_size=(h, w),
                             pretrained=False, **config.unet)


def save_model(model: nn.Module, config: ModelConfig, path: str | Path, *, half: bool = True) -> Path:
    """Write `path` (.safetensors) and the config beside it (.json). fp16 halves the file at no visible cost."""
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else torch.float32
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().cpu()
               for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": "pt", "blurvid_config_version": str(config.version)})
    config_path = path.with_suffix(".json")
    config_path.write_text(config.to_json() + "\n")
    # safetensors 0.8 writes through a temporary file that is always 0600 (safetensors issue #782),
    # so weights trained as one user (say, root in a container build) would be unreadable to the
    # user who runs them, while the JSON beside them is readable; give both the same permissions.
    os.chmod(path, config_path.stat().st_mode & 0o777)
    return path


def load_config(path: str | Path) -> ModelConfig:
    """The ModelConfig of the model at `path` (.safetensors or its .json), both files checked present."""
    path = Path(path)
    weights, config_path = path.with_suffix(".safetensors"), path.with_suffix(".json")
    for p in (weights, config_path):
        if not p.is_file():
            raise ModelError(f"{p}: model file not found (a model is NAME.safetensors plus NAME.json)")
    try:
        config = ModelConfig.from_json(config_path.read_text())
    except (ValueError, TypeError) as e:
        raise ModelError(f"{config_path}: not a blurvid model config ({e})") from e
    if config.version > CONFIG_VERSION:
        raise ModelError(f"{config_path}: config version {config.version} is newer than this blurvid "
                         f"understands ({CONFIG_VERSION}); upgrade blurvid")
    return config


def load_model(path: str | Path) -> tuple[nn.Module, ModelConfig]:
    """Rebuild the U-Net from `path` (.safetensors or its .json). Raises ModelError with the reason."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = Path(path).with_suffix(".safetensors")
    config = load_config(path)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{weights}: corrupt safetensors file ({e})") from e
    with torch.device("meta"):   # no memory or time spent on random weights about to be replaced
        model = build_unet(config)
    reference = model.state_dict()
    try:
        model.load_state_dict({k: v.to(reference[k].dtype) if k in reference else v
                               for k, v in state.items()}, assign=True)
    except RuntimeError as e:
        raise ModelError(f"{weights}: weights do not match the config's network "
                         f"({str(e).splitlines()[0]})") from e
    return model.eval(), config


class UnetSegmenter:
    """Runs a segmentation network on batches of frames: uint8 in, p(person) out.

        seg = UnetSegmenter(model, config, device="cpu")
        prob = seg(frames)   # (B, h, w, 3) uint8 -> (B, h, w) float32
    """

    backend = "torch"

    def __init__(self, model: nn.Module, config: ModelConfig, *, device: str = "cpu",
                 work_size: tuple[int, int] | None = None, channels_last: bool = True,
                 person_index: int | None = None, precision: str = "auto"):
        self.config = config
        self.work_size = tuple(work_size or config.work_size)
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.person_index = config.person_index if person_index is None else person_index
        # channels_last lets oneDNN pick its fastest convolution kernels on CPU.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(self.device, memory_format=self.memory_format)
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(config.mean, device=self.device).view(shape) * 255
        self.std = torch.tensor(config.std, device=self.device).view(shape) * 255

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected (B, h, w, 3) uint8 frames, got {frames.shape} {frames.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        x = x.permute(0, 3, 1, 2).float()                    # [B, 3, h, w], still 0..255
        x = ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)
        # bf16: 1.9x faster on an avx512_bf16 CPU, p(person) within 0.001 on average (pipeline/bench.py).
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            logits = self.model(x)                           # [B, C, h, w]
        prob = logits.float().softmax(dim=1)[:, self.person_index]
        return prob.cpu().numpy()


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """"fp32" or "bf16" for a `precision` of PRECISIONS on `device` ("auto": bf16 where it is native)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    native = [getattr(torch.cpu, name, lambda: False)() for name in
              ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]   # private, so looked up softly
    return "bf16" if device.type == "cpu" and any(native) else "fp32"


def pipeline_threads(cores: int | None = None) -> int:
    """Torch threads while decoding and encoding run beside the model: all cores but one.

    On 2 cores, 2 model threads ran `blurvid process` at 3-14 fps (OpenMP threads spin at every layer
    while the decoder or encoder holds the other core) against a steady 15 fps with 1 thread. ONNX
    Runtime's threads sleep instead of spinning (onnx_backend.OnnxSegmenter), so it gets every core.
    """
    return max(1, (cores or available_cores()) - 1)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def model_files(path: str | Path | None) -> list[Path]:
    """The files a model is made of (for fingerprints and for shipping it to workers): the safetensors
    and JSON pair and, where it exists, their int8 ONNX copy (pipeline.onnx_backend); a .pkl; or for
    "deeplabv3" names the checkpoint in the torch cache."""
    from pipeline.deeplab import MODELS as DEEPLAB_MODELS, checkpoint_path

    path = DEFAULT_MODEL if path is None else Path(path)
    if str(path) in DEEPLAB_MODELS:
        return [checkpoint_path(str(path))]
    if path.suffix == ".pkl":
        return [path]
    weights = path.with_suffix(".safetensors")
    int8 = int8_path(weights)
    return [weights, path.with_suffix(".json")] + ([int8] if int8.exists() else [])


def load_segmenter(path: str | Path | None = None, *, device: str = "cpu",
                   work_size: tuple[int, int] | None = None, precision: str = "auto",
                   backend: str = "auto", threads: int | None = None) -> Segmenter:
    """The Segmenter for a model file: None (the shipped default), .safetensors/.json, or a fastai .pkl;
    or a model name: "deeplabv3" / "deeplabv3-resnet50" (torchvision's, from the torch cache; pipeline.deeplab).

    `backend` (BACKENDS): "torch" runs the network in torch (at `precision`); "onnx" runs the int8
    ONNX model beside the weights (pipeline.onnx_backend); "auto" picks onnx on the CPU wherever that
    int8 model exists and was made from these weights, and torch everywhere else. `threads`: ONNX
    Runtime's (default: every core); torch's are set process-wide (torch.set_num_threads).
    """
    from pipeline.deeplab import MODELS as DEEPLAB_MODELS

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if path is not None and str(path) in DEEPLAB_MODELS:
        from pipeline.deeplab import load_deeplab

        return load_deeplab(str(path), device=device, work_size=work_size, precision=precision)
    path = DEFAULT_MODEL if path is None else Path(path)
    if path.is_dir():
        raise ModelError(f"{path}: is a directory, not a model file")
    if path.suffix == ".pkl":
        return load_fastai_export(path, device=device, work_size=work_size, precision=precision)
    if path.suffix not in (".safetensors", ".json"):
        raise ModelError(f"{path}: unknown model format {path.suffix or '(no extension)'!r}; "
                         "use NAME.safetensors (with NAME.json beside it), a fastai export .pkl, "
                         f"or a model name ({', '.join(DEEPLAB_MODELS)})")
    if backend != "torch":
        onnx = _onnx_segmenter(path, device=device, work_size=work_size, threads=threads or available_cores(),
                               required=backend == "onnx")
        if onnx is not None:
            return onnx
    model, config = load_model(path)
    return UnetSegmenter(fuse_for_inference(model), config, device=device, work_size=work_size, precision=precision)


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """`model` made faster for inference where pipeline.unet knows how (LeanUnet.fuse_head), same logits."""
    from pipeline.unet import LeanUnet

    return model.fuse_head() if isinstance(model, LeanUnet) else model


def _onnx_segmenter(path: Path, *, device: str, work_size: tuple[int, int] | None, threads: int,
                    required: bool):
    """The int8 ONNX segmenter for `path`, or None where "auto" should fall back to torch."""
    from pipeline import onnx_backend

    if torch.device(device).type != "cpu":
        if required:
            raise ModelError("the onnx backend runs on the CPU; use --backend torch with --device cuda")
        return None
    if not required and not (onnx_backend.int8_path(path).exists() and onnx_backend.onnxruntime_available()):
        return None
    try:
        return onnx_backend.load_onnx_segmenter(path, work_size=work_size, threads=threads)
    except ModelError as e:
        if required:
            raise
        warnings.warn(f"{e}; running the model in torch instead", stacklevel=3)
        return None


# --- fastai .pkl exports -------------------------------------------------------------------------

def _missing_function(module: str, name: str):
    """Stands in for a function the training notebook defined but this process does not have.

    fastai pickles the DataBlock's getters (e.g. `create_mask`) with the learner; inference never
    calls them, so a stub that explains itself is enough to load the model.
    """
    def stub(*args, **kwargs):
        raise RuntimeError(f"{module}.{name} was defined in the notebook that trained this model "
                           "and is not available here; it is not needed for inference")
    stub.__name__ = stub.__qualname__ = name
    return stub


class _TolerantUnpickler(pickle.Unpickler):
    """Unpickler that replaces notebook-only functions (`__main__.create_mask`) by stubs."""

    def find_class(self, module: str, name: str):
        try:
            return super().find_class(module, name)
        except (AttributeError, ModuleNotFoundError):
            if module == "__main__" or module.startswith("__mp_main__"):
                return _missing_function(module, name)
            raise


# torch.load takes a "pickle module": anything with Unpickler and load.
_tolerant_pickle = types.SimpleNamespace(
    Unpickler=_TolerantUnpickler,
    load=lambda f, **kw: _TolerantUnpickler(f, **kw).load(),
    __name__="blurvid_tolerant_pickle",
)


def load_fastai_export(path: str | Path, *, device: str = "cpu", work_size: tuple[int, int] | None = None,
                       precision: str = "auto") -> UnetSegmenter:
    """Load a `learn.export()` .pkl. Pickle runs code: only call this on a file the user named."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            learn = torch.load(path, map_location="cpu", pickle_module=_tolerant_pickle,
                               weights_only=False)
    except Exception as e:  # a corrupt pickle can fail in any of dozens of ways
        raise ModelError(f"{path}: not a loadable fastai export ({type(e).__name__}: {e})") from e
    model = getattr(learn, "model", None)
    if not isinstance(model, nn.Module):
        raise ModelError(f"{path}: the pickle holds no fastai Learner with a model")
    classes, mean, std, size = _describe_learner(learn)
    config = ModelConfig(classes=classes, mean=mean, std=std,
                         work_size=work_size or size or ModelConfig().work_size,
                         training={"source": f"fastai export {path.name}"})
    return UnetSegmenter(model, config, device=device, work_size=work_size, precision=precision)


def _describe_learner(learn) -> tuple[tuple[str, ...], tuple, tuple, tuple[int, int] | None]:
    """Class names, normalisation and input size as recorded in an exported learner's DataLoaders."""
    dls = getattr(learn, "dls", None)
    vocab = getattr(dls, "vocab", None)
    classes = tuple(str(c) for c in vocab) if vocab is not None and len(vocab) >= 2 else ("background", "person")
    mean, std, size = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), None   # no Normalize: the net saw RGB in [0, 1]
    for tfm in getattr(getattr(dls, "after_batch", None), "fs", []):
        if type(tfm).__name__ == "Normalize":
            mean = tuple(float(v) for v in torch.as_tensor(tfm.mean).flatten()[:3])
            std = tuple(float(v) for v in torch.as_tensor(tfm.std).flatten()[:3])
    for tfm in getattr(getattr(dls, "after_item", None), "fs", []):
        tfm_size = getattr(tfm, "size", None)
        if tfm_size is not None and len(tfm_size) == 2:
            size = (int(tfm_size[0]), int(tfm_size[1]))   # fastai stores Resize sizes as (w, h)
    return classes, mean, std, size


def with_metrics(config: ModelConfig, **metrics: Any) -> ModelConfig:
    """A copy of `config` with `metrics` merged in (for the model card)."""
    return replace(config, metrics={**config.metrics, **metrics})
