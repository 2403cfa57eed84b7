"""Read and write video files: upright RGB frames in, H.264 mp4 with the source's audio out.

    with VideoReader("in.mp4") as src, atomic_output(Path("out.mp4")) as tmp:
        with VideoWriter(tmp, src.info, audio_from="in.mp4") as dst:
            for frame in src:                       # Frame: index, pts, time, rgb (H, W, 3) uint8
                dst.write(frame.rgb, pts=frame.pts) # keeps the source timing, also for VFR input

The reader takes anything FFmpeg reads (mp4, mkv, mpg, mov, webm), turns rotated phone video upright
and raises InputError instead of silently losing frames. The writer encodes libx264/yuv420p with
`+faststart` and copies every audio stream packet for packet (re-encoding to AAC only where the
output container cannot hold the codec). Both wrap PyAV (FFmpeg); the GIL is released while it works.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import cv2
import numpy as np
from av.video.reformatter import ColorRange, Colorspace

from pipeline.errors import InputError, OutputError

# A stream whose decoded frames cover less than this share of what the container declares (frame count
# or duration) was cut short: a truncated download or copy. Real files decode all their frames, and the
# slack covers frames an edit list hides and containers whose duration is set by a longer audio track.
TRUNCATED_BELOW = 0.9

# Audio codecs copied as they are into an mp4: they have an ISO-BMFF mapping that players know.
# (FFmpeg will also put PCM and Vorbis in mp4, but few players read those, so they become AAC.)
# MP2 is stored with MPEG-1 audio's object type, so FFmpeg reads it back as "mp3": same packets,
# decoded by the mp3 decoder (which decodes layer II too) to the same sound.
COPY_AUDIO = frozenset({"aac", "mp3", "mp2", "ac3", "eac3", "alac", "flac", "opus"})

AAC_LAYOUT = {1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1", 8: "7.1"}


@dataclass(frozen=True)
class VideoInfo:
    width: int  # displayed width (after rotation, before any resize)
    height: int
    fps: Fraction  # exact average rate, e.g. Fraction(30000, 1001)
    time_base: Fraction  # of the video stream
    frames: int | None  # frame count if known or estimated (for progress bars)
    duration: float | None  # seconds
    rotation: int  # degrees the reader turns frames clockwise (0/90/180/270), as the old `rotate` tag
    audio_streams: int  # number of audio streams


@dataclass
class Frame:
    index: int  # 0-based decode order
    pts: int | None  # source pts in info.time_base (kept for VFR)
    time: float  # seconds
    rgb: np.ndarray  # (H, W, 3) uint8, upright (rotation applied), C-contiguous


@dataclass(frozen=True)
class Span:
    """A stretch of a video read and written on its own, placed so that the pieces join into exactly
    what one pass over the whole video writes (pipeline.chunks plans them).

    The reader seeks to `seek` and yields the frames whose pts lie in [start, end), numbered from
    `first_index`; the writer writes them on the whole output's clock (`t0`, `grid`).
    """

    start: int                          # pts of the first frame (a keyframe), in the stream's time base
    end: int | None                     # pts of the first frame after the span; None: to the end
    seek: int | None                    # where to seek for `start` (its keyframe's dts); None: read from the top
    first_index: int                    # the number of the first frame in the whole video
    t0: Fraction                        # source time the whole output starts at (written as 0)
    grid: tuple[int, Fraction] | None   # the writer's frame grid before the first frame (snap_to_grid)


def snap_to_grid(grid: tuple[int, Fraction] | None, n: int, time: Fraction, fps: Fraction,
                 tick: Fraction) -> tuple[Fraction, tuple[int, Fraction]]:
    """Frame n at source `time` put back on the constant-rate grid when within one `tick` of it.

    Returns (time, grid): the grid (frame number, time) counts from the last frame found off it, so
    rounded CFR timestamps come out exact and variable-rate ones are kept as they are.
    """
    if grid is not None:
        on_grid = grid[1] + (n - grid[0]) / fps
        if abs(time - on_grid) < tick:
            return on_grid, grid
    return time, (n, time)


def rotate(rgb: np.ndarray, degrees: int) -> np.ndarray:
    """Turn an image clockwise by 0/90/180/270 degrees: `upright = rotate(rgb, info.rotation)`."""
    code = {0: None, 90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
    if degrees not in code:
        raise ValueError(f"rotation must be 0, 90, 180 or 270, not {degrees}")
    return rgb if code[degrees] is None else cv2.rotate(rgb, code[degrees])


def _clockwise(ccw: float) -> int:
    # FFmpeg's display matrix angle is counter-clockwise (frame.rotation, -180..180); phones write
    # -90 for "turn 90° clockwise to view". Odd angles snap to the nearest quarter turn.
    return int(round(-ccw / 90)) % 4 * 90


def _parse_duration(text: str | None) -> float | None:
    """'00:00:02.600000000' (matroska's DURATION tag) -> 2.6 s; None when absent or malformed."""
    try:
        h, m, sec = (text or "").split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec) or None
    except ValueError:
        return None


def _reason(e: av.error.FFmpegError) -> str:
    return (e.strerror or str(e)).rstrip(".").lower()


def open_input(path: Path):
    """av.open for reading; InputError with FFmpeg's reason if it cannot be read."""
    try:
        return av.open(str(path), metadata_errors="replace")
    except av.error.FFmpegError as e:
        raise InputError(f"{path}: not a video FFmpeg can read, or cut short ({_reason(e)})") from e


def video_stream(container, path: Path):
    """The container's first real video stream; InputError if it has none."""
    # Cover art in mp4/mkv is a one-picture "video" stream: skip it.
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        raise InputError(f"{path}: has no video stream")
    return streams[0]


class VideoReader:
    """Decode a video file into upright RGB frames.

        with VideoReader("in.mkv") as src:
            print(src.info.width, src.info.height, src.info.fps, src.info.frames)
            for frame in src:
                use(frame.rgb)      # (H, W, 3) uint8, frame.pts in src.info.time_base

    Raises InputError when the file is missing, not a video, has no decodable frames, or is corrupt or
    truncated (also in the middle of iterating: frames are never dropped silently). With `span`, only
    that stretch is read (from its keyframe on), frames numbered as in the whole video.
    """

    def __init__(self, path: str | Path, *, threads: int = 0, span: Span | None = None):
        self.path = Path(path)
        self.span = span
        if not self.path.exists():
            raise InputError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise InputError(f"{self.path}: is a folder, not a video file")
        self._container = open_input(self.path)
        try:
            self._open(threads)
        except BaseException:
            self.close()
            raise

    def _open(self, threads: int) -> None:
        container = self._container
        self._stream = stream = video_stream(container, self.path)
        stream.thread_type = "AUTO"  # frame + slice threads
        stream.codec_context.thread_count = threads  # 0: one per core

        # Rate: average_rate is frames/duration (exact for CFR, the mean for VFR); the others are guesses.
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate or Fraction(25)
        fps = Fraction(fps)
        time_base = Fraction(stream.time_base) if stream.time_base else 1 / fps
        # Durations, best first: an indexed stream's own (mp4, mov); the DURATION tag FFmpeg writes per
        # stream in mkv/webm; the container's (mkv header; for mpg/ts an estimate from the file's end).
        tagged = _parse_duration(stream.metadata.get("DURATION"))
        header = container.duration / av.time_base if container.duration else None
        if stream.frames and stream.duration:
            duration = float(stream.duration * time_base)
        else:
            duration = tagged or header or (float(stream.duration * time_base) if stream.duration else None)
        frames = stream.frames or (round(duration * fps) if duration else None) or None
        # What a complete file must reach (see _decode). A matroska header holds the segment duration;
        # an mpg/ts has none (its "duration" is read from the end of what is there).
        if "matroska" in container.format.name:
            self._declared = (None, tagged or header)
        else:
            self._declared = (stream.frames or None, float(stream.duration * time_base) if stream.frames else None)

        span = self.span
        if span is not None:
            self._declared = (None, self._declared[1])   # frames are counted from the span's start
            try:
                if span.seek is not None:
                    container.seek(span.seek, stream=stream, backward=True, any_frame=False)
            except av.error.FFmpegError as e:
                raise InputError(f"{self.path}: cannot seek to pts {span.start} ({_reason(e)})") from e

        # The rotation is side data on the decoded frames, so decode the first one now. That also
        # proves the file decodes before anyone creates an output for it.
        self._decoded = self._decode()
        first = next(self._decoded, None)
        if first is None:
            raise InputError(f"{self.path}: no video frames could be decoded")
        if span is not None and first.pts != span.start:
            raise InputError(f"{self.path}: seeking for the frame at pts {span.start} found pts {first.pts}; "
                             "this file cannot be processed in chunks")
        self._first: av.VideoFrame | None = first
        rotation = _clockwise(first.rotation)
        width, height = first.width, first.height
        if rotation in (90, 270):
            width, height = height, width
        self.info = VideoInfo(
            width=width,
            height=height,
            fps=fps,
            time_base=time_base,
            frames=frames,
            duration=duration,
            rotation=rotation,
            audio_streams=len(container.streams.audio),
        )

    def _decode(self) -> Iterator[av.VideoFrame]:
        index = 0
        end = None  # time of the last decoded frame
        try:
            span = self.span
            for packet in self._container.demux(self._stream):
                # A packet cut off by the end of the file (mp4 with moov in front) is flagged corrupt.
                if packet.is_corrupt:
                    raise InputError(f"{self.path}: corrupt or truncated video data at frame {index}")
                for frame in packet.decode():
                    if span is not None and frame.pts is not None:
                        if frame.pts < span.start:   # the span before (an open GOP's leading frames)
                            continue
                        if span.end is not None and frame.pts >= span.end:
                            return
                    # Decoders conceal damaged pictures and flag them (e.g. the last frame of a cut mpg).
                    if frame.is_corrupt:
                        raise InputError(f"{self.path}: corrupt video frame {index}")
                    end = frame.time if frame.time is not None else end
                    index += 1
                    yield frame
        except av.error.FFmpegError as e:
            raise InputError(f"{self.path}: cannot decode video frame {index} ({_reason(e)})") from e
        if index == 0:
            return
        # Cut files mostly decode without any error: FFmpeg stops at the end of the data. Compare what
        # came out with what the container declares (sample count for mp4/mov; duration in the header
        # for mkv/webm). An mpg/ts has no header to compare with: there only a damaged last frame tells.
        declared_frames, declared_duration = self._declared
        if declared_frames and index < TRUNCATED_BELOW * declared_frames:
            raise InputError(
                f"{self.path}: truncated: decoded {index} of the {declared_frames} video frames it declares"
            )
        if declared_duration and end is not None:
            covered = end + float(1 / self.info.fps)  # end of the last frame, as the header counts it
            if covered < TRUNCATED_BELOW * declared_duration:
                raise InputError(
                    f"{self.path}: truncated: video ends at {covered:.2f} s of the {declared_duration:.2f} s"
                    " it declares"
                )

    def __iter__(self) -> Iterator[Frame]:
        fps = self.info.fps
        for index, frame in enumerate(self._frames(), start=self.span.first_index if self.span else 0):
            rgb = rotate(np.ascontiguousarray(frame.to_ndarray(format="rgb24")), self.info.rotation)
            time = frame.time if frame.time is not None else float(index / fps)
            yield Frame(index=index, pts=frame.pts, time=time, rgb=rgb)

    def _frames(self) -> Iterator[av.VideoFrame]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        yield from self._decoded

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VideoWriter:
    """Encode RGB frames to H.264 (yuv420p) with the audio of another file, e.g. the input.

        with VideoWriter("out.mp4", src.info, crf=20, audio_from="in.mp4") as dst:
            dst.write(rgb, pts=frame.pts)   # pts in src.info.time_base; None numbers frames 0, 1, 2...

    Output size is `size` (w, h) or the info size; frames of another size are resized. yuv420p needs
    an even width and height: an odd one gets one more pixel row/column, a copy of the edge, so no
    source pixel is lost or resampled (`dst.size` is the size written). Audio streams are copied
    packet for packet and interleaved with the video by time (AudioCopy). Timestamps are shifted so
    the file starts at 0 (as ffmpeg does), keeping audio and video where they were relative to each
    other. With `span`, the frames are a stretch of a longer video, timed as in the whole output.
    """

    def __init__(
        self,
        path: str | Path,
        info: VideoInfo,
        *,
        size: tuple[int, int] | None = None,
        crf: int = 20,
        preset: str = "veryfast",
        audio_from: str | Path | None = None,
        threads: int = 0,
        span: Span | None = None,
    ):
        self.path = Path(path)
        self.info = info
        w, h = size or (info.width, info.height)
        self._target = (w, h)  # frames are resized to this, then padded to even
        self.size = (w + w % 2, h + h % 2)
        self._audio: AudioCopy | None = None
        self._container = None
        options = {"movflags": "+faststart"} if self.path.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
        try:
            self._container = av.open(str(self.path), "w", container_options=options)
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise OutputError(f"{self.path}: cannot write a video here ({e})") from e
        try:
            self._add_video(crf, preset, threads)
            if audio_from is not None:
                self._audio = AudioCopy(self._container, Path(audio_from))
            # PyAV opens the file and writes the header lazily; do it now so a bad path fails here.
            try:
                self._container.start_encoding()
            except (av.error.FFmpegError, OSError) as e:
                raise OutputError(f"{self.path}: cannot write a video here ({e})") from e
        except BaseException:
            self._close_files()
            raise
        self._t0: Fraction | None = span.t0 if span else None  # source time written as 0
        self._last_pts: int | None = None
        self._grid = span.grid if span else None  # (frame number, source time) the grid counts from
        self._count = span.first_index if span else 0  # frame number in the whole video

    def _add_video(self, crf: int, preset: str, threads: int) -> None:
        info = self.info
        stream = self._container.add_stream("libx264", rate=info.fps, options={"crf": str(crf), "preset": preset})
        stream.width, stream.height = self.size
        stream.pix_fmt = "yuv420p"
        # Output clock: fine enough for both the source's ticks and the exact frame grid 1/fps, e.g.
        # 1/3000 for 30 fps mkv (1 ms ticks), so rounded CFR timestamps can be written exactly.
        tb = Fraction(1, math.lcm(info.time_base.denominator, (1 / info.fps).denominator))
        self._time_base = tb if tb.denominator <= 10**6 else info.time_base
        stream.time_base = stream.codec_context.time_base = self._time_base
        stream.codec_context.thread_count = threads
        # Players assume BT.709 for HD and BT.601 for SD when a file is untagged: convert with that matrix
        # and also say so in the stream, so tag-aware and tag-blind players show the same colours.
        hd = self.size[1] >= 720
        self._colorspace = Colorspace.ITU709 if hd else Colorspace.SMPTE170M
        cc = stream.codec_context
        cc.colorspace = cc.color_primaries = cc.color_trc = 1 if hd else 6  # AVCOL_*_BT709 / SMPTE170M
        cc.color_range = 1  # limited ("tv") range
        self._video = stream

    def write(self, rgb: np.ndarray, pts: int | None = None) -> None:
        """Encode one (H, W, 3) uint8 RGB frame; `pts` in info.time_base keeps the source's timing."""
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB array, got {rgb.dtype} {rgb.shape}")
        w, h = self._target
        if rgb.shape[:2] != (h, w):
            shrink = w < rgb.shape[1] and h < rgb.shape[0]
            rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        if (w, h) != self.size:
            rgb = cv2.copyMakeBorder(rgb, 0, self.size[1] - h, 0, self.size[0] - w, cv2.BORDER_REPLICATE)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame = frame.reformat(format="yuv420p", dst_colorspace=self._colorspace, dst_color_range=ColorRange.MPEG)
        frame.pts = self._video_pts(pts)
        self._mux_video(self._video.encode(frame))
        self._count += 1

    def _video_pts(self, pts: int | None) -> int:
        tb, n = self.info.time_base, self._count
        time = pts * tb if pts is not None else n / self.info.fps  # no source timing: frame n at n / fps
        # Containers with coarse clocks round a constant rate (mkv: 33, 67, 100 ms at 30 fps). A frame
        # within one tick of the grid is put back on it, so the output's rate is exactly info.fps;
        # a frame off the grid (variable frame rate) keeps its time and restarts the grid there.
        time, self._grid = snap_to_grid(self._grid, n, time, self.info.fps, tb)
        if self._t0 is None:
            self._t0 = min(time, self._audio.start) if self._audio and self._audio.tracks else time
        out = math.floor((time - self._t0) / self._time_base)
        # The encoder refuses a pts that does not increase; broken files repeat one now and then.
        # Moving the frame one tick later keeps every frame (and the sync) instead of failing.
        if self._last_pts is not None and out <= self._last_pts:
            out = self._last_pts + 1
        self._last_pts = out
        return out

    def _mux_video(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            if packet.dts is not None:
                self._mux_audio_until(packet.dts * packet.time_base)
            self._container.mux(packet)

    def _mux_audio_until(self, time: Fraction | None) -> None:
        """Mux source audio packets up to output time `time` (all that is left when None)."""
        if not (self._audio and self._audio.tracks):
            return
        if self._t0 is None:  # no video frame written: keep the audio's own start
            self._t0 = self._audio.start
        self._audio.mux_until(time, self._t0)

    def close(self) -> None:
        """Flush the encoder, mux the remaining audio and finish the file (moov moved to the front)."""
        if self._container is None:
            return
        try:
            self._mux_video(self._video.encode(None))
            self._mux_audio_until(None)
            if self._audio and self._audio.tracks:
                self._audio.flush(self._t0)
        finally:
            self._close_files()

    def _close_files(self) -> None:
        container, self._container = self._container, None
        try:
            if container is not None:
                container.close()
        finally:
            if self._audio is not None:
                self._audio.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:  # the file is being thrown away (atomic_output deletes it): close without flushing
            self._close_files()


class AudioCopy:
    """The audio streams of a file muxed into an output in time order, beside video muxed by the caller.

        audio = AudioCopy(container, Path("in.mp4"))   # adds the streams: before the header is written
        audio.mux_until(time, t0)   # every packet up to output time `time` (None: all that is left)
        audio.flush(t0)             # what re-encoders still hold
        audio.close()

    Packets are copied byte for byte, or re-encoded to AAC where the container cannot hold the codec.
    Timestamps move by t0, the source time written as output time 0 (the same shift as the video).
    """

    def __init__(self, container: av.container.OutputContainer, path: Path):
        self._container = container
        try:
            self._src = av.open(str(path), metadata_errors="replace")
        except av.error.FFmpegError as e:
            raise InputError(f"{path}: cannot read its audio ({_reason(e)})") from e
        try:
            self.tracks = self._add_streams()
        except BaseException:
            self.close()
            raise
        self._packets = self._src.demux([t.src for t in self.tracks]) if self.tracks else iter(())
        self._by_index = {t.src.index: t for t in self.tracks}
        self._next: tuple[Fraction, _AudioTrack, av.Packet] | None = None

    def _add_streams(self) -> list[_AudioTrack]:
        supported = self._container.supported_codecs
        tracks = []
        for src in self._src.streams.audio:
            codec = src.codec_context.codec.canonical_name
            if codec in COPY_AUDIO and codec in supported:
                dst = self._container.add_stream_from_template(src)
                tracks.append(_AudioTrack(src, dst, encode=False))
            else:
                # AAC wants a named layout; PCM often says just "2 channels": take the usual one for that count.
                layout = src.layout.name
                if layout.endswith("channels"):
                    layout = AAC_LAYOUT.get(src.layout.nb_channels, layout)
                dst = self._container.add_stream("aac", rate=src.rate, layout=layout)
                dst.codec_context.format = "fltp"  # the only sample format FFmpeg's AAC encoder takes
                tracks.append(_AudioTrack(src, dst, encode=True))
        return tracks

    @property
    def start(self) -> Fraction:
        """The source file's start time (the earliest of all its streams), in seconds."""
        return Fraction(self._src.start_time or 0, av.time_base)  # AV_TIME_BASE units

    def mux_until(self, time: Fraction | None, t0: Fraction) -> None:
        """Mux source audio packets up to output time `time` (all that is left when None)."""
        while True:
            if self._next is None:
                packet = next(self._packets, None)
                if packet is None:
                    break
                track = self._by_index[packet.stream.index]
                if packet.size == 0 and not track.encode:  # end-of-stream marker: only decoders need it
                    continue
                stamp = packet.dts if packet.dts is not None else packet.pts
                at = stamp * packet.time_base - t0 if stamp is not None else Fraction(0)
                self._next = (at, track, packet)
            at, track, packet = self._next
            if time is not None and at > time:
                break
            self._next = None
            if track.encode:
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as e:
                    raise InputError(f"{self._src.name}: cannot decode audio ({_reason(e)})") from e
                for frame in frames:
                    self._mux(track, track.dst.encode(frame), t0)
            else:
                self._mux(track, [packet], t0)

    def flush(self, t0: Fraction) -> None:
        for track in self.tracks:
            if track.encode:
                self._mux(track, track.dst.encode(None), t0)

    def _mux(self, track: _AudioTrack, packets: list[av.Packet], t0: Fraction) -> None:
        for packet in packets:
            shift = math.floor(t0 / packet.time_base)  # the same start shift as the video
            if packet.pts is not None:
                packet.pts -= shift
            if packet.dts is not None:
                packet.dts -= shift
            packet.stream = track.dst
            self._container.mux(packet)

    def close(self) -> None:
        if self._src is not None:
            self._src.close()
            self._src = None


@dataclass
class _AudioTrack:
    src: av.audio.stream.AudioStream  # in the source file
    dst: av.audio.stream.AudioStream  # in the output
    encode: bool  # re-encoded to AAC (the output container cannot hold the codec)


@contextmanager
def atomic_output(path: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Write to a temporary file beside `path` and rename it onto `path` only on success.

        with atomic_output(Path("out/clip.mp4"), overwrite=False) as tmp:
            write_video(tmp)        # tmp is out/.clip.partial-1a2b3c4d.mp4 (same suffix, same folder)

    On any exception (KeyboardInterrupt too) the temporary file is removed and `path` is untouched.
    Creates missing parent folders. Raises OutputError if `path` exists and not `overwrite`, or if the
    folder cannot be created or written.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name for the output")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: already exists (pass overwrite to replace it)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{path.parent}: cannot create the output folder ({e.strerror})") from e
    # Same folder, so the rename is atomic; the real suffix stays last so FFmpeg picks the format.
    tmp = path.with_name(f".{path.stem}.partial-{secrets.token_hex(4)}{path.suffix}")
    try:
        # O_EXCL: never reuse someone else's file; 0o666 lets the umask give the usual permissions.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as e:
        raise OutputError(f"{path.parent}: cannot write to this folder ({e.strerror})") from e
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
