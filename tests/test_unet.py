"""pipeline.unet rebuilds fastai's DynamicUnet without fastai: same weights, same logits, less memory."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from pipeline.segment import ModelConfig, UnetSegmenter, build_unet, load_model, load_segmenter, save_model
from pipeline.unet import LeanUnet, ReshapePixelShuffle, shuffles_as_reshapes, supports


def fastai_unet(config: ModelConfig):
    from fastai.vision.learner import create_unet_model
    from fastai.vision.models import resnet18

    w, h = config.work_size
    return create_unet_model(resnet18, n_out=len(config.classes), img_size=(h, w), pretrained=False,
                             **config.unet)


@pytest.mark.parametrize("size", [(256, 144), (76, 100), (160, 90)])
def test_lean_unet_matches_fastai_logits(size):
    torch.manual_seed(0)
    config = ModelConfig(work_size=size)
    reference = fastai_unet(config).eval()
    lean = LeanUnet(n_out=2).eval()
    lean.load_state_dict(reference.state_dict(), strict=True)   # same names, same shapes
    x = torch.randn(2, 3, size[1], size[0])
    with torch.inference_mode():
        expected, got = reference(x), lean(x)
    assert got.shape == (2, 2, size[1], size[0])
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_build_unet_uses_fastai_for_options_lean_unet_lacks():
    config = ModelConfig(unet={**ModelConfig().unet, "last_cross": True})
    assert not supports(config.unet)
    model = build_unet(config)
    assert type(model).__name__ == "DynamicUnet"
    assert isinstance(build_unet(ModelConfig()), LeanUnet)


def test_model_trained_with_fastai_loads_into_lean_unet(tmp_path):
    torch.manual_seed(1)
    reference = fastai_unet(ModelConfig()).eval()
    path = save_model(reference, ModelConfig(), tmp_path / "m.safetensors", half=False)
    loaded, _ = load_model(path)
    assert isinstance(loaded, LeanUnet)
    assert not any(p.is_meta for p in loaded.parameters())
    x = torch.randn(1, 3, 144, 256)
    with torch.inference_mode():
        assert torch.allclose(loaded(x), reference(x), atol=1e-5)


def test_inference_imports_neither_fastai_nor_torchvision():
    code = ("import sys, numpy as np\n"
            "from pipeline.process import process_video\n"
            "from pipeline.segment import load_segmenter\n"
            "seg = load_segmenter()\n"
            "seg(np.zeros((1, 144, 256, 3), np.uint8))\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'fastai', 'torchvision', 'pandas'})\n"
            "print(','.join(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("size", [(192, 112), (75, 101)])   # odd sizes: the final resize is not a no-op
def test_fused_head_gives_the_same_logits(size):
    torch.manual_seed(2)
    model = LeanUnet(n_out=2).eval()
    for p in model.parameters():    # fastai's zero-ish init would hide a wrong fusion behind tiny logits
        p.data.normal_(0, 0.06)
    x = torch.randn(2, 3, size[1], size[0])
    with torch.inference_mode():
        expected = model(x)
        model.fuse_head()
        got = model(x)
    assert isinstance(model.layers[-1], nn.Identity)          # the head now runs before the shuffle
    assert model.layers[-3][1].out_channels == 2 * 4
    assert expected.abs().max() > 1
    assert got.shape == expected.shape == (2, 2, size[1], size[0])
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert model.fuse_head() is model and isinstance(model.layers[-3][1], nn.Conv2d)   # twice: no change


def test_torch_segmenter_runs_the_fused_network(tiny_model):
    seg = load_segmenter(tiny_model, backend="torch")
    assert isinstance(seg, UnetSegmenter) and isinstance(seg.model.layers[-1], nn.Identity)


def test_reshape_pixel_shuffle_is_pixel_shuffle():
    x = torch.randn(2, 12, 5, 7)
    model = shuffles_as_reshapes(nn.Sequential(nn.Identity(), nn.Sequential(nn.PixelShuffle(2))))
    assert isinstance(model[1][0], ReshapePixelShuffle)
    assert torch.equal(model(x), nn.PixelShuffle(2)(x))
