"""Person zoom: segment the region around the people at the model's full pixel budget.

    zoom = PersonZoom(segmenter, grid=(192, 112))
    probs = zoom(frames)            # full-size RGB frames, in video order -> (n, 112, 192) p(person)
    prob = PersonZoom(segmenter, grid)([image])[0]     # a still image: a fresh PersonZoom each time
    segment = frame_segmenter(segmenter, grid, zoom=False)   # the same call, whole frames only

The model sees a fixed number of pixels (its working size). Resizing the whole frame to it spends
most of them on background when the people are small, as in full-body shots; the network then
draws a blurred, widened silhouette that spills onto the floor and the wall. Here a view of the
whole frame finds the people, the frame is cropped to a box around them (with a margin), and the
crop is resized to the same pixel budget and segmented: the network sees the people up to twice as
large (at most 4× per side, `MIN_BOX_FRACTION`), for the same cost. Its result is shrunk back onto
the full frame's working grid, so everything after this (temporal smoothing, mask reuse, the
edge-aware upsampling) is unchanged. Outside the box p(person) is 0.

In a video the box is tracked instead of found again: it stays put while the people stay well
inside it (so the crop's scale does not change from frame to frame, which would make the mask
flicker), is redrawn when they come near its edge or fill much less of it, and the whole frame is
looked at again every `refresh` frames (someone walking in) and whenever someone reaches the box's
edge. Frames with nobody in them are segmented whole, as without zoom.

Opt-in (`blurvid process --zoom`): with v14, the default model then, it lifts full-body photos
(CCP test IoU 0.903 → 0.918) but not the held-out talking-head frames (0.979 → 0.978), and no
share of the frame covered by the people tells the two apart; MODEL.md, Person zoom.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.segment import Segmenter, fit_work_size

PERSON = 0.5              # p(person) above which a grid cell counts as a person
MARGIN = 0.1               # a new box: the people's extent widened by this fraction of its size per side
KEEP_MARGIN = 0.03         # the box is kept while the extent widened by this much still fits inside
SHRINK_BELOW = 0.5        # ...and while the box it would draw now covers at least this share of its area
MIN_BOX_FRACTION = 0.25   # a box spans at least this fraction of the frame's width and height
REFRESH_FRAMES = 8        # look at the whole frame at least this often


@dataclass(frozen=True)
class Box:
    """A rectangle of working-grid cells, [x0, x1) × [y0, y1)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def area(self) -> int:
        return (self.x1 - self.x0) * (self.y1 - self.y0)

    def contains(self, other: Box) -> bool:
        return (self.x0 <= other.x0 and self.y0 <= other.y0
                and other.x1 <= self.x1 and other.y1 <= self.y1)


def person_extent(prob: np.ndarray, threshold: float = PERSON) -> Box | None:
    """The bounding box of the cells with p(person) > threshold, or None when there are none."""
    rows = np.flatnonzero((prob > threshold).any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero((prob > threshold).any(axis=0))
    return Box(int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def widen(extent: Box, grid: tuple[int, int], margin: float,
          min_fraction: float = MIN_BOX_FRACTION) -> Box:
    """`extent` widened by `margin` of its size per side, to at least `min_fraction` of the grid
    per side, and kept inside the grid (shifted, not cut, where it would cross an edge)."""
    w, h = grid

    def span(lo: int, hi: int, size: int) -> tuple[int, int]:
        pad = margin * (hi - lo)
        lo, hi = lo - pad, hi + pad
        short = max(0.0, min_fraction * size - (hi - lo))
        lo, hi = lo - short / 2, hi + short / 2
        if lo < 0:
            lo, hi = 0.0, hi - lo
        if hi > size:
            lo, hi = lo - (hi - size), float(size)
        return max(0, int(np.floor(lo))), min(size, int(np.ceil(hi)))

    x0, x1 = span(extent.x0, extent.x1, w)
    y0, y1 = span(extent.y0, extent.y1, h)
    return Box(x0, y0, x1, y1)


def frame_segmenter(segmenter: Segmenter, grid: tuple[int, int], *, zoom: bool) -> PersonZoom | WholeFrames:
    """What turns full-size frames into p(person) on `grid`: a PersonZoom, or WholeFrames without zoom.
    Both are called the same way, so the stages that segment need not ask which."""
    return PersonZoom(segmenter, grid) if zoom else WholeFrames(segmenter, grid)


class WholeFrames:
    """PersonZoom's call without the zoom: the model looks at each whole frame resized to `grid`."""

    def __init__(self, segmenter: Segmenter, grid: tuple[int, int]) -> None:
        self.segmenter = segmenter
        self.grid = grid

    def __call__(self, frames: Sequence[np.ndarray], small: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """p(person) on the grid for each of `frames`; `small`: the same frames resized to the grid."""
        if not len(frames):
            return np.zeros((0, self.grid[1], self.grid[0]), np.float32)
        if small is None:
            small = [cv2.resize(f, self.grid, interpolation=cv2.INTER_AREA) for f in frames]
        return self.segmenter(np.stack(small))


class PersonZoom:
    """A Segmenter for full-size frames that looks closer at the people (module docstring).

    `grid` (w, h): the size of the probabilities it returns, the working size fitted to the frames'
    aspect (segment.fit_work_size). Call it with consecutive frames of one video, or make a fresh
    one per still image: it remembers where the people were.
    """

    def __init__(self, segmenter: Segmenter, grid: tuple[int, int], *, refresh: int = REFRESH_FRAMES) -> None:
        self.segmenter = segmenter
        self.grid = grid
        self.refresh = refresh
        self.box: Box | None = None
        self.full_views = 0                 # passes over the whole frame, for reports and tests
        self._since_full_view = 0
        self._look_again = True

    def __call__(self, frames: Sequence[np.ndarray], small: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """p(person) on the grid for each of `frames` (H, W, 3) uint8; `small`: the same frames
        already resized to the grid, if the caller has them (saves resizing them again)."""
        if not len(frames):
            return np.zeros((0, self.grid[1], self.grid[0]), np.float32)
        if small is None:
            small = [cv2.resize(f, self.grid, interpolation=cv2.INTER_AREA) for f in frames]
        whole = None
        if self._look_again or self._since_full_view >= self.refresh:
            whole = self.segmenter(np.asarray(small[:1]))
            self.full_views += 1
            self._since_full_view = 0
            self._look_again = False
            self._follow(whole[0])
        self._since_full_view += len(frames)
        if self.box is not None:
            probs = self._segment_box(frames, self.box)
            self._follow(probs[-1])
            return probs
        # nobody seen: the whole frames, as without zoom, and a whole look again next time
        self._look_again = True
        if whole is None:
            return self.segmenter(np.stack(small))
        rest = self.segmenter(np.stack(small[1:])) if len(frames) > 1 else whole[:0]
        return np.concatenate([whole, rest])

    def _segment_box(self, frames: Sequence[np.ndarray], box: Box) -> np.ndarray:
        (gw, gh), (fh, fw) = self.grid, frames[0].shape[:2]
        x0, x1 = round(box.x0 * fw / gw), round(box.x1 * fw / gw)
        y0, y1 = round(box.y0 * fh / gh), round(box.y1 * fh / gh)
        work = fit_work_size(self.grid, (x1 - x0, y1 - y0))     # the grid's pixel budget, the crop's shape
        crops = np.stack([cv2.resize(f[y0:y1, x0:x1], work, interpolation=cv2.INTER_AREA) for f in frames])
        probs = np.zeros((len(frames), gh, gw), np.float32)
        cells = (box.x1 - box.x0, box.y1 - box.y0)
        for prob, crop_prob in zip(probs, self.segmenter(crops)):
            prob[box.y0:box.y1, box.x0:box.x1] = cv2.resize(crop_prob, cells, interpolation=cv2.INTER_AREA)
        return probs

    def _follow(self, prob: np.ndarray) -> None:
        """Keep, redraw or drop the box after seeing `prob`; ask for a whole-frame look if the
        people reach an edge of the box that is not the frame's."""
        extent = person_extent(prob)
        if extent is None:
            self.box = None
            return
        needed = widen(extent, self.grid, KEEP_MARGIN)
        box = self.box
        if box is None or not box.contains(needed) or widen(extent, self.grid, MARGIN).area < SHRINK_BELOW * box.area:
            if box is not None and _reaches_inner_edge(extent, box, self.grid):
                self._look_again = True
            self.box = widen(extent, self.grid, MARGIN)


def _reaches_inner_edge(extent: Box, box: Box, grid: tuple[int, int]) -> bool:
    """True when the people touch a side of `box` that is not also a side of the frame."""
    w, h = grid
    return ((extent.x0 <= box.x0 and box.x0 > 0) or (extent.y0 <= box.y0 and box.y0 > 0)
            or (extent.x1 >= box.x1 and box.x1 < w) or (extent.y1 >= box.y1 and box.y1 < h))
