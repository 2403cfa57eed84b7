"""Temporal smoothing: flicker measured down on still shots, no lag or ghost on fast motion.

    .venv/bin/python -m pytest tests/test_temporal.py -q -s     # -s prints the measured numbers
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluate import iou, video_flicker
from pipeline.segment import DEFAULT_MODEL
from pipeline.temporal import TemporalSmoother, uncertainty

H, W, SIDE = 144, 256, 48   # a working-size frame and a "person" square in it


def square_prob(x0: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """What a model sees of a square at column x0: a soft edge (1.5 px) that jitters (0.6 px) from frame
    to frame, plus noise where it is unsure. Returns (p (H, W) float32, the true square (H, W) bool)."""
    yy, xx = np.mgrid[:H, :W].astype(np.float32)
    y0 = (H - SIDE) / 2
    j = rng.normal(0, 0.6, 4)
    d = np.maximum.reduce([x0 + j[0] - xx, xx - (x0 + SIDE + j[1]), y0 + j[2] - yy, yy - (y0 + SIDE + j[3])])
    p = 1 / (1 + np.exp(d / 1.5))
    p += rng.normal(0, 0.08, p.shape) * 4 * p * (1 - p)
    truth = np.maximum.reduce([x0 - xx, xx - (x0 + SIDE), y0 - yy, yy - (y0 + SIDE)]) < 0
    return np.clip(p, 0, 1).astype(np.float32), truth


class MovingAverage:
    """The plain exponential moving average that ghosts: what the smoother must beat."""

    def __init__(self, r: float):
        self.r, self.m = r, None

    def __call__(self, p: np.ndarray) -> np.ndarray:
        self.m = p.copy() if self.m is None else p + (self.m - p) * self.r
        return self.m


def run(speed: float, smoother=None, frames: int = 40, seed: int = 0) -> tuple[float, float]:
    """(mean IoU of mask > 0.5 with the true square after a 5-frame warm-up, flicker) at `speed` px/frame."""
    rng = np.random.default_rng(seed)
    ious, diffs, prev = [], [], None
    for t in range(frames):
        p, truth = square_prob(10 + speed * t, rng)
        m = smoother(p) if smoother else p
        if t >= 5:
            ious.append(iou(m > 0.5, truth))
        if prev is not None:
            diffs.append(float(np.abs(m - prev).mean()))
        prev = m
    return float(np.mean(ious)), float(np.mean(diffs))


def test_uncertainty_is_one_at_half_and_zero_when_sure():
    assert uncertainty(np.float32(0.5)) == pytest.approx(1)
    assert uncertainty(np.float32(0)) == 0 and uncertainty(np.float32(1)) == 0
    assert uncertainty(np.float32(0.95)) < 0.2


def test_first_frame_passes_and_sure_pixels_follow_at_once():
    smooth = TemporalSmoother(0.9)
    p0 = np.zeros((4, 6), np.float32)
    np.testing.assert_array_equal(smooth(p0), p0)
    p1 = np.ones((4, 6), np.float32)           # everything flips with certainty: no memory at all
    np.testing.assert_array_equal(smooth(p1), p1)
    jump = smooth(np.full((4, 6), 0.45, np.float32))   # a change of 0.55 is motion: followed at once
    np.testing.assert_allclose(jump, 0.45)
    m2 = smooth(np.zeros((2, 2), np.float32))  # a new size starts over
    np.testing.assert_array_equal(m2, 0)


def test_jitter_around_half_is_damped():
    smooth = TemporalSmoother(0.9)
    smooth(np.full((3, 3), 0.55, np.float32))
    m = smooth(np.full((3, 3), 0.45, np.float32))   # unsure and a small change: it stays on the 0.55 side
    assert (m > 0.5).all() and m.dtype == np.float32


def test_strength_zero_is_off_and_bad_values_refused():
    smooth = TemporalSmoother(0)
    rng = np.random.default_rng(0)
    for _ in range(3):
        p = rng.random((5, 5), dtype=np.float32)
        np.testing.assert_array_equal(smooth(p), p)
    with pytest.raises(ValueError):
        TemporalSmoother(1.5)
    with pytest.raises(ValueError):
        TemporalSmoother(0.5, motion=0)


def test_flicker_drops_on_a_still_shot():
    raw = run(0)
    smooth = run(0, TemporalSmoother(0.7))
    print(f"\nstill square: flicker raw {raw[1]:.5f} smoothed {smooth[1]:.5f} ({smooth[1] / raw[1]:.2f}x); "
          f"IoU {raw[0]:.4f} -> {smooth[0]:.4f}")
    assert smooth[1] < 0.7 * raw[1]
    assert smooth[0] > raw[0] - 0.005


@pytest.mark.parametrize("speed", [4, 8])
def test_no_ghost_or_lag_on_fast_motion(speed):
    """IoU with the true square position stays at the raw mask's; a moving average falls far behind."""
    raw_iou, _ = run(speed)
    ours, _ = run(speed, TemporalSmoother(0.7))
    plain, _ = run(speed, TemporalSmoother(0.7, motion=None))
    ema, _ = run(speed, MovingAverage(0.7))
    print(f"\nsquare at {speed} px/frame: IoU raw {raw_iou:.4f}, smoothed {ours:.4f}, "
          f"without the motion gate {plain:.4f}, moving average {ema:.4f}")
    assert ours > raw_iou - 0.01
    assert plain < raw_iou - 0.02       # why the motion gate is there (see temporal.py)
    assert ema < raw_iou - 0.1          # the ghost a plain moving average leaves


def _teacher():
    """The MediaPipe selfie teacher as a Segmenter, or skip (it needs ai-edge-litert and its files)."""
    pytest.importorskip("ai_edge_litert")
    from pipeline.dataprep import DEFAULT_TEACHER_DIR, TEACHER_MODELS, Teacher

    if not all((DEFAULT_TEACHER_DIR / name).is_file() for name in TEACHER_MODELS.values()):
        pytest.skip("teacher models not found (../shared/tools/get-teacher.sh)")
    teacher = Teacher(DEFAULT_TEACHER_DIR, threads=1)

    class TeacherSegmenter:
        work_size = (256, 144)

        def __call__(self, frames: np.ndarray) -> np.ndarray:
            return np.stack([teacher(f) for f in frames])

    return TeacherSegmenter()


def _flicker(segmenter, clip: Path, strength: float) -> tuple[float, float]:
    raw = video_flicker(segmenter, clip, max_frames=100)
    smooth = video_flicker(segmenter, clip, max_frames=100, smoother=TemporalSmoother(strength))
    return raw, smooth


@pytest.mark.media
@pytest.mark.slow
@pytest.mark.parametrize("clip", ["grid/bbaf2n.mpg", "talking/s18.mp4"])
def test_flicker_drops_on_real_talking_heads_with_the_teacher(media_dir, clip):
    """A real person model's jitter on still talking-head shots (the teacher stands in for ours)."""
    seg = _teacher()
    raw, smooth = _flicker(seg, media_dir / clip, 0.7)
    print(f"\n{clip} (teacher): flicker raw {raw:.5f} smoothed {smooth:.5f} ({smooth / raw:.2f}x)")
    assert smooth < 0.95 * raw


@pytest.mark.media
@pytest.mark.slow
@pytest.mark.parametrize("clip", ["grid/bbaf2n.mpg", "talking/d12.mp4"])
def test_flicker_drops_on_real_clips_with_the_default_model(media_dir, clip):
    if not DEFAULT_MODEL.is_file():
        pytest.skip(f"{DEFAULT_MODEL.name} not trained yet")
    from pipeline.segment import load_segmenter

    raw, smooth = _flicker(load_segmenter(), media_dir / clip, 0.7)
    print(f"\n{clip} (default model): flicker raw {raw:.5f} smoothed {smooth:.5f} ({smooth / raw:.2f}x)")
    assert smooth < raw
