"""What goes behind the person: `--background SPEC` turned into a Background for the Compositor.

    with open_background("blur", blur=21) as bg: ...              # the frame's own background, blurred
    with open_background("room.jpg") as bg: ...                   # a still image, scaled to cover
    with open_background("beach.mp4", fit="stretch") as bg: ...   # a video, looped
    with open_background("#00b140") as bg: ...                    # a solid colour (also "green", "0,177,64")
    com, pha = Compositor(background=bg)(src, prob)

A SPEC is read in this order: "blur", an existing file (image or video: whatever OpenCV reads as an
image is an image), a colour. Anything else is an InputError that says which of these was meant.
Video backgrounds are frame-aligned by output frame index (output frame n shows background frame
n mod its length), whatever the two frame rates are.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from pipeline.composite import FITS, Background, BlurBackground, ColourBackground, ImageBackground, fit_frame
from pipeline.errors import InputError
from pipeline.video import VideoReader

# CSS names people type; anything else can be given as #rrggbb or r,g,b.
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128), "gray": (128, 128, 128),
    "silver": (192, 192, 192), "red": (255, 0, 0), "maroon": (128, 0, 0), "orange": (255, 165, 0),
    "yellow": (255, 255, 0), "olive": (128, 128, 0), "lime": (0, 255, 0), "green": (0, 128, 0),
    "teal": (0, 128, 128), "cyan": (0, 255, 255), "aqua": (0, 255, 255), "blue": (0, 0, 255),
    "navy": (0, 0, 128), "purple": (128, 0, 128), "magenta": (255, 0, 255), "fuchsia": (255, 0, 255),
    "pink": (255, 192, 203), "brown": (165, 42, 42), "beige": (245, 245, 220),
    "chromakey": (0, 177, 64),  # broadcast chroma-key green
}


def parse_colour(text: str) -> tuple[int, int, int]:
    """'#00ff00', '#0f0', 'green', '0,255,0' -> (r, g, b); InputError for anything else."""
    t = text.strip().lower()
    if t in COLOURS:
        return COLOURS[t]
    if m := re.fullmatch(r"#?([0-9a-f]{6}|[0-9a-f]{3})", t):
        hx = m.group(1)
        if len(hx) == 3:
            hx = "".join(c * 2 for c in hx)
        return tuple(int(hx[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
    if m := re.fullmatch(r"(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})", t):
        rgb = tuple(int(v) for v in m.groups())
        if all(v <= 255 for v in rgb):
            return rgb  # type: ignore[return-value]
    raise InputError(f"{text!r}: not a colour; use a name ({', '.join(list(COLOURS)[:6])}, ...), "
                     "#rrggbb or r,g,b")


class VideoBackground:
    """A video behind the person, looped: output frame n gets background frame n mod its length.

        with VideoBackground("beach.mp4", fit="cover") as bg:
            bgr = bg(src, pha, index)   # (H, W, 3) uint8, the size of src

    Streams the file (memory does not grow with its length); frames are asked for in order, and an
    index behind the current position reopens the file. InputError if it is not a readable video.
    """

    def __init__(self, path: str | Path, *, fit: str = "cover") -> None:
        if fit not in FITS:
            raise ValueError(f"fit must be one of {', '.join(FITS)}, not {fit!r}")
        self.path, self.fit = Path(path), fit
        self.length: int | None = None  # frames in the file, known once it has been read to the end
        self._reader: VideoReader | None = None
        self._open()

    def _open(self) -> None:
        self.close()
        self._reader = VideoReader(self.path)
        self._frames = iter(self._reader)
        self._pos = -1   # index of the frame in self._rgb
        self._rgb: np.ndarray | None = None
        self._bgr: np.ndarray | None = None

    def __call__(self, src: np.ndarray, pha: np.ndarray, index: int) -> np.ndarray:
        want = index % self.length if self.length else index
        if want < self._pos:
            self._open()
        while self._pos < want:
            frame = next(self._frames, None)
            if frame is None:   # the end: now its length is known, loop
                self.length = self._pos + 1
                want %= self.length
                if want < self._pos:
                    self._open()
                continue
            self._pos, self._rgb, self._bgr = self._pos + 1, frame.rgb, None
        if self._bgr is None or self._bgr.shape != src.shape:
            self._bgr = fit_frame(self._rgb, src.shape[1], src.shape[0], self.fit)
        return self._bgr

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> VideoBackground:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def open_background(spec: str = "blur", *, blur: float = 21, fit: str = "cover") -> Iterator[Background]:
    """The Background a `--background` SPEC means (see the module docstring); closed on exit."""
    if spec.strip().lower() == "blur":
        yield BlurBackground(blur)
        return
    path = Path(spec).expanduser()
    if path.is_file():
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)  # None for videos and for anything unreadable
        if img is not None:
            yield ImageBackground(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), fit=fit)
            return
        try:
            bg = VideoBackground(path, fit=fit)
        except InputError as e:
            raise InputError(f"{path}: not an image or a video that can be read") from e
        with bg:
            yield bg
        return
    if path.is_dir():
        raise InputError(f"{spec}: is a folder; give an image or video file, a colour or 'blur'")
    try:
        rgb = parse_colour(spec)
    except InputError:
        looks_like_file = "/" in spec or "\\" in spec or bool(Path(spec).suffix)
        if looks_like_file:
            raise InputError(f"{spec}: no such file (a background is 'blur', an image or video file, "
                             "or a colour)") from None
        raise
    yield ColourBackground(rgb)


def check_background(spec: str, *, fit: str = "cover") -> None:
    """Raise InputError now if SPEC cannot be opened (the CLI checks before loading the model)."""
    with open_background(spec, fit=fit):
        pass
