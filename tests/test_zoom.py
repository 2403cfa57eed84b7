"""Person zoom (pipeline.zoom): boxes, the crop the model sees, tracking in a video."""

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.process import ProcessOptions, process_video
from pipeline.video import VideoReader
from pipeline.zoom import Box, PersonZoom, person_extent, widen

GRID = (64, 48)
PERSON_RGB = (230, 40, 60)


class RedSegmenter:
    """A stand-in model: p(person) = 1 on reddish pixels. Records what it was shown."""

    work_size = GRID

    def __init__(self) -> None:
        self.calls: list[np.ndarray] = []

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        self.calls.append(frames.copy())
        r, g = frames[..., 0].astype(np.int16), frames[..., 1].astype(np.int16)
        return ((r - g) > 100).astype(np.float32)


def scene(size=(640, 480), people=((300, 200, 40, 100),)) -> np.ndarray:
    """A grey frame with red 'people' (x, y, w, h in pixels)."""
    w, h = size
    rgb = np.full((h, w, 3), 90, np.uint8)
    rgb[:, :, 2] = np.linspace(60, 160, w, dtype=np.uint8)[None]     # some texture
    for x, y, pw, ph in people:
        rgb[y:y + ph, x:x + pw] = PERSON_RGB
    return rgb


def red_fraction(frame: np.ndarray) -> float:
    return float(((frame[..., 0].astype(int) - frame[..., 1]) > 100).mean())


def test_person_extent_is_the_bounding_box_of_confident_cells():
    prob = np.zeros((10, 12), np.float32)
    prob[2:5, 3:7] = 0.9
    prob[8, 10] = 0.6
    prob[0, 0] = 0.5                        # not above the threshold
    assert person_extent(prob) == Box(3, 2, 11, 9)
    assert person_extent(np.zeros((10, 12), np.float32)) is None


def test_widen_adds_the_margin_keeps_a_minimum_and_stays_inside():
    assert widen(Box(40, 20, 60, 40), (100, 80), 0.1, min_fraction=0) == Box(38, 18, 62, 42)
    small = widen(Box(50, 40, 51, 41), (100, 80), 0.1, min_fraction=0.25)
    assert 25 <= small.x1 - small.x0 <= 26 and 20 <= small.y1 - small.y0 <= 21   # whole cells, outwards
    assert small.x0 < 50 and small.x1 > 51 and small.y0 < 40 and small.y1 > 41
    corner = widen(Box(0, 0, 10, 10), (100, 80), 0.5, min_fraction=0.25)
    assert corner == Box(0, 0, 25, 20)      # shifted inside, not cut
    assert widen(Box(0, 0, 100, 80), (100, 80), 0.1) == Box(0, 0, 100, 80)


def test_a_still_image_is_segmented_again_in_a_crop_where_the_person_looks_larger():
    seg = RedSegmenter()
    rgb = scene()
    prob = PersonZoom(seg, GRID)([rgb])[0]
    whole, crop = seg.calls                 # one look at the whole frame, then the crop
    assert crop[0].size == pytest.approx(whole[0].size, rel=0.3)   # the same pixel budget
    assert red_fraction(crop[0]) > 3 * red_fraction(whole[0])
    # pasted back where the person is, on the frame's grid
    expected = cv2.resize(rgb, GRID, interpolation=cv2.INTER_AREA)
    truth = seg(expected[None])[0] > 0.5
    assert prob.shape == (GRID[1], GRID[0])
    agree = ((prob > 0.5) == truth).mean()
    assert agree > 0.99
    assert prob[0, 0] == 0 and prob[-1, -1] == 0


def test_nobody_in_the_frame_means_the_whole_frame_as_without_zoom():
    seg = RedSegmenter()
    zoom = PersonZoom(seg, GRID)
    frames = [scene(people=()) for _ in range(3)]
    probs = zoom(frames)
    assert zoom.box is None and not probs.any()
    assert sum(len(c) for c in seg.calls) == 3          # the first frame is not segmented twice
    zoom(frames)
    assert zoom.full_views == 2                         # and it keeps looking at the whole frame


def test_the_box_stays_put_while_the_person_stays_inside_it():
    seg = RedSegmenter()
    zoom = PersonZoom(seg, GRID, refresh=8)
    boxes = []
    for t in range(24):                      # a person swaying by a pixel or two
        zoom([scene(people=((300 + (t % 3), 200, 40, 100),))])
        boxes.append(zoom.box)
    assert len(set(boxes)) == 1
    assert zoom.full_views == 3              # the first frame, then every 8
    whole = red_fraction(seg.calls[0][0])
    crops = [red_fraction(c[0]) for c in seg.calls if red_fraction(c[0]) > 2 * whole]
    assert len(crops) == 24 and max(crops) - min(crops) < 0.05 * max(crops)   # one scale throughout


def test_someone_walking_in_is_found_at_the_next_whole_frame_look():
    seg = RedSegmenter()
    zoom = PersonZoom(seg, GRID, refresh=4)
    one = ((300, 200, 40, 100),)
    two = one + ((20, 150, 40, 100),)
    for _ in range(4):
        zoom([scene(people=one)])
    first_box = zoom.box
    probs = [zoom([scene(people=two)])[0] for _ in range(2)]
    assert zoom.box != first_box and zoom.box.x0 <= 2
    assert probs[-1][:, :6].max() == 1      # the newcomer, at the left edge of the grid


def test_a_person_walking_across_the_frame_is_followed():
    seg = RedSegmenter()
    zoom = PersonZoom(seg, GRID, refresh=1000)     # no periodic look: the box must follow by itself
    probs = []
    for t in range(40):
        probs.append(zoom([scene(people=((100 + 10 * t, 200, 40, 100),))])[0])
    x = 100 + 10 * 39
    cells = slice(round(x * GRID[0] / 640) + 1, round((x + 40) * GRID[0] / 640) - 1)
    assert probs[-1][22:28, cells].min() == 1
    assert zoom.box.x0 > 30 and zoom.full_views == 1


def test_a_person_jumping_to_the_box_edge_makes_it_look_at_the_whole_frame_again():
    seg = RedSegmenter()
    zoom = PersonZoom(seg, GRID, refresh=1000)
    zoom([scene(people=((300, 200, 40, 100),))])
    zoom([scene(people=((340, 200, 80, 100),))])   # cut by the box's right edge
    assert zoom.full_views == 1
    prob = zoom([scene(people=((340, 200, 80, 100),))])[0]
    assert zoom.full_views == 2
    assert prob[22:28, 35:41].min() == 1           # the whole person, up to x = 420 px


def test_batches_share_one_crop_size():
    seg = RedSegmenter()
    zoom = PersonZoom(seg, GRID)
    probs = zoom([scene() for _ in range(4)])
    assert probs.shape == (4, GRID[1], GRID[0])
    assert [len(c) for c in seg.calls] == [1, 4]


def test_process_video_zooms_only_when_asked(tmp_path, make_video):
    src = make_video(tmp_path / "in.mp4", size=(320, 240), frames=12, audio=True, pattern="still")
    results = {}
    for zoom in (True, False):
        seg = RedSegmenter()
        dst = tmp_path / f"out-{zoom}.mp4"
        options = ProcessOptions(thumb_every=0, reuse=0, batch_size=4)
        process_video(src, dst, replace(options, zoom=True) if zoom else options, segmenter=seg)
        shapes = {c.shape[1:3] for c in seg.calls}
        results[zoom] = (shapes, sum(len(c) for c in seg.calls))
        with VideoReader(dst) as reader:
            assert reader.info.audio_streams == 1
    assert results[False] == ({(48, 64)}, 12)
    shapes, frames_seen = results[True]
    assert len(shapes) == 2                 # the whole frame, and the crop around the square
    assert 12 < frames_seen <= 12 + 2       # a whole-frame look every 8 frames at most


@pytest.mark.media
def test_zoom_sharpens_full_body_photos_with_the_shipped_model(tmp_path):
    """On the first CCP test photos (full-body people) the shipped model scores higher with zoom."""
    from pipeline.evaluate import evaluate_masks
    from pipeline.segment import load_segmenter

    ccp = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ccp-person"
    if not (ccp / "test.txt").is_file():
        pytest.skip("../shared/datasets/ccp-person not found: this test needs its test split")
    split = tmp_path / "first.txt"
    split.write_text("\n".join((ccp / "test.txt").read_text().split()[:16]))
    seg = load_segmenter()
    zoomed = evaluate_masks(seg, ccp, split=split, zoom=True)
    whole = evaluate_masks(seg, ccp, split=split, zoom=False)
    assert zoomed.images == whole.images == 16
    assert zoomed.iou > whole.iou + 0.005
