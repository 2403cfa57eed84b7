"""Turn a low-res person probability into a composite frame, with no halo.

    comp = Compositor(blur=21)
    com, pha = comp(frame.rgb, prob)   # (H, W, 3) uint8 RGB, (h, w) float32 p(person)
                                       # -> com (H, W, 3) uint8, alpha (H, W) uint8

The three steps are usable on their own:

    pha = upsample_alpha(prob, src)         # fast guided filter: soft alpha that follows the frame's edges
    bgr = blur_background(src, pha, 21)     # blur of the background only (normalised convolution)
    com = blend(src, bgr, pha)              # com = pha*src + (1-pha)*bgr, fixed point

Other backgrounds plug into Compositor(background=...): any callable `(src, pha, index) -> bgr`
(index = 0-based frame number, for video backgrounds). BlurBackground is the default;
ColourBackground and ImageBackground replace the background (pipeline.backgrounds adds video
backgrounds and turns a `--background` SPEC into one). Over a replaced background,
Compositor(light_wrap=0.5) lets its light spill over the person's edge (see light_wrap).

Why not "blur the whole frame, then blend": the blur smears the person's colours into the
background around them, a visible shadow ("halo"). Here the person's pixels get (almost) no
weight in the background blur, so only background colours spread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from pipeline.errors import InputError

# Gaussian sigma (px) of blur strength 1 on a frame whose shorter side is 360 px; scales with frame size.
_SIGMA_PER_STRENGTH = 0.5
_REF_SIDE = 360
# The background blur runs at a reduced size where its sigma is this many (low-res) pixels:
# enough samples for a smooth bilinear upsample, few enough to cost ~1 ms even at 1080p.
_LOWRES_SIGMA = 3.0


class Workspace:
    """Scratch arrays reused from frame to frame: filling a warm buffer is ~3x faster than a fresh one.

        work = Workspace()
        pha = upsample_alpha(prob, src, work=work)   # later calls of the same size reuse its arrays

    Not thread-safe: one per thread. Results handed back to callers are never workspace arrays.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        arr = self._arrays.get(name)
        if arr is None or arr.shape != shape or arr.dtype != dtype:
            arr = self._arrays[name] = np.empty(shape, dtype)
        return arr


def upsample_alpha(
    prob: np.ndarray,
    guide: np.ndarray,
    *,
    radius: int | None = None,
    eps: float = 1e-3,
    work: Workspace | None = None,
) -> np.ndarray:
    """Upsample a person probability to the frame's size along the frame's edges (fast guided filter).

        pha = upsample_alpha(prob, src)   # prob (h, w) float in [0, 1]; src (H, W, 3) uint8 -> (H, W) uint8

    He & Sun's fast guided filter with a grey guide: the local linear model alpha = A*I + b is fitted
    at the prob's size (guide shrunk to match), A and b are upsampled bilinearly and applied to the
    full-res grey frame. `radius` is the box radius in low-res pixels (default: 1/128 of the shorter
    low-res side, at least 1: 1 up to 255 px; larger radii bled the full-res texture into alpha in
    tests); `eps` regularises on [0, 1] intensities (smaller = follows edges harder).
    A grey guide costs one full-res multiply-add instead of three, and person/background edges almost
    always differ in brightness too.
    """
    if prob.ndim != 2:
        raise ValueError(f"prob must be (h, w), got shape {prob.shape}")
    if guide.dtype != np.uint8 or not (guide.ndim == 2 or (guide.ndim == 3 and guide.shape[2] == 3)):
        raise ValueError(f"guide must be (H, W, 3) or (H, W) uint8, got {guide.shape} {guide.dtype}")
    work = work or Workspace()
    h, w = prob.shape
    H, W = guide.shape[:2]
    if guide.ndim == 2:
        grey = guide
    else:
        grey = cv2.cvtColor(guide, cv2.COLOR_RGB2GRAY, dst=work.get("grey", (H, W), np.uint8))
    if radius is None:
        radius = max(1, min(h, w) // 128)
    k = (2 * radius + 1, 2 * radius + 1)

    p = np.ascontiguousarray(prob, dtype=np.float32)
    small = grey if (h, w) == (H, W) else shrink(grey, (w, h))
    i = small.astype(np.float32)
    i *= 1 / 255
    mean_i = cv2.boxFilter(i, -1, k)
    mean_p = cv2.boxFilter(p, -1, k)
    cov_ip = cv2.boxFilter(i * p, -1, k) - mean_i * mean_p
    var_i = cv2.boxFilter(i * i, -1, k) - mean_i * mean_i
    a = cov_ip / (var_i + np.float32(eps))
    b = mean_p - a * mean_i
    a = cv2.boxFilter(a, -1, k)
    b = cv2.boxFilter(b, -1, k)
    # alpha*255 = A*(I8/255)*255 + 255*b = A*I8 + 255*b: scaling b at low res spares a full-res pass
    b *= 255
    if (h, w) != (H, W):
        a = cv2.resize(a, (W, H), dst=work.get("a", (H, W), np.float32), interpolation=cv2.INTER_LINEAR)
        b = cv2.resize(b, (W, H), dst=work.get("b", (H, W), np.float32), interpolation=cv2.INTER_LINEAR)
    ai = cv2.multiply(a, grey, dst=work.get("ai", (H, W), np.float32), dtype=cv2.CV_32F)
    # cv2 rounds and saturates on the way to uint8: the clip to 0..255 comes for free
    return cv2.add(ai, b, dtype=cv2.CV_8U)


def blur_sigma(strength: float, shape: tuple[int, ...]) -> float:
    """Gaussian sigma in pixels that blur `strength` means on a frame of `shape` (H, W, ...).

        blur_sigma(21, (360, 640))  -> 10.5;  blur_sigma(21, (1080, 1920)) -> 31.5

    sigma = strength / 2 at a shorter side of 360 px, proportional to the shorter side, so a clip
    looks the same at 360p and 1080p (portrait frames use their width). Strength 21 (sigma 10.5 at
    360p) is about the reference post's GaussianBlur(k=61) (sigma 9.5) at 640x360.
    """
    return strength * _SIGMA_PER_STRENGTH * min(shape[0], shape[1]) / _REF_SIDE


def blur_background(
    src: np.ndarray, pha: np.ndarray, strength: float, *, work: Workspace | None = None
) -> np.ndarray:
    """Blur the background only, so the person's colours do not leak into it.

        bgr = blur_background(src, pha, 21)   # src (H, W, 3) uint8, pha (H, W) uint8 -> (H, W, 3) uint8

    Normalised convolution: B = G*(I*(1-a)) / G*(1-a), with G a Gaussian of sigma
    `blur_sigma(strength, src.shape)` (strength 0 = no blur, a copy of src). It runs at a size where
    sigma is ~3 pixels (INTER_AREA down, bilinear up); I*(1-a) is formed at full resolution first, so
    person pixels on the edge are not averaged into the shrunk background.

    Where the whole neighbourhood is person (denominator ~0) it falls back to a plain blur of the
    frame: every pixel keeps a weight of at least 1/255, so the person's share next to background is
    at most ~0.4 % of it, and inside the person (all weights 1/255) B is the frame's blur. Those pixels
    sit under alpha ~1 anyway.
    """
    _check_frame(src, pha)
    H, W = pha.shape
    sigma = blur_sigma(strength, src.shape)
    if sigma <= 0:
        return src.copy()
    work = work or Workspace()
    scale = max(1.0, sigma / _LOWRES_SIGMA)
    w, h = max(1, round(W / scale)), max(1, round(H / scale))

    wgt = cv2.bitwise_not(pha, dst=work.get("wgt", (H, W), np.uint8))
    cv2.max(wgt, 1, dst=wgt)  # fallback weight: see docstring
    # I*w in uint16 (at most 255*255): exact, so the weights down to 1/255 survive the shrink.
    # Same-type uint16 ops: OpenCV's mixed uint8 x uint8 -> uint16 multiply is ~3x slower.
    wgt3 = cv2.cvtColor(wgt, cv2.COLOR_GRAY2RGB, dst=work.get("wgt3", src.shape, np.uint8))
    num = work.get("num", src.shape, np.uint16)
    tmp = work.get("tmp", src.shape, np.uint16)
    np.copyto(num, src)
    np.copyto(tmp, wgt3)
    cv2.multiply(num, tmp, dst=num)
    den = work.get("den", (H, W), np.uint16)
    np.copyto(den, wgt)
    num_low = shrink(num, (w, h)).astype(np.float32)
    den_low = shrink(den, (w, h)).astype(np.float32)
    sx, sy = sigma * w / W, sigma * h / H
    num_low = cv2.GaussianBlur(num_low, (0, 0), sx, sigmaY=sy)
    den_low = cv2.GaussianBlur(den_low, (0, 0), sx, sigmaY=sy)
    bgr_low = num_low / den_low[:, :, None]
    bgr_low = cv2.convertScaleAbs(bgr_low)  # rounds, saturates to uint8
    return cv2.resize(bgr_low, (W, H), interpolation=cv2.INTER_LINEAR)


def blend(
    src: np.ndarray, bgr: np.ndarray, pha: np.ndarray, *, work: Workspace | None = None
) -> np.ndarray:
    """Alpha-blend the person over a background: com = pha*src + (1-pha)*bgr.

        com = blend(src, bgr, pha)   # (H, W, 3) uint8, (H, W, 3) uint8, (H, W) uint8 -> (H, W, 3) uint8

    Exact fixed point: round((pha*src + (255-pha)*bgr) / 255) from uint16 products, so pha == 255
    gives src and pha == 0 gives bgr bit for bit. No float frame at full size.
    """
    _check_frame(src, pha)
    if bgr.shape != src.shape or bgr.dtype != np.uint8:
        raise ValueError(f"bgr must be {src.shape} uint8, got {bgr.shape} {bgr.dtype}")
    work = work or Workspace()
    pha3 = cv2.cvtColor(pha, cv2.COLOR_GRAY2RGB, dst=work.get("pha3", src.shape, np.uint8))
    acc = work.get("acc", src.shape, np.uint16)
    x16 = work.get("x16", src.shape, np.uint16)
    p16 = work.get("p16", src.shape, np.uint16)
    # Same-type uint16 ops: OpenCV's mixed uint8 x uint8 -> uint16 multiply is ~3x slower.
    np.copyto(x16, src)
    np.copyto(p16, pha3)
    cv2.multiply(x16, p16, dst=acc)  # pha*src
    cv2.bitwise_not(pha3, dst=pha3)
    np.copyto(x16, bgr)
    np.copyto(p16, pha3)
    cv2.multiply(x16, p16, dst=x16)  # (255-pha)*bgr
    cv2.add(acc, x16, dst=acc)  # at most 255*255
    return cv2.convertScaleAbs(acc, alpha=1 / 255)  # /255, rounded, to uint8


class Background(Protocol):
    """What Compositor calls for the new background: (src, pha, index) -> bgr (H, W, 3) uint8 RGB."""

    def __call__(self, src: np.ndarray, pha: np.ndarray, index: int) -> np.ndarray: ...


class BlurBackground:
    """The frame's own background, blurred without the person: BlurBackground(21)(src, pha, index)."""

    def __init__(self, strength: float = 21) -> None:
        if strength < 0:
            raise ValueError(f"blur strength must be >= 0, got {strength}")
        self.strength = strength
        self._work = Workspace()

    def __call__(self, src: np.ndarray, pha: np.ndarray, index: int) -> np.ndarray:
        return blur_background(src, pha, self.strength, work=self._work)


class ColourBackground:
    """A solid colour: ColourBackground((0, 177, 64))(src, pha, index) -> that colour, frame-sized."""

    def __init__(self, rgb: tuple[int, int, int]) -> None:
        if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise ValueError(f"colour must be three values in 0..255, got {rgb}")
        self.rgb = tuple(int(c) for c in rgb)
        self._bgr: np.ndarray | None = None  # cached per frame size: frames of a video share one

    def __call__(self, src: np.ndarray, pha: np.ndarray, index: int) -> np.ndarray:
        if self._bgr is None or self._bgr.shape != src.shape:
            self._bgr = np.empty(src.shape, np.uint8)
            self._bgr[:] = self.rgb
        return self._bgr


class ImageBackground:
    """A still image behind the person, scaled to cover the frame and centred (the overflow is cropped).

        bg = ImageBackground(img)                   # img (h, w, 3) uint8 RGB
        bg = ImageBackground.from_file("room.jpg")  # InputError if it is not a readable image
    """

    def __init__(self, img: np.ndarray, *, fit: str = "cover") -> None:
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"image must be (h, w, 3) uint8, got {img.shape} {img.dtype}")
        if fit not in FITS:
            raise ValueError(f"fit must be one of {', '.join(FITS)}, not {fit!r}")
        self.img, self.fit = img, fit
        self._bgr: np.ndarray | None = None

    @classmethod
    def from_file(cls, path: str | Path, *, fit: str = "cover") -> ImageBackground:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(f"{path}: not an image OpenCV can read")
        return cls(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), fit=fit)

    def __call__(self, src: np.ndarray, pha: np.ndarray, index: int) -> np.ndarray:
        if self._bgr is None or self._bgr.shape != src.shape:
            self._bgr = fit_frame(self.img, src.shape[1], src.shape[0], self.fit)
        return self._bgr


def cover(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale `img` to cover width x height keeping its aspect ratio, centred, cropped to exactly that size."""
    h, w = img.shape[:2]
    s = max(width / w, height / h)
    sw, sh = max(width, round(w * s)), max(height, round(h * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    big = cv2.resize(img, (sw, sh), interpolation=interp)
    x, y = (sw - width) // 2, (sh - height) // 2
    return np.ascontiguousarray(big[y : y + height, x : x + width])


FITS = ("cover", "stretch")


def fit_frame(img: np.ndarray, width: int, height: int, fit: str = "cover") -> np.ndarray:
    """`img` at exactly width x height: "cover" (see cover) or "stretch" (aspect ratio ignored)."""
    if fit == "cover":
        return cover(img, width, height)
    if fit == "stretch":
        if img.shape[:2] == (height, width):
            return img
        shrinking = width < img.shape[1] and height < img.shape[0]
        return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    raise ValueError(f"fit must be one of {', '.join(FITS)}, not {fit!r}")


def light_wrap(
    com: np.ndarray, bgr: np.ndarray, pha: np.ndarray, amount: float, *, work: Workspace | None = None
) -> np.ndarray:
    """Let the new background's light spill over the person's edge, so a pasted person sits in it.

        com = light_wrap(com, bgr, pha, 0.5)   # (H, W, 3), (H, W, 3), (H, W) uint8 -> (H, W, 3) uint8

    A thin band just inside the edge, w = amount * pha * G*(1 - pha), is blended towards the blurred
    background G*bgr: out = (1 - w)*com + w*G*bgr. G is a Gaussian of ~1/90 of the shorter side
    (4 px at 360p). Where pha == 0, w == 0: the background is left exactly as it was; deep inside the
    person G*(1 - pha) is 0, so the person is untouched too. amount 0 returns com itself.
    """
    _check_frame(com, pha)
    if not 0 <= amount <= 1:
        raise ValueError(f"light wrap must be in 0..1, got {amount}")
    if amount == 0:
        return com
    work = work or Workspace()
    H, W = pha.shape
    sigma = max(1.0, min(H, W) / 90)
    scale = max(1.0, sigma / _LOWRES_SIGMA)  # blur at a size where sigma is ~3 px, as blur_background
    w, h = max(1, round(W / scale)), max(1, round(H / scale))
    s = sigma * w / W

    def soft(img: np.ndarray) -> np.ndarray:
        low = cv2.GaussianBlur(shrink(img, (w, h)), (0, 0), s)
        return cv2.resize(low, (W, H), interpolation=cv2.INTER_LINEAR)

    outside = soft(cv2.bitwise_not(pha, dst=work.get("inv", (H, W), np.uint8)))  # G*(1-pha), uint8
    wrap = cv2.multiply(pha, outside, scale=amount / 255)                          # w * 255, uint8
    keep = cv2.bitwise_not(wrap, dst=wrap)                                         # (1 - w) * 255
    return blend(com, soft(bgr), keep, work=work)


class Compositor:
    """Probability + frame -> composite, one call per frame.

        comp = Compositor(blur=21)                                    # blurred background
        comp = Compositor(background=ImageBackground.from_file(p))   # replaced background
        com, pha = comp(src, prob)   # src (H, W, 3) uint8 RGB, prob (h, w) float32 -> (H, W, 3), (H, W) uint8

    Steps: upsample_alpha (radius, eps) -> background(src, pha, index) -> blend -> light_wrap (if
    `light_wrap` > 0). `blur` is the strength of the default BlurBackground (see blur_sigma); it is
    unused when `background` is given.
    `index` is the 0-based frame number handed to the background (video backgrounds); by default the
    calls are counted. com and pha are new arrays every call, safe to queue for an encoder thread;
    scratch buffers are reused, so one Compositor per thread.
    """

    def __init__(
        self,
        *,
        blur: float = 21,
        background: Background | None = None,
        radius: int | None = None,
        eps: float = 1e-3,
        light_wrap: float = 0.0,
    ) -> None:
        if not 0 <= light_wrap <= 1:
            raise ValueError(f"light wrap must be in 0..1, got {light_wrap}")
        self.background = background if background is not None else BlurBackground(blur)
        self.radius = radius
        self.eps = eps
        self.light_wrap = light_wrap
        self._count = 0
        self._work = Workspace()

    def __call__(
        self, src: np.ndarray, prob: np.ndarray, *, index: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if index is None:
            index = self._count
        self._count = index + 1
        pha = upsample_alpha(prob, src, radius=self.radius, eps=self.eps, work=self._work)
        bgr = self.background(src, pha, index)
        com = blend(src, bgr, pha, work=self._work)
        if self.light_wrap:
            com = light_wrap(com, bgr, pha, self.light_wrap, work=self._work)
        return com, pha


def shrink(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """cv2.resize(img, size, INTER_AREA), faster: shrink(img, (w, h)).

    OpenCV's INTER_AREA is ~4x faster for integer ratios, so a large non-integer shrink
    (1920x1080 -> 256x144) first averages k x k blocks, k the largest common divisor of H and W
    not above the ratio, then does the small rest. Same box average up to rounding.
    """
    H, W = img.shape[:2]
    w, h = size
    ratio = min(W / w, H / h)
    k = max((d for d in range(1, int(ratio) + 1) if H % d == 0 and W % d == 0), default=1)
    if k > 1 and (W // k, H // k) != (w, h):
        img = cv2.resize(img, (W // k, H // k), interpolation=cv2.INTER_AREA)
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


def _check_frame(src: np.ndarray, pha: np.ndarray) -> None:
    if src.ndim != 3 or src.shape[2] != 3 or src.dtype != np.uint8:
        raise ValueError(f"src must be (H, W, 3) uint8, got {src.shape} {src.dtype}")
    if pha.shape != src.shape[:2] or pha.dtype != np.uint8:
        raise ValueError(f"pha must be {src.shape[:2]} uint8, got {pha.shape} {pha.dtype}")
