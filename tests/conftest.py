"""Shared fixtures: tiny synthetic videos, the real clips in ../shared/media, and a probe for results.

    def test_something(make_video, probe, tmp_path):
        src = make_video(tmp_path / "in.mp4", size=(64, 48), frames=12)   # H.264 + AAC sine tone
        facts = probe(src)                                                  # {"frames": 12, ...}

    @pytest.mark.media
    def test_real(media_dir):
        clip = media_dir / "carphone.mp4"   # skips when ../shared/media is absent
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

# Audio codec per output format when make_video is asked for audio.
AUDIO_CODEC = {"mpeg": "mp2", "mpegts": "mp2", "webm": "libopus", "matroska": "aac", "mp4": "aac", "mov": "aac"}
SAMPLE_RATE = 48000


def render(index: int, size: tuple[int, int], pattern: str = "square") -> np.ndarray:
    """Frame `index` of a synthetic clip: (h, w, 3) uint8, a coloured square moving over a texture.

    pattern "square" moves the square one step per frame; "still" keeps it in place (a static shot);
    "noise" is random pixels (large frames, for truncation tests).
    """
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    # Smooth gradients plus a soft checkerboard: texture for the encoder, nothing that aliases badly.
    bgr = np.stack(
        [
            64 + 96 * x / max(w - 1, 1),
            64 + 96 * y / max(h - 1, 1),
            128 + 48 * np.sign(np.sin(x / 4) * np.sin(y / 4)),
        ],
        axis=-1,
    )
    if pattern == "noise":  # incompressible: every frame is big, so a cut lands inside a picture
        return np.random.default_rng(index).integers(0, 256, (h, w, 3), dtype=np.uint8)
    if pattern not in ("square", "still"):
        raise ValueError(f"unknown pattern {pattern!r}: use 'square', 'still' or 'noise'")
    side = max(min(w, h) // 3, 2)
    step = 0 if pattern == "still" else index
    x0 = (w // 6 + 2 * step) % max(w - side, 1)
    y0 = (h // 6 + step) % max(h - side, 1)
    bgr[y0 : y0 + side, x0 : x0 + side] = (230, 40, 60)
    return bgr.astype(np.uint8)


def _make_video(
    path: str | Path,
    *,
    size: tuple[int, int] = (64, 48),
    frames: int = 12,
    fps: Fraction = Fraction(25),
    audio: bool = True,
    codec: str = "libx264",
    container: str | None = None,
    pattern: str = "square",
    audio_codec: str | None = None,
    rotation: int = 0,
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    gop: int | None = None,
) -> Path:
    """Write a synthetic clip and return its path.

    `container` is an FFmpeg format name (None: from the suffix). The audio is a 440 Hz tone as long as
    the video: AAC for mp4/mov/mkv, MP2 for mpg/ts, Opus for webm, or `audio_codec`. Extras beyond the
    contract: `rotation` writes a display matrix (counter-clockwise degrees, as FFmpeg's
    frame.rotation reads it back); `pts` with `time_base` writes variable-frame-rate timing; `gop`
    puts a keyframe every that many frames (x264 also keeps its B-frames).
    """
    path = Path(path)
    fps = Fraction(fps)
    with av.open(str(path), "w", format=container) as out:
        video = out.add_stream(codec, rate=fps)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        if gop is not None:
            video.codec_context.gop_size = gop
        if time_base is not None:
            video.codec_context.time_base = time_base
            video.time_base = time_base
        if rotation:
            video.set_display_rotation(rotation)
        sound = None
        if audio:
            name = audio_codec or AUDIO_CODEC.get(out.format.name.split(",")[0], "aac")
            sound = out.add_stream(name, rate=SAMPLE_RATE if name != "mp2" else 44100, layout="stereo")
        out.start_encoding()  # header now, so frames=0 still gives a (frameless) file
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(render(i, size, pattern), format="rgb24")
            frame.pts = pts[i] if pts is not None else i  # in the codec time base (1/fps unless given)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if sound is not None:
            rate = sound.rate
            n = round(frames / fps * rate)
            t = np.arange(n) / rate
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            samples = np.stack([tone, tone])  # planar stereo
            chunk = 1024
            for start in range(0, n, chunk):
                part = samples[:, start : start + chunk]
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(part), format="fltp", layout="stereo")
                frame.sample_rate = rate
                frame.pts = start
                frame.time_base = Fraction(1, rate)
                for packet in sound.encode(frame):
                    out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)
    return path


@pytest.fixture
def make_video() -> Callable[..., Path]:
    """make_video(path, *, size=(64, 48), frames=12, fps=Fraction(25), audio=True, codec="libx264",
    container=None, pattern="square") -> Path: a moving coloured square over a texture, with a tone."""
    return _make_video


@pytest.fixture
def media_dir() -> Path:
    """../shared/media next to the repo (the real test clips), or skip the test."""
    path = (Path(__file__).parents[1] / ".." / "shared" / "media").resolve()
    if not path.is_dir():
        pytest.skip("../shared/media not found: real-clip tests need the shared media folder")
    return path


def _atoms(path: Path) -> list[tuple[str, int]]:
    """Top-level boxes of an mp4/mov file as (type, offset), in file order."""
    boxes = []
    with open(path, "rb") as f:
        offset = 0
        while header := f.read(8):
            if len(header) < 8:
                break
            size, kind = int.from_bytes(header[:4], "big"), header[4:8].decode("latin-1")
            if size == 1:
                size = int.from_bytes(f.read(8), "big")
            elif size == 0:  # box runs to the end of the file
                boxes.append((kind, offset))
                break
            boxes.append((kind, offset))
            offset += size
            f.seek(offset)
    return boxes


def write_silence(container, stream, samples: int = 4800) -> None:
    """Encodes and muxes `samples` of mono silence into an open audio stream."""
    frame = av.AudioFrame.from_ndarray(np.zeros((1, samples), np.float32), format="fltp", layout="mono")
    frame.sample_rate, frame.pts = stream.rate, 0
    for packet in [*stream.encode(frame), *stream.encode()]:
        container.mux(packet)


def make_empty_video(path: str | Path) -> Path:
    """A file with a video stream that holds no frame, next to some audio (an mp4 would drop the
    empty track, so use .mkv)."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        write_silence(container, container.add_stream("aac", rate=48000, layout="mono"))
    return Path(path)


def _probe(path: str | Path) -> dict:
    """Facts about a media file, decoded for real:

    format, width, height, rotation (frame.rotation, counter-clockwise), fps (Fraction), time_base,
    frames (decoded), pts (list), duration (s, video), first_rgb; audio: one dict per stream with codec,
    rate, channels, packets (count), hashes (md5 of each packet's bytes), samples (decoded) and
    duration (s, decoded samples / rate); atoms: top-level mp4 boxes as [(type, offset)].
    """
    path = Path(path)
    facts: dict = {}
    with av.open(str(path)) as c:
        facts["format"] = c.format.name
        v = c.streams.video[0]
        facts["fps"] = Fraction(v.average_rate) if v.average_rate else None
        facts["time_base"] = Fraction(v.time_base)
        pts, first = [], None
        for frame in c.decode(v):
            if first is None:
                first = frame
                facts["first_rgb"] = frame.to_ndarray(format="rgb24")
            pts.append(frame.pts)
        facts["frames"] = len(pts)
        facts["pts"] = pts
        facts["width"], facts["height"] = (first.width, first.height) if first else (v.width, v.height)
        facts["rotation"] = first.rotation if first else 0
        facts["duration"] = float(v.duration * v.time_base) if v.duration else None
    audio = []
    with av.open(str(path)) as c:
        for a in c.streams.audio:
            hashes = [hashlib.md5(bytes(p)).hexdigest() for p in c.demux(a) if p.size]
            audio.append({"codec": a.codec_context.codec.canonical_name, "rate": a.rate,
                          "channels": a.channels, "packets": len(hashes), "hashes": hashes})
    for i, facts_a in enumerate(audio):  # one pass per stream: decoding one runs the file to its end
        with av.open(str(path)) as c:
            a = c.streams.audio[i]
            samples = sum(frame.samples for frame in c.decode(a))
        facts_a["samples"] = samples
        facts_a["duration"] = samples / facts_a["rate"]
    facts["audio"] = audio
    facts["atoms"] = _atoms(path) if facts["format"].startswith("mov") else []
    return facts


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A randomly initialised U-Net at a tiny working size, saved as safetensors + JSON."""
    from helpers import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture
def probe() -> Callable[[str | Path], dict]:
    """probe(path) -> dict of stream facts (see _probe) for end-to-end checks."""
    return _probe
