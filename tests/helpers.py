"""Small data makers shared by tests (fixtures live in conftest.py)."""

from pathlib import Path

import cv2
import numpy as np


def make_tiny_dataset(root: Path, n: int = 12, size=(64, 48), seed: int = 0) -> Path:
    """root/images/*.jpg + root/masks/*.png: a red disc (the "person", 255) over dark noise."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    w, h = size
    for i in range(n):
        img = rng.integers(0, 80, (h, w, 3), np.uint8)
        msk = np.zeros((h, w), np.uint8)
        centre = (int(rng.integers(w // 3, 2 * w // 3)), int(rng.integers(h // 3, 2 * h // 3)))
        cv2.circle(msk, centre, min(w, h) // 4, 255, -1)
        img[msk > 0] = (60, 60, 220)  # BGR red
        cv2.imwrite(str(root / "images" / f"{i:03d}.jpg"), img)
        cv2.imwrite(str(root / "masks" / f"{i:03d}.png"), msk)
    return root


def make_tiny_model(folder: Path, name: str = "tiny") -> Path:
    """A randomly initialised U-Net at a tiny working size (64×48): the real code path, fast."""
    from pipeline.segment import ModelConfig, build_unet, save_model

    config = ModelConfig(work_size=(64, 48))
    return save_model(build_unet(config), config, Path(folder) / f"{name}.safetensors")
