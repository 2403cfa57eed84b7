"""pipeline.unet rebuilds fastai's DynamicUnet without fastai: same weights, same logits, less memory."""

import subprocess
import sys

import pytest
import torch

from pipeline.segment import ModelConfig, build_unet, load_model, save_model
from pipeline.unet import LeanUnet, supports


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
