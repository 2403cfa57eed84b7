"""`blurvid live` on a file source with the window off: frames flow, drops instead of latency, clean ends."""

from __future__ import annotations

import sys
import threading
import time
import types

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.errors import BlurvidError, InputError
from pipeline.live import LatestFrame, LiveOptions, run_live
from pipeline.segment import load_segmenter


class FakeSegmenter:
    """p(person) = 0.5 everywhere, after `delay` seconds (a model slower than the frame rate)."""

    work_size = (32, 24)

    def __init__(self, delay: float = 0.0):
        self.delay = delay

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        time.sleep(self.delay)
        return np.full(frames.shape[:3], 0.5, np.float32)


@pytest.fixture
def clip(make_video, tmp_path):
    return make_video(tmp_path / "in.mp4", size=(64, 48), frames=25, audio=False)   # 1 s at 25 fps


def no_capture_thread() -> bool:
    return not any(t.name == "capture" for t in threading.enumerate())


def live(*args):
    return CliRunner().invoke(main, ["live", *(str(a) for a in args)])


def test_frames_flow_with_the_real_model_and_end_at_end_of_file(clip, tiny_model):
    report = run_live(LiveOptions(source=str(clip), window=False, realtime=False),
                      segmenter=load_segmenter(tiny_model))
    assert report.processed > 0
    assert report.read == 25 and report.processed + report.dropped == 25
    assert report.ended_by == "end of stream" and no_capture_thread()


def test_slow_model_drops_frames_instead_of_building_latency(clip):
    report = run_live(LiveOptions(source=str(clip), window=False), segmenter=FakeSegmenter(delay=0.1))
    assert report.seconds > 0.9                            # paced at the file's 25 fps
    assert 3 <= report.processed <= 15 and report.dropped >= 10
    assert report.processed + report.dropped == report.read == 25
    # a queue would deliver the last frame ~1.5 s late; the one-frame slot keeps it near one model call
    assert max(report.latency) < 0.5
    assert no_capture_thread()


def test_fast_model_keeps_up_in_real_time(clip):
    report = run_live(LiveOptions(source=str(clip), window=False), segmenter=FakeSegmenter())
    assert report.dropped < report.read / 2 and report.processed + report.dropped == 25


def test_max_frames_stops_early(clip):
    report = run_live(LiveOptions(source=str(clip), window=False, realtime=False, max_frames=5),
                      segmenter=FakeSegmenter())
    assert report.read == 5 and report.ended_by == "max frames" and no_capture_thread()


def test_q_in_the_window_quits(clip, monkeypatch):
    shown = []
    monkeypatch.setattr(cv2, "namedWindow", lambda *a: None)
    monkeypatch.setattr(cv2, "destroyWindow", lambda *a: None)
    monkeypatch.setattr(cv2, "imshow", lambda name, bgr: shown.append(bgr.shape))
    monkeypatch.setattr(cv2, "waitKey", lambda ms: ord("q") if len(shown) >= 3 else -1)
    report = run_live(LiveOptions(source=str(clip)), segmenter=FakeSegmenter())
    assert report.ended_by == "q" and report.processed == 3 and shown[0] == (48, 64, 3)
    assert no_capture_thread()


def test_no_gui_says_use_no_window(clip, monkeypatch):
    def no_gui(*args):
        raise cv2.error("The function is not implemented")

    monkeypatch.setattr(cv2, "namedWindow", no_gui)
    with pytest.raises(BlurvidError, match="--no-window"):
        run_live(LiveOptions(source=str(clip)), segmenter=FakeSegmenter())


def test_virtual_camera_gets_every_processed_frame(clip, monkeypatch):
    sent = []

    class Camera:   # pyvirtualcam's interface, as far as blurvid uses it
        def __init__(self, width, height, fps, fmt):
            self.size = (width, height)

        def send(self, rgb):
            sent.append(rgb.shape)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    fake = types.SimpleNamespace(Camera=Camera, PixelFormat=types.SimpleNamespace(RGB="RGB"))
    monkeypatch.setitem(sys.modules, "pyvirtualcam", fake)
    report = run_live(LiveOptions(source=str(clip), window=False, virtual_camera=True, side_by_side=True,
                                  realtime=False), segmenter=FakeSegmenter())
    assert len(sent) == report.processed > 0 and sent[0] == (48, 128, 3)


def test_one_frame_slot_keeps_the_newest():
    slot = LatestFrame()
    slot.put(1)
    slot.put(2)
    assert slot.take(timeout=0) == 2 and slot.dropped == 1
    assert slot.take(timeout=0) is None and not slot.finished
    slot.close(InputError("cut short"))
    with pytest.raises(InputError):
        slot.take(timeout=0)


def test_missing_camera_is_an_input_error():
    with pytest.raises(InputError, match="camera 9"):
        run_live(LiveOptions(source="9", window=False), segmenter=FakeSegmenter())


def test_cli_runs_a_file_to_the_end(clip, tiny_model):
    result = live("--source", clip, "--no-window", "--no-realtime", "--model", tiny_model, "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "frames processed" in result.stderr and "end of stream" in result.stderr


def test_cli_missing_source_is_one_line(tmp_path, tiny_model):
    result = live("--source", tmp_path / "nope.mp4", "--no-window", "--model", tiny_model)
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "nope.mp4" in lines[0]


def test_cli_virtual_camera_without_pyvirtualcam_says_how_to_install(clip, tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyvirtualcam", None)   # import pyvirtualcam -> ImportError
    result = live("--source", clip, "--no-window", "--virtual-camera", "--model", tiny_model)
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'blurvid[live]'" in lines[0]
