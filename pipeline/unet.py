"""fastai's DynamicUnet over a ResNet18, rebuilt for inference without importing fastai or torchvision.

    model = LeanUnet(n_out=2)
    model.load_state_dict(fastai_unet.state_dict())   # same parameter names, same output
    logits = model(x)                                   # x (B, 3, h, w) normalised -> (B, 2, h, w)

Why not just call fastai's `create_unet_model`: importing fastai (pandas, matplotlib, scipy, sklearn…)
and torchvision costs about 320 MB of resident memory and two seconds per process, a fifth of the
1.5 GB budget, and it builds the network by running it once at full precision with random weights.
This module reproduces, module for module, the network fastai builds for a ResNet18 encoder with
the options blurvid uses (`blur=False, self_attention=False, last_cross=False`, no norm layers in
the decoder), so the weights trained with fastai load with strict=True. tests/test_unet.py checks
that the two give the same logits; any other option set is built by fastai (segment.build_unet).
For inference, `LeanUnet.fuse_head` moves the 1×1 head ahead of the last pixel shuffle (same
logits, less work at full size), and `shuffles_as_reshapes` prepares a network for the int8 ONNX
export (pipeline.onnx_backend).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Channels of ResNet18's stages, and the encoder children whose outputs feed the decoder: the last
# child before each halving of the spatial size (relu after conv1, layer1, layer2, layer3), the
# indices fastai's DynamicUnet finds by probing the encoder.
STAGE_CHANNELS = (64, 128, 256, 512)
SKIP_INDICES = (2, 4, 5, 6)
SKIP_CHANNELS = (64, 64, 128, 256)


def _resize_needed(h: torch.Tensor, like: torch.Tensor) -> bool:
    """Whether h must be resized to like's height and width. Always, while exporting to ONNX: the
    export records one branch, and the graph must serve every input size (pipeline.onnx_backend)."""
    return torch.onnx.is_in_onnx_export() or h.shape[-2:] != like.shape[-2:]


def supports(unet_options: dict) -> bool:
    """True when LeanUnet builds the same network fastai would for these DynamicUnet options."""
    return not any(unet_options.get(k, False) for k in ("blur", "self_attention", "last_cross"))


def conv_layer(ni: int, nf: int, ks: int = 3, relu: bool = True) -> nn.Sequential:
    """fastai's ConvLayer without a norm layer: conv (with bias), then ReLU unless told otherwise."""
    layers = [nn.Conv2d(ni, nf, ks, padding=ks // 2)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def pixel_shuffle_up(ni: int, nf: int) -> nn.Sequential:
    """fastai's PixelShuffle_ICNR (no blur): 1x1 conv to 4·nf channels, ReLU, shuffle to 2x size."""
    return nn.Sequential(conv_layer(ni, nf * 4, ks=1), nn.PixelShuffle(2))


class BasicBlock(nn.Module):
    """ResNet's two-conv residual block, named as torchvision names it."""

    def __init__(self, ni: int, nf: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(ni, nf, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(nf)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(nf)
        self.downsample = None
        if stride != 1 or ni != nf:
            self.downsample = nn.Sequential(nn.Conv2d(ni, nf, 1, stride, bias=False), nn.BatchNorm2d(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


def resnet18_body() -> nn.Sequential:
    """ResNet18 without its pooling and classifier head, as fastai's `create_body` cuts it."""
    stages = []
    ni = 64
    for i, nf in enumerate(STAGE_CHANNELS):
        stride = 1 if i == 0 else 2
        stages.append(nn.Sequential(BasicBlock(ni, nf, stride), BasicBlock(nf, nf)))
        ni = nf
    return nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                         nn.MaxPool2d(3, 2, 1), *stages)


class UnetBlock(nn.Module):
    """Upsample the deeper features 2x, join the encoder's skip features, two 3x3 convs."""

    def __init__(self, up_in_c: int, x_in_c: int, final_div: bool = True):
        super().__init__()
        self.shuf = pixel_shuffle_up(up_in_c, up_in_c // 2)
        self.bn = nn.BatchNorm2d(x_in_c)
        ni = up_in_c // 2 + x_in_c
        nf = ni if final_div else ni // 2
        self.conv1 = conv_layer(ni, nf)
        self.conv2 = conv_layer(nf, nf)
        self.relu = nn.ReLU()

    def forward(self, up_in: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up_out = self.shuf(up_in)
        if _resize_needed(up_out, skip):   # odd sizes: the encoder rounded up when halving
            up_out = F.interpolate(up_out, skip.shape[-2:], mode="nearest")
        return self.conv2(self.conv1(self.relu(torch.cat([up_out, self.bn(skip)], dim=1))))


class LeanUnet(nn.Module):
    """The U-Net; `layers` holds the modules at the indices fastai's DynamicUnet gives them."""

    def __init__(self, n_out: int = 2):
        super().__init__()
        ni = STAGE_CHANNELS[-1]
        layers: list[nn.Module] = [resnet18_body(), nn.BatchNorm2d(ni), nn.ReLU(),
                                   nn.Sequential(conv_layer(ni, ni * 2), conv_layer(ni * 2, ni))]
        up_in = ni
        for i, x_in in enumerate(reversed(SKIP_CHANNELS)):
            block = UnetBlock(up_in, x_in, final_div=i != len(SKIP_CHANNELS) - 1)
            layers.append(block)
            up_in = block.conv2[0].out_channels
        layers += [pixel_shuffle_up(up_in, up_in), nn.Identity(),   # fastai's ResizeToOrig holds no weights
                   conv_layer(up_in, n_out, ks=1, relu=False)]
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        encoder, bn, relu, middle, *blocks, up, _, head = self.layers
        skips, h = [], x
        for i, child in enumerate(encoder):
            h = child(h)
            if i in SKIP_INDICES:
                skips.append(h)
        h = middle(relu(bn(h)))
        for block, skip in zip(blocks, reversed(skips)):
            h = block(h, skip)
        h = up(h)
        if _resize_needed(h, x):
            h = F.interpolate(h, x.shape[-2:], mode="nearest")
        return head(h)

    @torch.no_grad()
    def fuse_head(self) -> LeanUnet:
        """Run the 1×1 head before the last pixel shuffle instead of after it: the same logits, for
        inference (in place; returns self). Save weights from an unfused model: the state dict changes.

            model, config = segment.load_model(path)
            model.fuse_head()

        The head mixes channels pixel by pixel, so it commutes with the shuffle (which only moves
        values from channels into 2×2 blocks) and with the nearest-neighbour resize: each of the
        four sub-pixel channel groups gets its own copy of the head. The network then shuffles and
        resizes 2 channels at full size instead of 96, and runs the head at half size: 5 % off the
        network's time in torch fp32, and with onnx_backend's uint8 shuffles 13–18 % off the int8
        ONNX Runtime copy's (MODEL.md).
        """
        up, head = self.layers[-3], self.layers[-1]
        if isinstance(head, nn.Identity):
            return self
        expand, shuffle = up
        head_conv = head[0]
        n_out, channels = head_conv.weight.shape[:2]
        blocks = shuffle.upscale_factor ** 2
        like = {"dtype": head_conv.weight.dtype, "device": head_conv.weight.device}
        fused = nn.Conv2d(channels * blocks, n_out * blocks, 1, **like)
        fused.weight.zero_()
        # PixelShuffle takes channel c*blocks + s to sub-pixel s of output channel c
        for s in range(blocks):
            fused.weight[s::blocks, s::blocks] = head_conv.weight
            fused.bias[s::blocks] = head_conv.bias
        self.layers[-3] = nn.Sequential(expand, fused, shuffle)
        self.layers[-1] = nn.Identity()
        return self


class ReshapePixelShuffle(nn.Module):
    """nn.PixelShuffle written as reshape, transpose, reshape: exported to ONNX as those three ops,
    which ONNX Runtime's quantiser keeps in uint8, instead of a DepthToSpace, which it leaves in
    float between a dequantise and a quantise (a fifth of the int8 U-Net's time, in a profile at 224×128)."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        r = self.factor
        x = x.reshape(b, c // (r * r), r, r, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c // (r * r), h * r, w * r)


def shuffles_as_reshapes(model: nn.Module) -> nn.Module:
    """Replace every nn.PixelShuffle in `model` by a ReshapePixelShuffle (in place; returns model)."""
    shuffles = [(parent, name, child) for parent in model.modules()
                for name, child in parent.named_children() if isinstance(child, nn.PixelShuffle)]
    for parent, name, child in shuffles:
        setattr(parent, name, ReshapePixelShuffle(child.upscale_factor))
    return model
