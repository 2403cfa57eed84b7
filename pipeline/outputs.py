"""Extra outputs of `blurvid process` beside the main mp4: the person with alpha, and the matte.

    with open_alpha_output(Path("person.mov"), info) as out:     # .mov | .webm | folder of PNGs
        out.write(frame.rgb, pha, frame.pts)                     # (H, W, 3) uint8 RGB, (H, W) uint8
    with open_matte_output(Path("matte.mp4"), info) as out:
        out.write(frame.rgb, pha, frame.pts)                     # the alpha as a grey H.264 video

The alpha outputs hold the source frame with the compositor's alpha (straight, not premultiplied),
ready to lay over any background in an editor. The format follows the name:

    .mov    ProRes 4444 (prores_ks, yuva444p10le): near-lossless alpha; big files; edits well
    .webm   VP9 with alpha (libvpx-vp9, yuva420p): small files; browsers play it transparent
    folder  (no suffix, or an existing folder) one RGBA PNG per frame, 000000.png, 000001.png, ...

MP4 (H.264) cannot hold alpha: asking for it is an OutputError naming these. Every output is written
under a temporary name and renamed when complete, like the main output (video.atomic_output). They
carry no audio: the sound is in the main output.

Reading VP9 alpha back: FFmpeg keeps VP9's alpha in a side stream (matroska BlockAdditional) that
its native `vp9` decoder ignores (frames come out yuv420p, opaque). The `libvpx-vp9` decoder reads it
(frames come out yuva420p): see decode_alpha.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import av
import av.error
import cv2
import numpy as np

from pipeline.errors import OutputError
from pipeline.video import VideoInfo, VideoWriter, atomic_output

# suffix -> (encoder, pixel format, encoder options)
ALPHA_FORMATS: dict[str, tuple[str, str, dict[str, str]]] = {
    ".mov": ("prores_ks", "yuva444p10le", {"profile": "4444", "vendor": "apl0"}),
    # constant quality (b=0 + crf); row-mt/cpu-used: libvpx's slow defaults would dominate the run
    ".webm": ("libvpx-vp9", "yuva420p", {"crf": "24", "b": "0", "row-mt": "1", "cpu-used": "5",
                                         "deadline": "good"}),
}
PNG_SEQUENCE = "folder"


def alpha_format(path: Path) -> str:
    """'.mov', '.webm' or 'folder' for an --output-alpha path; OutputError for a format without alpha."""
    suffix = path.suffix.lower()
    if suffix in ALPHA_FORMATS:
        return suffix
    if not suffix or path.is_dir():
        return PNG_SEQUENCE
    raise OutputError(f"{path}: {suffix} cannot hold transparency; use .mov (ProRes 4444), .webm (VP9) "
                      "or a folder name (PNG sequence)")


class _Timing:
    """Source pts -> output pts from 0, always increasing (as VideoWriter; no audio to align to)."""

    def __init__(self, info: VideoInfo):
        self.info, self.count, self.t0, self.last = info, 0, None, None

    def __call__(self, pts: int | None) -> int:
        time = pts * self.info.time_base if pts is not None else self.count / self.info.fps
        self.t0 = time if self.t0 is None else self.t0
        out = math.floor((time - self.t0) / self.info.time_base)
        if self.last is not None and out <= self.last:
            out = self.last + 1
        self.last, self.count = out, self.count + 1
        return out


class AlphaVideoWriter:
    """RGB + alpha into a .mov (ProRes 4444) or .webm (VP9); see the module docstring."""

    def __init__(self, path: Path, info: VideoInfo, suffix: str, *, size: tuple[int, int] | None = None):
        codec, pix_fmt, options = ALPHA_FORMATS[suffix]
        w, h = size or (info.width, info.height)
        self.path, self.pix_fmt, self._timing = path, pix_fmt, _Timing(info)
        try:
            self._container = av.open(str(path), "w", format="mov" if suffix == ".mov" else "webm")
            self._stream = self._container.add_stream(codec, rate=info.fps, options=options)
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise OutputError(f"{path}: cannot write a video here ({e})") from e
        self._stream.width, self._stream.height = w + w % 2, h + h % 2
        self._stream.pix_fmt = pix_fmt
        self._written = False
        self._stream.codec_context.time_base = self._stream.time_base = info.time_base

    def write(self, rgb: np.ndarray, pha: np.ndarray, pts: int | None = None) -> None:
        rgba = _even(np.dstack([rgb, pha]))
        if rgba.shape[:2] != (self._stream.height, self._stream.width):
            raise ValueError(f"frame is {rgb.shape[1]}x{rgb.shape[0]}, the output "
                             f"{self._stream.width}x{self._stream.height}")
        frame = av.VideoFrame.from_ndarray(rgba, format="rgba").reformat(format=self.pix_fmt)
        frame.pts = self._timing(pts)
        frame.time_base = self._stream.codec_context.time_base
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self._written = True

    def close(self, flush: bool = True) -> None:
        try:
            if flush and self._written:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
        finally:
            self._container.close()


class PngSequenceWriter:
    """RGB + alpha as one RGBA PNG per frame in a folder: 000000.png, 000001.png, ..."""

    def __init__(self, folder: Path):
        self.folder, self.count = folder, 0

    def write(self, rgb: np.ndarray, pha: np.ndarray, pts: int | None = None) -> None:
        bgra = np.dstack([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), pha])
        path = self.folder / f"{self.count:06d}.png"
        # compression 1: ~3x faster than the default 3, files ~10 % bigger
        if not cv2.imwrite(str(path), bgra, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
            raise OutputError(f"{path}: cannot write the PNG")
        self.count += 1

    def close(self, flush: bool = True) -> None:
        pass


@contextmanager
def open_alpha_output(path: str | Path, info: VideoInfo, *, size: tuple[int, int] | None = None,
                      overwrite: bool = False) -> Iterator[AlphaVideoWriter | PngSequenceWriter]:
    """A writer of RGB + alpha frames for `path` (format from its name), renamed into place on success."""
    path = Path(path)
    kind = alpha_format(path)
    if kind == PNG_SEQUENCE:
        with _atomic_folder(path, overwrite=overwrite) as tmp:
            yield PngSequenceWriter(tmp)
        return
    with atomic_output(path, overwrite=overwrite) as tmp:
        writer = AlphaVideoWriter(tmp, info, kind, size=size)
        try:
            yield writer
        except BaseException:
            writer.close(flush=False)
            raise
        writer.close()


class MatteWriter:
    """The alpha as a grey H.264 mp4 (yuv420p, limited range: grey levels come back within ~2)."""

    def __init__(self, writer: VideoWriter):
        self._writer = writer

    def write(self, rgb: np.ndarray, pha: np.ndarray, pts: int | None = None) -> None:
        self._writer.write(cv2.cvtColor(pha, cv2.COLOR_GRAY2RGB), pts)


@contextmanager
def open_matte_output(path: str | Path, info: VideoInfo, *, size: tuple[int, int] | None = None,
                      crf: int = 20, preset: str = "veryfast", overwrite: bool = False
                      ) -> Iterator[MatteWriter]:
    """A writer of the matte (the soft mask) as a greyscale H.264 video, renamed into place on success."""
    path = Path(path)
    if path.suffix.lower() not in (".mp4", ".mov", ".m4v", ".mkv"):
        raise OutputError(f"{path}: the matte is an H.264 video; name it .mp4, .mov or .mkv")
    with atomic_output(path, overwrite=overwrite) as tmp, \
            VideoWriter(tmp, info, size=size, crf=crf, preset=preset) as writer:
        yield MatteWriter(writer)


def decode_alpha(path: str | Path) -> Iterator[np.ndarray]:
    """The frames of an alpha output as (H, W, 4) uint8 RGBA: .mov, .webm (libvpx) or a PNG folder."""
    path = Path(path)
    if path.is_dir():
        for png in sorted(path.glob("*.png")):
            yield cv2.cvtColor(cv2.imread(str(png), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
        return
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.codec_context.name == "vp9":   # the native decoder drops the alpha: see module docstring
            decoder = av.CodecContext.create("libvpx-vp9", "r")
            for packet in container.demux(stream):
                for frame in decoder.decode(packet):   # demux ends with the empty packet that flushes
                    yield frame.to_ndarray(format="rgba")
        else:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgba")


def _even(img: np.ndarray) -> np.ndarray:
    """Pad to an even width and height with a copy of the edge (4:2:0 needs it), as VideoWriter does."""
    h, w = img.shape[:2]
    if h % 2 or w % 2:
        img = cv2.copyMakeBorder(img, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(img)


@contextmanager
def _atomic_folder(path: Path, *, overwrite: bool) -> Iterator[Path]:
    """Fill a temporary folder beside `path`; it replaces `path` only on success (cf. atomic_output)."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: is a file; a PNG sequence needs a folder name")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise OutputError(f"{path}: folder exists and is not empty (pass overwrite to replace it)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    except OSError as e:
        raise OutputError(f"{path.parent}: cannot write to this folder ({e.strerror})") from e
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

