"""The pipeline: decode → segment → composite → encode, streaming, with the audio kept.

    report = process_video("in.mp4", "out.mp4", ProcessOptions(blur=21))
    print(report.frames, report.fps)

Decoding and encoding each run in their own thread beside inference (PyAV, OpenCV and torch release
the GIL), joined by bounded queues so memory stays flat however long the video is. The output is
written under a temporary name and renamed when complete: a failure or Ctrl-C leaves nothing behind.
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pipeline.backgrounds import open_background
from pipeline.composite import Compositor
from pipeline.errors import OutputError
from pipeline.outputs import open_alpha_output, open_matte_output
from pipeline.preview import record_videos, thumb_name
from pipeline.reuse import DEFAULT_MAX_CHANGED, MaskReuse
from pipeline.segment import Segmenter, fit_work_size, load_segmenter
from pipeline.temporal import TemporalSmoother
from pipeline.video import Frame, Span, VideoInfo, VideoReader, VideoWriter, atomic_output
from pipeline.zoom import frame_segmenter

QUEUE_FRAMES = 16        # at most this many frames in flight between two stages
QUEUE_BYTES = 48 << 20   # and at most this much RGB: 16 frames at 720p, 7 at 1080p, 4 at 4K


def frames_in_flight(frame_size: tuple[int, int]) -> int:
    """Queue length between two stages for frames of `frame_size` (w, h): enough to keep every
    stage busy, few enough that memory stays flat and small at any resolution."""
    w, h = frame_size
    return max(4, min(QUEUE_FRAMES, QUEUE_BYTES // (w * h * 3)))


@dataclass(frozen=True)
class ProcessOptions:
    """What `blurvid process` does to a video; every field is a CLI option."""

    blur: int = 21                            # background blur strength
    size: tuple[int, int] | None = None       # (w, h) output size; None keeps the source size
    work_size: tuple[int, int] | None = None  # (w, h) model input; None: the model's, fitted to the aspect
    crf: int = 20                             # x264 quality: lower is better and bigger
    preset: str = "veryfast"                  # x264 speed/size trade-off
    thumb_every: int = 25                     # save every Nth composited frame as JPEG; 0: none
    batch_size: int = 4                       # frames per forward pass
    overwrite: bool = False
    background: str = "blur"                  # "blur", an image or video file, or a colour (backgrounds.py)
    background_fit: str = "cover"             # an image/video background: "cover" (crop) or "stretch"
    light_wrap: float = 0.0                   # 0..1: background light spilled over the person's edge
    smooth: float = 0.7                       # 0..1: temporal smoothing of unsure mask pixels; 0: off
    reuse: float = DEFAULT_MAX_CHANGED        # reuse the last mask below this fraction of changed pixels; 0: off
    zoom: bool = False                        # segment a crop around the people (pipeline.zoom)
    output_alpha: Path | None = None          # also the person with alpha: .mov, .webm or a PNG folder
    matte: Path | None = None                 # also the soft mask as a grey H.264 video
    side_by_side: bool = False                # the output shows result | mask (twice as wide)


@dataclass
class ProcessReport:
    """What a run did and where the time went (seconds per stage, summed over frames)."""

    output: Path
    frames: int = 0
    reused: int = 0       # frames that reused the last mask instead of running the model (pipeline.reuse)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    thumbs: Path | None = None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def thumbs_dir_for(output: Path) -> Path:
    """Where the thumbnails of `output` go: a folder beside it named after it (out.mp4 → out_thumbs/)."""
    return output.with_name(f"{output.stem}_thumbs")


def process_video(src: str | Path, dst: str | Path, options: ProcessOptions = ProcessOptions(), *,
                  segmenter: Segmenter | None = None, compositor: Compositor | None = None,
                  progress: Callable[[int], None] | None = None,
                  on_start: Callable[[VideoInfo], None] | None = None,
                  span: Span | None = None) -> ProcessReport:
    """Blur the background of `src` into `dst` (an H.264 mp4 with src's audio); returns a report.

    `options` also choose another background, temporal smoothing, and extra outputs (person with
    alpha, matte; see pipeline.outputs), each renamed into place only when the whole run succeeds.
    `progress(n)` is called with the number of frames just finished; `on_start(info)` once the
    input is open (the CLI sizes its progress bar from it). With `span`, only that stretch of src
    is processed, into a video-only chunk that pipeline.chunks joins with the others.
    """
    src, dst = Path(src), Path(dst)
    extra = [Path(p) for p in (options.output_alpha, options.matte) if p is not None]
    if span is not None and extra:
        raise ValueError("a span (a chunk of a video) cannot have extra outputs (output_alpha, matte)")
    for path in (dst, *extra):
        if path.resolve() == src.resolve():
            raise OutputError(f"{path}: output path is the input; choose another output")
    if len({p.resolve() for p in (dst, *extra)}) < 1 + len(extra):
        raise OutputError(f"{dst}: the outputs need different names")
    segmenter = segmenter or load_segmenter()
    report = ProcessReport(output=dst)
    started = time.perf_counter()

    with VideoReader(src, span=span) as reader, atomic_output(dst, overwrite=options.overwrite) as tmp_dst, \
            ExitStack() as outputs:
        info = reader.info
        out_size = options.size or (info.width, info.height)
        work_size = options.work_size or fit_work_size(segmenter.work_size, out_size)
        if compositor is None:
            background = outputs.enter_context(
                open_background(options.background, blur=options.blur, fit=options.background_fit))
            compositor = Compositor(background=background, light_wrap=options.light_wrap)
        sinks = []  # extra outputs, written (frame.rgb, pha, pts) beside the main one
        if options.output_alpha is not None:
            sinks.append(outputs.enter_context(open_alpha_output(
                options.output_alpha, info, size=out_size, overwrite=options.overwrite)))
        if options.matte is not None:
            sinks.append(outputs.enter_context(open_matte_output(
                options.matte, info, size=options.size, crf=options.crf, preset=options.preset,
                overwrite=options.overwrite)))
        smoother = TemporalSmoother(options.smooth) if options.smooth else None
        if on_start:
            on_start(info)
        video_size = (2 * out_size[0], out_size[1]) if options.side_by_side else options.size
        thumbs = _ThumbnailSaver(thumbs_dir_for(dst), options.thumb_every, options.overwrite,
                                 video=dst, source=src)
        with VideoWriter(tmp_dst, info, size=video_size, crf=options.crf, preset=options.preset,
                         audio_from=None if span else src, span=span) as writer, thumbs:
            frames = _resized(reader, options.size, report)
            in_flight = frames_in_flight(out_size)
            # closing(): on a failure the decode thread must stop before the reader closes under it
            decoded = outputs.enter_context(closing(_threaded(frames, maxsize=in_flight, name="decode")))
            composited = _segment_and_composite(decoded, segmenter, compositor, work_size,
                                                options.batch_size, report, smoother=smoother,
                                                reuse=MaskReuse(options.reuse), zoom=options.zoom,
                                                side_by_side=options.side_by_side)
            encoder = _Encoder(writer, thumbs, report, progress, sinks=sinks, queue_frames=in_flight)
            encoder.run(composited)
        report.thumbs = thumbs.folder if options.thumb_every else None
    report.seconds = time.perf_counter() - started
    return report


# --- stages ---------------------------------------------------------------------------------------

def _resized(reader: VideoReader, size: tuple[int, int] | None, report: ProcessReport) -> Iterator[Frame]:
    """Decoded frames, scaled to the output size first so every later stage works at that size."""
    frames = iter(reader)
    while True:
        t0 = time.perf_counter()
        frame = next(frames, None)
        if frame is None:
            return
        if size and (frame.rgb.shape[1], frame.rgb.shape[0]) != size:
            frame.rgb = cv2.resize(frame.rgb, size, interpolation=cv2.INTER_AREA)
        report.stage_seconds["decode"] += time.perf_counter() - t0
        yield frame


def _segment_and_composite(frames: Iterable[Frame], segmenter: Segmenter, compositor: Compositor,
                           work_size: tuple[int, int], batch_size: int,
                           report: ProcessReport, *, smoother: TemporalSmoother | None = None,
                           reuse: MaskReuse | None = None, zoom: bool = False,
                           side_by_side: bool = False) -> Iterator[tuple[Frame, np.ndarray, np.ndarray]]:
    """Batches frames through the model, then composites each: yields (frame, com, pha).

    With `reuse`, frames nearly identical to the last one the model saw get its mask instead; with
    `zoom`, the model looks at a crop around the people (pipeline.zoom).
    """
    segment = frame_segmenter(segmenter, work_size, zoom=zoom)
    last_prob = None
    for batch in _batched(frames, batch_size):
        t0 = time.perf_counter()
        small = [cv2.resize(f.rgb, work_size, interpolation=cv2.INTER_AREA) for f in batch]
        needed = [reuse is None or reuse.needs_model(s) for s in small]
        fresh = iter(segment([f.rgb for f, n in zip(batch, needed) if n], [s for s, n in zip(small, needed) if n]))
        probs = []                                          # [h, w] float32 each
        for need in needed:
            last_prob = next(fresh) if need else last_prob
            probs.append(last_prob)
        report.reused += needed.count(False)
        t1 = time.perf_counter()
        report.stage_seconds["segment"] += t1 - t0
        for frame, prob in zip(batch, probs):
            t0 = time.perf_counter()
            com, pha = composite_frame(frame.rgb, prob, compositor, index=frame.index, smoother=smoother,
                                       side_by_side=side_by_side)
            report.stage_seconds["composite"] += time.perf_counter() - t0
            yield frame, com, pha


def composite_frame(rgb: np.ndarray, prob: np.ndarray, compositor: Compositor, *, index: int,
                    smoother: TemporalSmoother | None = None,
                    side_by_side: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One frame's mask smoothed (frames must come in order), composited: (result, alpha).

    With `side_by_side` the result is result | mask, twice as wide. `blurvid live` shares this.
    """
    if smoother is not None:                        # in frame order: it remembers the last one
        prob = smoother(prob)
    com, pha = compositor(rgb, prob, index=index)
    if side_by_side:
        com = np.hstack([com, cv2.cvtColor(pha, cv2.COLOR_GRAY2RGB)])
    return com, pha


class _Encoder:
    """Encodes composited frames (and saves thumbnails) in its own thread."""

    def __init__(self, writer: VideoWriter, thumbs: _ThumbnailSaver, report: ProcessReport,
                 progress: Callable[[int], None] | None, *, sinks: Iterable = (),
                 queue_frames: int = QUEUE_FRAMES):
        self.writer, self.thumbs, self.report, self.progress = writer, thumbs, report, progress
        self.queue_frames = queue_frames
        self.sinks = list(sinks)  # extra outputs: .write(rgb, pha, pts) (pipeline.outputs)

    def run(self, composited: Iterable[tuple[Frame, np.ndarray, np.ndarray]]) -> None:
        work: queue.Queue = queue.Queue(maxsize=self.queue_frames)
        failure: list[BaseException] = []

        def encode() -> None:
            try:
                while (item := work.get()) is not None:
                    frame, com, pha = item
                    t0 = time.perf_counter()
                    self.writer.write(com, frame.pts)
                    self.thumbs.maybe_save(frame, com)
                    t1 = time.perf_counter()
                    self.report.stage_seconds["encode"] += t1 - t0
                    for sink in self.sinks:
                        sink.write(frame.rgb, pha, frame.pts)
                    if self.sinks:
                        self.report.stage_seconds["extra outputs"] += time.perf_counter() - t1
                    self.report.frames += 1
                    if self.progress:
                        self.progress(1)
            except BaseException as e:  # handed to the main thread, which re-raises it
                failure.append(e)
                while work.get() is not None:   # drain so the producer never blocks forever
                    pass

        thread = threading.Thread(target=encode, name="encode", daemon=True)
        thread.start()
        try:
            for item in composited:
                if failure:
                    break
                work.put(item)
        finally:
            work.put(None)
            thread.join()
        if failure:
            raise failure[0]


class _ThumbnailSaver:
    """Saves every Nth composited frame as JPEG into a temporary folder, moved into place on success.

    The folder also gets `videos.json`: where `video` (the output) and its `source` are, so that
    `blurvid preview` shows both beside the thumbnails.
    """

    def __init__(self, folder: Path, every: int, overwrite: bool, *, video: Path | None = None,
                 source: Path | None = None):
        self.folder, self.every, self.overwrite = folder, every, overwrite
        self.video, self.source = video, source
        self.tmp: Path | None = None

    def __enter__(self) -> _ThumbnailSaver:
        if self.every:
            if self.folder.exists() and not self.overwrite:
                raise OutputError(f"{self.folder}: thumbnail folder exists (use --overwrite to replace it)")
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.partial-", dir=self.folder.parent))
        return self

    def maybe_save(self, frame: Frame, com: np.ndarray) -> None:
        if self.tmp is not None and frame.index % self.every == 0:
            path = self.tmp / thumb_name(frame.index, frame.time)
            cv2.imwrite(str(path), cv2.cvtColor(com, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp is None:
            return
        if exc_type is None:
            record_videos(self.tmp, video=self.video, source=self.source, relative_to=self.folder)
            if self.folder.exists():
                shutil.rmtree(self.folder)
            self.tmp.rename(self.folder)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# --- plumbing -------------------------------------------------------------------------------------

def _batched(items: Iterable, n: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


_DONE = object()


def _threaded(items: Iterable, *, maxsize: int, name: str) -> Iterator:
    """Runs the iterable in a background thread, handing items over through a bounded queue.

    Exceptions in the thread are re-raised in the consumer; if the consumer stops early, the thread
    is told to stop and does not block on the full queue.
    """
    handoff: queue.Queue = queue.Queue(maxsize=maxsize)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        handoff.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            handoff.put(_DONE)
        except BaseException as e:  # handed to the consumer, which re-raises it
            handoff.put(e)

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while (item := handoff.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():          # unblock a producer waiting on a full queue
            try:
                handoff.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
