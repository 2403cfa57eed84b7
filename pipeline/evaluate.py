"""Measure a person model: IoU, MAD and boundary F-score on masks, flicker on a video.

    scores = evaluate_masks(load_segmenter(), Path("data/test"))        # images/ + masks/
    print(scores.iou, scores.mad, scores.boundary_f, scores.lowest(10))
    other = evaluate_masks(load_segmenter(Path("models/me.safetensors")), Path("data/test"))
    print(paired_difference(scores.per_image, other.per_image))   # other − default, with its 95 % interval
    print(video_flicker(load_segmenter(), Path("talking.mp4")))

Predictions are made the way `blurvid process` makes them: the model looks at the frame resized to
its working size (fitted to its aspect), and with `zoom` then at a crop around the people it found
(pipeline.zoom); the soft mask is upsampled edge-aware to the mask's size. Means are over images
(each image counts once, as in the EG1800 literature). `MaskScores.lowest` names the images with the
lowest IoU. `paired_difference` says whether one model beats another on the same images by more than
the choice of images explains (a paired bootstrap: the test sets here hold 60–264 images, where a
tenth of a point can be chance).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pipeline.composite import upsample_alpha
from pipeline.errors import InputError
from pipeline.segment import Segmenter, fit_work_size
from pipeline.zoom import frame_segmenter

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class MaskScores:
    """Mean per-image scores over a folder (higher is better except MAD), and each image's IoU."""

    images: int
    iou: float          # intersection over union at p > 0.5
    mad: float          # mean absolute difference of the soft mask from the 0/1 truth
    boundary_f: float   # F-score of the predicted edge against the true edge, within a small tolerance
    ms_per_image: float
    per_image: dict[str, float] = field(default_factory=dict, repr=False)   # image stem -> IoU

    def lowest(self, n: int) -> list[tuple[str, float]]:
        """The `n` images with the lowest IoU as (stem, IoU), lowest first: where a model fails, and
        where a mask may be wrong."""
        return sorted(self.per_image.items(), key=lambda item: (item[1], item[0]))[:n]


@dataclass
class PairedDifference:
    """Mean per-image IoU difference (other − base) and its 95 % bootstrap interval, in IoU (0–1)."""

    images: int
    mean: float
    low: float
    high: float

    @property
    def resolved(self) -> bool:
        """True when the interval excludes 0: the images say which model is better."""
        return self.low > 0 or self.high < 0


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """IoU of two boolean masks; two empty masks agree perfectly (1.0)."""
    union = np.logical_or(pred, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, truth).sum() / union)


def boundary_f(pred: np.ndarray, truth: np.ndarray, tolerance: int | None = None) -> float:
    """F-score of boundary pixels matched within `tolerance` px (default: 1 % of the diagonal, ≥ 2)."""
    h, w = truth.shape
    tolerance = tolerance or max(2, round(0.01 * np.hypot(h, w)))
    edge_p, edge_t = _edges(pred), _edges(truth)
    if not edge_p.any() and not edge_t.any():
        return 1.0
    if not edge_p.any() or not edge_t.any():
        return 0.0
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance + 1, 2 * tolerance + 1))
    near_t = cv2.dilate(edge_t.astype(np.uint8), kernel) > 0
    near_p = cv2.dilate(edge_p.astype(np.uint8), kernel) > 0
    precision = (edge_p & near_t).sum() / edge_p.sum()
    recall = (edge_t & near_p).sum() / edge_t.sum()
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def _edges(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.uint8)
    return cv2.morphologyEx(m, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0


def predict_full(segmenter: Segmenter, rgb: np.ndarray, *, zoom: bool = False) -> np.ndarray:
    """p(person) for one RGB image at its own size, as `blurvid process` would compute it for the
    first frame of a video (`zoom`: looking closer at the people, pipeline.zoom)."""
    h, w = rgb.shape[:2]
    work = fit_work_size(segmenter.work_size, (w, h))
    small = cv2.resize(rgb, work, interpolation=cv2.INTER_AREA)
    prob = frame_segmenter(segmenter, work, zoom=zoom)([rgb], [small])[0]
    return upsample_alpha(prob, rgb).astype(np.float32) / 255.0


def mask_pairs(data: Path, split: Path | None = None) -> list[tuple[Path, Path]]:
    """(image, mask) paths in DATA/images and DATA/masks with matching stems, optionally limited to
    the stems listed in `split` (one per line, like EG1800's test.txt)."""
    images, masks = Path(data) / "images", Path(data) / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise InputError(f"{data}: expected a folder with images/ and masks/ inside")
    by_stem = {p.stem: p for p in masks.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    wanted = set(Path(split).read_text().split()) if split else None
    pairs = [(p, by_stem[p.stem]) for p in sorted(images.iterdir())
             if p.suffix.lower() in IMAGE_SUFFIXES and p.stem in by_stem
             and (wanted is None or p.stem in wanted)]
    if not pairs:
        raise InputError(f"{data}: no image has a mask with the same name"
                         + (f" among the names in {split}" if split else ""))
    return pairs


def load_pair(img_path: Path, msk_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """rgb, truth = load_pair(image, mask): the image as RGB at the mask's size and the mask as booleans
    (values 0/255 or 0/1). Raises InputError for a file OpenCV cannot read."""
    bgr = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
    msk = cv2.imread(str(msk_path), cv2.IMREAD_GRAYSCALE)
    if bgr is None or msk is None:
        raise InputError(f"{img_path if bgr is None else msk_path}: not an image OpenCV can read")
    truth = msk > (127 if msk.max() > 1 else 0)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if rgb.shape[:2] != truth.shape:
        rgb = cv2.resize(rgb, truth.shape[::-1], interpolation=cv2.INTER_AREA)
    return rgb, truth


def evaluate_masks(segmenter: Segmenter, data: Path, *, split: Path | None = None, zoom: bool = False,
                   progress: Callable[[int], None] | None = None) -> MaskScores:
    """Scores of `segmenter` on DATA's image/mask pairs (see the module docstring)."""
    import time

    ious, mads, bfs, seconds = [], [], [], 0.0
    pairs = mask_pairs(data, split)
    for img_path, msk_path in pairs:
        rgb, truth = load_pair(img_path, msk_path)
        t0 = time.perf_counter()
        prob = predict_full(segmenter, rgb, zoom=zoom)
        seconds += time.perf_counter() - t0
        pred = prob > 0.5
        ious.append(iou(pred, truth))
        mads.append(float(np.abs(prob - truth).mean()))
        bfs.append(boundary_f(pred, truth))
        if progress:
            progress(1)
    return MaskScores(images=len(pairs), iou=float(np.mean(ious)), mad=float(np.mean(mads)),
                      boundary_f=float(np.mean(bfs)), ms_per_image=1000 * seconds / len(pairs),
                      per_image={img.stem: score for (img, _), score in zip(pairs, ious)})


def paired_difference(base: dict[str, float], other: dict[str, float], *, resamples: int = 10_000,
                      seed: int = 0) -> PairedDifference:
    """diff = paired_difference(a.per_image, b.per_image): how much b's IoU beats a's on the same
    images, image by image, with the 2.5th and 97.5th percentiles of that mean over `resamples` draws
    of the images with replacement. Both must score the same images (InputError otherwise)."""
    if base.keys() != other.keys() or not base:
        raise InputError("the two models were not scored on the same images")
    stems = sorted(base)
    diffs = np.array([other[s] - base[s] for s in stems])
    rng = np.random.default_rng(seed)
    means = [diffs[rng.integers(0, len(diffs), len(diffs))].mean() for _ in range(resamples)]
    low, high = np.percentile(means, [2.5, 97.5])
    return PairedDifference(images=len(diffs), mean=float(diffs.mean()), low=float(low), high=float(high))


def video_flicker(segmenter: Segmenter, video: Path, *, max_frames: int | None = 250,
                  smoother=None, reuse=None, zoom: bool = False) -> float:
    """Mean |m_t − m_{t−1}| of the soft mask over consecutive frames (lower is steadier).

    Measured at the working size, where the model's own jitter lives. As in `blurvid process`,
    `reuse` (a reuse.MaskReuse), if given, keeps the last mask for near-identical frames, then
    `smoother` (a temporal.TemporalSmoother), if given, smooths each mask in order; `zoom`: the
    model looks closer at the people (pipeline.zoom).
    """
    from pipeline.video import VideoReader   # here, so scoring images needs no video library (PyAV)

    diffs, previous, raw = [], None, None
    with VideoReader(video) as reader:
        work = fit_work_size(segmenter.work_size, (reader.info.width, reader.info.height))
        segment = frame_segmenter(segmenter, work, zoom=zoom)
        for frame in reader:
            if max_frames is not None and frame.index >= max_frames:
                break
            small = cv2.resize(frame.rgb, work, interpolation=cv2.INTER_AREA)
            if reuse is None or reuse.needs_model(small):   # True for the first frame
                raw = segment([frame.rgb], [small])[0]
            prob = raw
            if smoother is not None:
                prob = smoother(prob)
            if previous is not None:
                diffs.append(float(np.abs(prob - previous).mean()))
            previous = prob
    if not diffs:
        raise InputError(f"{video}: needs at least two frames to measure flicker")
    return float(np.mean(diffs))
