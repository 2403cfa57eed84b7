"""torchvision's DeepLabv3 as a Segmenter: the reference posts' model, with VOC class 15 = person.

    seg = load_deeplab("deeplabv3")             # ResNet101 backbone; "deeplabv3-resnet50" is lighter
    prob = seg(frames)   # (B, h, w, 3) uint8 at seg.work_size -> (B, h, w) float32 p(person)

`load_segmenter("deeplabv3")` (and so `--model deeplabv3` on every command) lands here. The weights
are used only when they are already in the torch hub cache, where torchvision itself keeps them
(`checkpoint_path(name)`, e.g. ~/.cache/torch/hub/checkpoints/deeplabv3_resnet101_coco-586e9e4e.pth):
blurvid never downloads. Without them, ModelError says where to get the file and where to put it.
The checkpoint is read with `torch.load(weights_only=True)`, which runs no code.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from pipeline.errors import ModelError

# name -> backbone; "deeplabv3" is the reference posts' ResNet101.
MODELS = {"deeplabv3": "resnet101", "deeplabv3-resnet101": "resnet101", "deeplabv3-resnet50": "resnet50"}
# (w, h) for 16:9, refitted to the video's aspect. torchvision evaluates at a 520 px short side; on a
# CPU that is seconds per frame, and the dilated ResNet (output stride 8) keeps enough detail at 216.
WORK_SIZE = (384, 216)


def _weights(name: str):
    """torchvision's weights enum entry for a model name (importing it downloads nothing)."""
    from torchvision.models.segmentation import DeepLabV3_ResNet50_Weights, DeepLabV3_ResNet101_Weights

    if name not in MODELS:
        raise ModelError(f"{name!r}: unknown DeepLabv3 model; use one of {', '.join(MODELS)}")
    enum = DeepLabV3_ResNet101_Weights if MODELS[name] == "resnet101" else DeepLabV3_ResNet50_Weights
    return enum.COCO_WITH_VOC_LABELS_V1


def checkpoint_path(name: str) -> Path:
    """Where torchvision caches the weights of `name`: torch.hub.get_dir()/checkpoints/<url's file name>."""
    url = _weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def how_to_get(name: str) -> str:
    """One line: the URL to fetch and where to put it, or the torchvision call that does both."""
    weights = _weights(name)
    builder = f"deeplabv3_{MODELS[name]}"
    return (f"{name}: weights not found at {checkpoint_path(name)}; download {weights.url} into that folder, "
            f"or on a machine with internet run `python -c \"import torchvision; "
            f"torchvision.models.segmentation.{builder}(weights='COCO_WITH_VOC_LABELS_V1')\"` "
            f"and copy the .pth it saves in that machine's ~/.cache/torch/hub/checkpoints/ to the path above")


class _OutOnly(nn.Module):
    """DeepLabv3 returns {"out": logits}; the Segmenter wants the logits tensor [B, 21, h, w]."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def build_deeplab(name: str, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """DeepLabv3 for `name` with `state` loaded (None: random weights), aux head dropped."""
    from torchvision.models import segmentation

    builder = getattr(segmentation, f"deeplabv3_{MODELS[name]}")
    classes = len(_weights(name).meta["categories"])
    # torchvision's checkpoints carry the auxiliary FCN head used in training; match it to load strictly.
    aux = state is not None and any(k.startswith("aux_classifier.") for k in state)
    net = builder(weights=None, weights_backbone=None, num_classes=classes, aux_loss=aux)
    if state is not None:
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise ModelError(f"{checkpoint_path(name)}: not {name} weights "
                             f"({str(e).splitlines()[0]})") from e
    net.aux_classifier = None   # a training-only head on layer3: inference would compute it for nothing
    return net.eval()


def load_deeplab(name: str = "deeplabv3", *, device: str = "cpu", work_size: tuple[int, int] | None = None,
                 precision: str = "auto"):
    """The Segmenter for DeepLabv3 `name` (see MODELS) from the torch hub cache; ModelError if absent."""
    from pipeline.segment import ModelConfig, UnetSegmenter

    weights = _weights(name)
    path = checkpoint_path(name)
    if not path.is_file():
        raise ModelError(how_to_get(name))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file fails in many ways; all mean "get it again"
        raise ModelError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e}); "
                         f"delete it and fetch {weights.url} again") from e
    if not isinstance(state, dict):
        raise ModelError(f"{path}: holds no state_dict")
    classes = tuple(weights.meta["categories"])   # VOC: "__background__", ..., "person" (15), ...
    config = ModelConfig(arch=f"deeplabv3_{MODELS[name]}", classes=classes, work_size=WORK_SIZE,
                         training={"source": weights.url})
    # UnetSegmenter is the generic runner: ImageNet normalisation, softmax, p(person) at the work size.
    return UnetSegmenter(_OutOnly(build_deeplab(name, state)), config, device=device, work_size=work_size,
                         precision=precision)
