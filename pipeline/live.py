"""Live: a camera, stream or file in, the composite in a window and/or a virtual webcam out.

    report = run_live(LiveOptions(source="0"))                      # camera 0, preview window
    report = run_live(LiveOptions(source="clip.mp4", window=False, max_frames=100))
    print(report.processed, report.dropped, report.fps)

The frames go through the same stages as `blurvid process` (segmenter at the model's work size fitted
to the aspect, temporal smoothing, Compositor with any --background), one frame at a time.

Latency never builds up: a capture thread reads the source continuously into a one-frame slot, and
the processing loop always takes the newest frame; a frame replaced before it was taken is dropped
(and counted). A file is read at its own frame rate by default (`realtime`), as a camera would
deliver it, so the drop count means what it would mean live; realtime=False reads it as fast as
it decodes. Cameras and URLs are read as they arrive. 'q' in the window, Ctrl-C, the end of the
stream or `max_frames` end the run; the capture thread is joined and every device released.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pipeline.backgrounds import open_background
from pipeline.composite import Compositor
from pipeline.errors import InputError, OutputError
from pipeline.process import composite_frame
from pipeline.segment import Segmenter, fit_work_size, load_segmenter
from pipeline.temporal import TemporalSmoother
from pipeline.video import Frame, VideoReader
from pipeline.zoom import PersonZoom, WholeFrames, frame_segmenter

WINDOW = "blurvid live (q quits)"
CAMERA_FPS = 30.0   # assumed when a camera or stream does not say


@dataclass(frozen=True)
class LiveOptions:
    """What `blurvid live` does; fields shared with ProcessOptions have the same names and meaning."""

    source: str = "0"                         # camera index, video file or URL
    window: bool = True                       # show the composite in an OpenCV window
    virtual_camera: bool = False              # send it to a virtual webcam (pyvirtualcam)
    realtime: bool = True                     # read a file at its frame rate (False: as fast as it decodes)
    max_frames: int | None = None             # stop after this many source frames (processed or dropped)
    report_every: float = 2.0                 # seconds between FPS lines; 0: none
    blur: int = 21
    background: str = "blur"
    background_fit: str = "cover"
    light_wrap: float = 0.0
    smooth: float = 0.7
    side_by_side: bool = False
    size: tuple[int, int] | None = None       # (w, h) output size; None keeps the source size
    work_size: tuple[int, int] | None = None  # (w, h) model input; None: the model's, fitted to the aspect
    zoom: bool = False                        # segment a crop around the people (pipeline.zoom)


@dataclass
class LiveReport:
    """What a live run did. read == processed + dropped."""

    read: int = 0                 # frames taken from the source
    processed: int = 0            # frames composited and shown/sent
    dropped: int = 0              # frames replaced by a newer one before they were processed
    seconds: float = 0.0
    # capture -> shown (s) of the last 1000 frames: bounded, so an all-day session does not grow
    latency: deque[float] = field(default_factory=lambda: deque(maxlen=1000), repr=False)
    ended_by: str = ""            # "end of stream", "max frames", "q", "interrupted"

    @property
    def fps(self) -> float:
        return self.processed / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        lat = f", latency {1000 * statistics.median(self.latency):.0f} ms median" if self.latency else ""
        return (f"live: {self.processed} frames processed, {self.dropped} dropped of {self.read} in "
                f"{self.seconds:.1f} s ({self.fps:.1f} fps{lat}); {self.ended_by}")


# --- sources --------------------------------------------------------------------------------------

class _FileSource:
    """A video file through VideoReader (rotation, exact timing), paced at its frame rate if asked."""

    live = False

    def __init__(self, path: Path):
        self.reader = VideoReader(path)
        self.size = (self.reader.info.width, self.reader.info.height)
        self.fps = float(self.reader.info.fps)

    def frames(self) -> Iterator[Frame]:
        return iter(self.reader)

    def close(self) -> None:
        self.reader.close()


class _CaptureSource:
    """A camera index or a URL through OpenCV's VideoCapture (V4L2 / FFmpeg)."""

    live = True

    def __init__(self, spec: str):
        camera = spec.isdigit()
        what = f"camera {spec}" if camera else spec
        # OpenCV logs its own warnings for a missing camera; the InputError below is the one line.
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            self.cap = cv2.VideoCapture(int(spec)) if camera else cv2.VideoCapture(spec, cv2.CAP_FFMPEG)
            if camera:   # the driver's own queue would add frames of latency
                self.cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            ok, first = self.cap.read() if self.cap.isOpened() else (False, None)
        finally:
            cv2.utils.logging.setLogLevel(level)
        if not ok:
            self.cap.release()
            hint = "no such camera, or it is in use" if camera else "not a stream or video OpenCV can read"
            raise InputError(f"{what}: cannot be opened ({hint})")
        self._first = first
        self.size = (first.shape[1], first.shape[0])
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or CAMERA_FPS

    def frames(self) -> Iterator[Frame]:
        t0 = time.perf_counter()
        index, bgr = 0, self._first
        while bgr is not None:
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            yield Frame(index=index, pts=None, time=time.perf_counter() - t0, rgb=rgb)
            ok, bgr = self.cap.read()
            index, bgr = index + 1, bgr if ok else None

    def close(self) -> None:
        self.cap.release()


def open_source(spec: str) -> _FileSource | _CaptureSource:
    """A camera index ("0"), a URL ("rtsp://...") or a video file; InputError if it cannot be read."""
    if spec.isdigit() or "://" in spec:
        return _CaptureSource(spec)
    path = Path(spec).expanduser()
    if not path.exists():
        raise InputError(f"{spec}: no such file, camera index or URL")
    return _FileSource(path)


# --- the one-frame slot and the capture thread ----------------------------------------------------

class LatestFrame:
    """A one-slot mailbox: put() replaces a frame nobody took (counted in `dropped`); take() gets the newest.

        slot.put(item); item = slot.take(timeout=0.1)   # None: nothing new yet, or finished
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item = None
        self._closed = False
        self._error: BaseException | None = None
        self.dropped = 0

    def put(self, item) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify()

    def close(self, error: BaseException | None = None) -> None:
        """No more frames; `error` is raised by the next take() once the slot is empty."""
        with self._cond:
            self._closed, self._error = True, error
            self._cond.notify_all()

    def take(self, timeout: float):
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            if item is None and self._error is not None:
                raise self._error
            return item

    def discard(self) -> None:
        """Count a frame left in the slot when the run stops early as dropped."""
        with self._cond:
            if self._item is not None:
                self._item, self.dropped = None, self.dropped + 1

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._closed and self._item is None


def _capture(source, slot: LatestFrame, stop: threading.Event, *, realtime: bool,
             max_frames: int | None, counter: list[int]) -> None:
    """Capture thread: source frames into the slot, paced at the file's frame times when `realtime`."""
    error = None
    try:
        t0 = first = None
        for frame in source.frames():
            if stop.is_set():
                break
            if realtime and not source.live:
                if t0 is None:
                    t0, first = time.perf_counter(), frame.time
                delay = (frame.time - first) - (time.perf_counter() - t0)
                if delay > 0 and stop.wait(delay):
                    break
            counter[0] += 1
            slot.put((frame, time.perf_counter()))
            if max_frames and counter[0] >= max_frames:
                break
    except BaseException as e:  # handed to the processing loop, which re-raises it
        error = e
    finally:
        slot.close(error)


# --- outputs --------------------------------------------------------------------------------------

@contextmanager
def open_window() -> Iterator[Callable[[np.ndarray], bool]]:
    """show(rgb) -> False once 'q' (or Esc) was pressed. OutputError if OpenCV has no GUI here."""
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error as e:
        raise OutputError("cannot open a preview window: this OpenCV has no GUI support or there is no "
                          "display (opencv-python-headless); use --no-window, or install opencv-python "
                          "in its place") from e

    def show(rgb: np.ndarray | None) -> bool:
        if rgb is not None:
            cv2.imshow(WINDOW, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        return cv2.waitKey(1) & 0xFF not in (ord("q"), 27)   # also keeps the window responsive

    try:
        yield show
    finally:
        cv2.destroyWindow(WINDOW)
        cv2.waitKey(1)   # lets the GUI thread actually close it


def require_pyvirtualcam():
    """The pyvirtualcam module, or OutputError saying how to install it."""
    try:
        import pyvirtualcam
    except ImportError as e:
        raise OutputError("--virtual-camera needs pyvirtualcam: pip install 'blurvid[live]' "
                          "(or pip install pyvirtualcam)") from e
    return pyvirtualcam


@contextmanager
def open_virtual_camera(size: tuple[int, int], fps: float) -> Iterator[Callable[[np.ndarray], None]]:
    """send(rgb) to a virtual webcam of `size` (w, h); OutputError if none can be opened."""
    pyvirtualcam = require_pyvirtualcam()
    try:
        cam = pyvirtualcam.Camera(width=size[0], height=size[1], fps=fps, fmt=pyvirtualcam.PixelFormat.RGB)
    except RuntimeError as e:   # no v4l2loopback device / OBS virtual camera installed
        raise OutputError(f"cannot open a virtual camera ({e}); on Linux load v4l2loopback "
                          "(sudo modprobe v4l2loopback exclusive_caps=1), elsewhere install OBS") from e
    with cam:
        yield lambda rgb: cam.send(np.ascontiguousarray(rgb))


# --- the loop -------------------------------------------------------------------------------------

def run_live(options: LiveOptions = LiveOptions(), *, segmenter: Segmenter | None = None,
             load_model: Callable[[], Segmenter] | None = None,
             log: Callable[[str], None] | None = None) -> LiveReport:
    """Run until the source ends, 'q', Ctrl-C or max_frames; returns the report (its summary() is a line).

    The model comes from `segmenter`, else `load_model()` (called once the source and outputs are open,
    so a bad source fails before a slow model load), else the shipped default. `log` gets an FPS line
    every `report_every` seconds.
    """
    report = LiveReport()
    with ExitStack() as stack:
        source = open_source(options.source)
        stack.callback(source.close)
        out_size = options.size or source.size
        shown_size = (2 * out_size[0], out_size[1]) if options.side_by_side else out_size
        show = stack.enter_context(open_window()) if options.window else None
        send = (stack.enter_context(open_virtual_camera(shown_size, source.fps))
                if options.virtual_camera else None)
        background = stack.enter_context(
            open_background(options.background, blur=options.blur, fit=options.background_fit))
        compositor = Compositor(background=background, light_wrap=options.light_wrap)
        smoother = TemporalSmoother(options.smooth) if options.smooth else None
        if segmenter is None:
            segmenter = (load_model or load_segmenter)()
        work_size = options.work_size or fit_work_size(segmenter.work_size, out_size)
        segment = frame_segmenter(segmenter, work_size, zoom=options.zoom)

        slot, stop, counter = LatestFrame(), threading.Event(), [0]
        thread = threading.Thread(target=_capture, name="capture", daemon=True, args=(source, slot, stop),
                                  kwargs={"realtime": options.realtime, "max_frames": options.max_frames,
                                          "counter": counter})
        started = time.perf_counter()
        last_log = (started, 0)   # (time, frames processed) at the last FPS line
        thread.start()
        try:
            while True:
                item = slot.take(timeout=0.05)
                if item is None:
                    if slot.finished:
                        full = options.max_frames and counter[0] >= options.max_frames
                        report.ended_by = "max frames" if full else "end of stream"
                        break
                    if show is not None and not show(None):
                        report.ended_by = "q"
                        break
                    continue
                frame, captured = item
                com = _composite(frame.rgb, frame.index, segment, compositor, smoother, out_size,
                                 work_size, options.side_by_side)
                if send is not None:
                    send(com)
                keep_going = show(com) if show is not None else True
                report.processed += 1
                report.latency.append(time.perf_counter() - captured)
                now = time.perf_counter()
                if log and options.report_every and now - last_log[0] >= options.report_every:
                    fps = (report.processed - last_log[1]) / (now - last_log[0])   # since the last line
                    last_log = (now, report.processed)
                    log(f"live: {fps:.1f} fps, {slot.dropped} dropped so far, "
                        f"latency {1000 * report.latency[-1]:.0f} ms")
                if not keep_going:
                    report.ended_by = "q"
                    break
        except KeyboardInterrupt:   # Ctrl-C is how a live session usually ends: not an error
            report.ended_by = "interrupted"
        finally:
            stop.set()
            thread.join()
            slot.discard()
            report.seconds = time.perf_counter() - started
            report.read, report.dropped = counter[0], slot.dropped
    return report


def _composite(rgb: np.ndarray, index: int, segment: PersonZoom | WholeFrames,
               compositor: Compositor, smoother: TemporalSmoother | None, out_size: tuple[int, int],
               work_size: tuple[int, int], side_by_side: bool) -> np.ndarray:
    """One frame through process's stages: resize, segment, smooth, composite (result | mask)."""
    if (rgb.shape[1], rgb.shape[0]) != out_size:
        rgb = cv2.resize(rgb, out_size, interpolation=cv2.INTER_AREA)
    small = cv2.resize(rgb, work_size, interpolation=cv2.INTER_AREA)
    prob = segment([rgb], [small])[0]                    # [h, w] float32
    com, _ = composite_frame(rgb, prob, compositor, index=index, smoother=smoother, side_by_side=side_by_side)
    return com
