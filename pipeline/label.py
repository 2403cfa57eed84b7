"""Start a training set from your own footage: extract frames, then draft masks to correct.

    extract_frames(Path("me.mp4"), Path("data/me/images"), every=30)
    draft_masks(load_segmenter(), Path("data/me/images"), Path("data/me/masks"))

Fixing a draft mask is much quicker than drawing one; then `blurvid train data/me --from MODEL`.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import InputError, OutputError
from pipeline.evaluate import IMAGE_SUFFIXES, predict_full
from pipeline.segment import Segmenter
from pipeline.video import VideoReader


def extract_frames(video: Path, dest: Path, *, every: int = 30) -> int:
    """Writes every `every`-th frame of `video` to dest/<stem>_<index>.jpg; returns how many."""
    dest = _make_folder(dest)
    written = 0
    with VideoReader(video) as reader:
        for frame in reader:
            if frame.index % every == 0:
                path = dest / f"{Path(video).stem}_{frame.index:06d}.jpg"
                cv2.imwrite(str(path), cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 95])
                written += 1
    return written


def draft_masks(segmenter: Segmenter, images: Path, dest: Path, *, zoom: bool = False) -> int:
    """Writes dest/NAME.png (0/255) for every image, and dest/overlays/NAME.jpg to check them
    (`zoom`: the model looks again at a crop around the people, pipeline.zoom)."""
    if not Path(images).is_dir():
        raise InputError(f"{images}: not a folder of images")
    paths = sorted(p for p in Path(images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InputError(f"{images}: no images found")
    overlays = _make_folder(Path(dest) / "overlays")
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(f"{path}: not an image OpenCV can read")
        prob = predict_full(segmenter, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), zoom=zoom)
        msk = np.where(prob > 0.5, 255, 0).astype(np.uint8)
        cv2.imwrite(str(Path(dest) / f"{path.stem}.png"), msk)
        cv2.imwrite(str(overlays / f"{path.stem}.jpg"), overlay(bgr, msk))
    return len(paths)


def overlay(bgr: np.ndarray, msk: np.ndarray) -> np.ndarray:
    """The image with the background tinted blue and the mask's outline in green."""
    tinted = bgr.copy()
    background = msk == 0
    tinted[background] = (0.5 * bgr[background] + 0.5 * np.array([255, 0, 0])).astype(np.uint8)
    contours, _ = cv2.findContours(msk, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(tinted, contours, -1, (0, 255, 0), 2)
    return tinted


def _make_folder(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{path}: cannot create folder ({e.strerror})") from e
    return path
