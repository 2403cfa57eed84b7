"""Mask reuse on near-identical frames (pipeline/reuse.py): which frames skip the model, and that
the video still comes out whole and right."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import render
from pipeline.process import ProcessOptions, process_video
from pipeline.reuse import MAX_RUN, MaskReuse, changed_fraction
from test_process import RedKey, decode_rgb


def decisions(frames, **kwargs) -> list[bool]:
    reuse = MaskReuse(**kwargs)
    return [reuse.needs_model(f) for f in frames]


def test_still_frames_reuse_at_most_max_run_in_a_row():
    still = [render(0, (64, 48), "still")] * 10
    assert decisions(still) == [True, False, False, False] * 2 + [True, False]
    assert MAX_RUN == 3


def test_moving_frames_and_zero_threshold_always_run_the_model():
    moving = [render(i, (64, 48), "square") for i in range(8)]
    assert all(decisions(moving))
    still = [render(0, (64, 48), "still")] * 5
    assert all(decisions(still, max_changed=0))


def test_slow_drift_is_measured_from_the_last_frame_the_model_saw():
    """Each frame moves a bar one pixel: a small change per step, a large one from the anchor."""
    def frame(x: int) -> np.ndarray:
        img = np.full((48, 64, 3), 40, np.uint8)
        img[:, x:x + 4] = 220
        return img

    steps = [frame(10 + i) for i in range(6)]
    one_step = changed_fraction(steps[1][..., 0], steps[0][..., 0])
    assert one_step < 0.04 < changed_fraction(steps[2][..., 0], steps[0][..., 0])
    # compared with its neighbour every frame would pass; compared with the anchor, every second one runs
    assert decisions(steps, max_changed=0.04) == [True, False] * 3


def test_noise_below_the_level_does_not_count():
    rng = np.random.default_rng(0)
    base = rng.integers(40, 200, (48, 64), dtype=np.uint8)
    noisy = np.clip(base.astype(int) + rng.integers(-8, 9, base.shape), 0, 255).astype(np.uint8)
    assert changed_fraction(base, noisy) == 0.0
    assert changed_fraction(base, 255 - base) > 0.5


def test_bad_threshold_is_refused():
    with pytest.raises(ValueError):
        MaskReuse(1.5)


@pytest.mark.parametrize("reuse, expect_reused", [(0.005, True), (0.0, False)])
def test_process_skips_the_model_on_a_still_clip(make_video, tmp_path, reuse, expect_reused):
    src = make_video(tmp_path / "still.mp4", frames=16, pattern="still")
    key = RedKey()
    report = process_video(src, tmp_path / "out.mp4", ProcessOptions(reuse=reuse, batch_size=4, thumb_every=0),
                           segmenter=key)
    frames = decode_rgb(tmp_path / "out.mp4")
    assert len(frames) == report.frames == 16
    if expect_reused:
        assert report.reused == 12                     # 4 frames of 16 run the model: 1 + 3 reused, ×4
    else:
        assert report.reused == 0
    # the square stays sharp and red in every frame, reused mask or not
    side = 16
    for f in frames:
        patch = f[8:8 + side, 10:10 + side].astype(int)
        assert patch[..., 0].mean() > 180 and patch[..., 1].mean() < 90


def test_process_runs_the_model_on_every_frame_of_a_moving_clip(make_video, tmp_path):
    src = make_video(tmp_path / "moving.mp4", frames=12, pattern="square")
    report = process_video(src, tmp_path / "out.mp4", ProcessOptions(thumb_every=0), segmenter=RedKey())
    assert report.frames == 12 and report.reused == 0


@pytest.mark.media
def test_reused_masks_agree_with_fresh_ones_on_a_talking_head(media_dir):
    """On a GRID talking head most frames reuse a mask, and those masks are what the model would say."""
    import cv2

    from pipeline.process import fit_work_size
    from pipeline.segment import load_segmenter
    from pipeline.video import VideoReader

    seg = load_segmenter()
    with VideoReader(media_dir / "grid" / "id2_vcd_swwp2s.mpg") as reader:
        size = fit_work_size(seg.work_size, (reader.info.width, reader.info.height))
        small = [cv2.resize(f.rgb, size, interpolation=cv2.INTER_AREA) for _, f in zip(range(48), reader)]
    fresh = np.concatenate([seg(np.stack(small[i:i + 8])) for i in range(0, len(small), 8)])
    reuse, shown, ious = MaskReuse(), None, []
    for frame, prob in zip(small, fresh):
        if reuse.needs_model(frame):
            shown = prob
        else:
            a, b = shown > 0.5, prob > 0.5
            ious.append((a & b).sum() / max((a | b).sum(), 1))
    assert len(ious) >= 24                                 # half the frames or more reused
    assert np.mean(ious) > 0.98 and min(ious) > 0.95
