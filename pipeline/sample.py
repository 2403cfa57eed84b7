"""The demo clip: a person moving in front of a background, made here from material we may ship.

    from pipeline.sample import make_sample
    make_sample(Path("data/sample.mp4"))            # or: python -m pipeline.sample data/sample.mp4

The person is NASA's portrait of astronaut Eileen Collins (1999, public domain as a work of the US
government), as carried by scikit-image (`skimage.data.astronaut()`, 512x512). The photo slowly zooms
and pans (Ken Burns) and sways sideways over a static, textured backdrop, so the person moves against
the background. The sound is a 440 Hz tone with a gentle envelope. Video: H.264 yuv420p; audio: AAC;
container: MP4. scikit-image is only needed here: `pip install scikit-image`.
"""

import argparse
import math
import os
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from pipeline.errors import BlurvidError, OutputError

AUDIO_RATE = 48000  # Hz
TONE_HZ = 440.0
FADE_S = 0.25  # fade in/out, so the tone starts and stops without a click


def _astronaut() -> np.ndarray:
    """The public-domain astronaut photo, (512, 512, 3) RGB uint8."""
    try:
        from skimage import data  # optional dependency: only the demo clip needs it
    except ImportError as e:
        raise BlurvidError("the demo clip needs scikit-image: pip install scikit-image") from e
    return data.astronaut()


def backdrop(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A static, textured, coloured backdrop (h, w, 3) RGB uint8: soft colour blobs + tiles + grain.

    Texture matters: a flat backdrop would look the same blurred or not.
    """
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    img[:] = (0.18, 0.22, 0.30)  # dusk blue
    for _ in range(6):  # soft pools of coloured light, each pulling the wall towards its colour
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.15, 0.35) * w
        colour = cv2.cvtColor(np.uint8([[[rng.integers(0, 180), 200, 230]]]), cv2.COLOR_HSV2RGB)[0, 0] / 255
        k = 0.8 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
        img = img * (1 - k) + colour * k
    # a wall of tiles whose lines a blur smears out: easy to see whether the background is blurred
    tile = max(8, w // 20)
    lines = ((xx % tile) < 2) | ((yy % tile) < 2)
    img[lines] *= 0.55
    img += rng.normal(0, 0.03, (h, w, 1)).astype(np.float32)  # fine grain
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _place(t: float, size: tuple[int, int], photo_hw: tuple[int, int]) -> np.ndarray:
    """2x3 affine matrix that puts the photo in the frame at time fraction `t` in [0, 1]."""
    w, h = size
    ph, pw = photo_hw
    zoom = (0.80 + 0.15 * t) * h / ph  # Ken Burns: from 80 % to 95 % of the frame height
    sway = 0.12 * w * math.sin(2 * math.pi * t)  # one slow sideways swing
    pan = 0.06 * w * (t - 0.5)  # drift left to right
    cx, cy = w / 2 + sway + pan, h - zoom * ph / 2  # centred, standing on the bottom edge
    return np.float32([[zoom, 0, cx - zoom * pw / 2], [0, zoom, cy - zoom * ph / 2]])


def render_frame(photo: np.ndarray, bgr: np.ndarray, t: float) -> np.ndarray:
    """Frame at time fraction `t`: the photo warped over backdrop `bgr`, (h, w, 3) RGB uint8."""
    h, w = bgr.shape[:2]
    mat = _place(t, (w, h), photo.shape[:2])
    src = cv2.warpAffine(photo, mat, (w, h), flags=cv2.INTER_AREA if mat[0, 0] < 1 else cv2.INTER_LINEAR)
    # warping a solid mask the same way gives anti-aliased, sub-pixel edges, so motion stays smooth
    pha = cv2.warpAffine(np.full(photo.shape[:2], 255, np.uint8), mat, (w, h), flags=cv2.INTER_LINEAR)
    pha = pha[..., None].astype(np.uint16)
    com = (src.astype(np.uint16) * pha + bgr.astype(np.uint16) * (255 - pha) + 127) // 255
    return com.astype(np.uint8)


def tone(seconds: float, rate: int = AUDIO_RATE) -> np.ndarray:
    """A 440 Hz sine with fade in/out and a slow swell, (samples,) float32 in [-0.5, 0.5]."""
    n = round(seconds * rate)
    t = np.arange(n) / rate
    env = np.minimum(1.0, np.minimum(t, seconds - t) / FADE_S).clip(0, 1)
    env *= 0.8 + 0.2 * np.sin(2 * np.pi * 0.5 * t)  # gentle swell, so it is not a test signal
    return (0.4 * env * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


def make_sample(
    path: Path, *, seconds: float = 4.0, size: tuple[int, int] = (640, 360), fps: int | Fraction = 25
) -> Path:
    """Write the demo clip to `path` (MP4: H.264 yuv420p, size (w, h), `fps`; AAC tone); return `path`.

    It has round(seconds * fps) frames. Replaces an existing file; written under a temporary name first.
    """
    path = Path(path)
    w, h = size
    if w <= 0 or h <= 0 or w % 2 or h % 2:
        raise ValueError(f"size must be positive and even for yuv420p, got {w}x{h}")
    if seconds <= 0 or fps <= 0:
        raise ValueError(f"seconds and fps must be > 0, got {seconds}, {fps}")
    fps = Fraction(fps).limit_denominator(1001)
    frames = round(seconds * fps)
    photo, bgr = _astronaut(), backdrop((w, h))
    sound = tone(seconds)

    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            vst = out.add_stream("libx264", rate=fps, options={"crf": "20", "preset": "veryfast"})
            vst.width, vst.height, vst.pix_fmt = w, h, "yuv420p"
            ast = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
            for i in range(frames):
                frm = av.VideoFrame.from_ndarray(render_frame(photo, bgr, i / max(frames - 1, 1)), format="rgb24")
                frm.pts = i
                out.mux(vst.encode(frm))
            out.mux(vst.encode())
            step = ast.codec_context.frame_size or 1024  # AAC takes fixed-size frames
            for start in range(0, len(sound), step):
                chunk = sound[start : start + step]
                afr = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                afr.sample_rate, afr.pts = AUDIO_RATE, start
                out.mux(ast.encode(afr))
            out.mux(ast.encode())
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror or e})") from e
    finally:
        tmp.unlink(missing_ok=True)
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.sample OUT.mp4 [--seconds 4] [--size 640x360] [--fps 25]`"""
    ap = argparse.ArgumentParser(prog="python -m pipeline.sample", description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="where to write the clip, e.g. data/sample.mp4")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--size", default="640x360", help="WxH, both even (default 640x360)")
    ap.add_argument("--fps", type=Fraction, default=Fraction(25))
    args = ap.parse_args(argv)
    try:
        size = tuple(int(v) for v in args.size.lower().split("x"))
        if len(size) != 2:
            raise ValueError
    except ValueError:
        ap.error(f"--size must look like 640x360, got {args.size!r}")
    try:
        print(make_sample(args.out, seconds=args.seconds, size=size, fps=args.fps))
    except ValueError as e:
        ap.error(str(e))
    except BlurvidError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
