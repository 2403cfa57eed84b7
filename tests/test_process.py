"""The whole pipeline on synthetic clips, with a colour-key segmenter whose mask is known exactly."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from pipeline.errors import InputError, OutputError
from pipeline.process import ProcessOptions, fit_work_size, process_video, thumbs_dir_for


class RedKey:
    """A fake segmenter: p(person) = 1 on the conftest clips' red square, 0 elsewhere."""

    def __init__(self, work_size=(64, 48), fail_after: int | None = None, error=RuntimeError):
        self.work_size, self.calls, self.fail_after, self.error = work_size, 0, fail_after, error

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise self.error("segmenter failed on purpose")
        r, g, b = (frames[..., i].astype(int) for i in range(3))
        return ((r > 170) & (g < 110) & (b < 130)).astype(np.float32)


def decode_rgb(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_end_to_end_keeps_timing_audio_and_size(make_video, probe, tmp_path):
    src = make_video(tmp_path / "in.mp4", size=(128, 96), frames=30, fps=Fraction(30000, 1001))
    out = tmp_path / "out" / "blurred.mp4"              # a missing folder is created
    report = process_video(src, out, ProcessOptions(thumb_every=10), segmenter=RedKey())
    before, after = probe(src), probe(out)
    assert report.frames == after["frames"] == before["frames"] == 30
    assert (after["width"], after["height"]) == (128, 96)
    assert after["fps"] == Fraction(30000, 1001)
    assert after["pts"] == before["pts"]
    assert len(after["audio"]) == 1
    assert after["audio"][0]["hashes"] == before["audio"][0]["hashes"]      # copied, not re-encoded
    assert after["audio"][0]["duration"] == pytest.approx(before["audio"][0]["duration"], abs=1e-3)
    assert [a for a, _ in after["atoms"]].index("moov") < [a for a, _ in after["atoms"]].index("mdat")
    thumbs = sorted(thumbs_dir_for(out).glob("*.jpg"))
    assert [t.name.split("_")[0] for t in thumbs] == ["000000", "000010", "000020"]
    assert leftovers(out.parent, {"blurred.mp4", "blurred_thumbs"}) == []


def test_person_sharp_background_blurred_no_halo(make_video, tmp_path):
    src = make_video(tmp_path / "in.mkv", size=(192, 144), frames=6, pattern="still", codec="ffv1",
                     audio=False)
    out = tmp_path / "out.mp4"
    process_video(src, out, ProcessOptions(crf=0, blur=30, thumb_every=0), segmenter=RedKey())
    src_rgb, com = decode_rgb(src)[3], decode_rgb(out)[3]
    person = RedKey()(src_rgb[None])[0] > 0.5
    inner = cv2.erode(person.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0  # 2+ model pixels in
    far = cv2.dilate(person.astype(np.uint8), np.ones((41, 41), np.uint8)) == 0
    ring = (cv2.dilate(person.astype(np.uint8), np.ones((31, 31), np.uint8)) > 0) & ~cv2.dilate(
        person.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)

    # the person is untouched (up to H.264's 4:2:0 chroma)
    assert np.abs(com[inner].astype(int) - src_rgb[inner]).mean() < 4
    # the background lost its texture
    lap = lambda img: np.abs(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.CV_32F))[far].mean()
    assert lap(com) < lap(src_rgb) / 3
    # no red smeared into the ring around the person, unlike blur-the-whole-frame-then-blend
    naive = cv2.GaussianBlur(src_rgb, (61, 61), 0)
    redness = lambda img: (img[..., 0].astype(int) - img[..., 1])[ring].mean()
    src_red = redness(src_rgb)
    assert redness(com) - src_red < 5
    assert redness(naive) - src_red > 3 * (redness(com) - src_red) + 5


def test_resize_output_and_work_size(make_video, probe, tmp_path):
    src = make_video(tmp_path / "in.mp4", size=(128, 96), frames=5)
    seg = RedKey()
    out = tmp_path / "small.mp4"
    process_video(src, out, ProcessOptions(size=(64, 48), thumb_every=0), segmenter=seg)
    facts = probe(out)
    assert (facts["width"], facts["height"]) == (64, 48) and facts["frames"] == 5


def test_fit_work_size_follows_the_aspect():
    assert fit_work_size((256, 144), (1920, 1080)) == (256, 144)
    assert fit_work_size((256, 144), (720, 1280)) == (144, 256)
    w, h = fit_work_size((256, 144), (176, 144))
    assert w % 16 == 0 and h % 16 == 0 and abs(w / h - 176 / 144) < 0.15


def test_refuses_to_overwrite_and_to_write_over_the_input(make_video, tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=3)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    with pytest.raises(OutputError, match="exists"):
        process_video(src, out, segmenter=RedKey())
    assert out.read_bytes() == b"precious"
    with pytest.raises(OutputError, match="input"):
        process_video(src, tmp_path / "." / "in.mp4", ProcessOptions(overwrite=True), segmenter=RedKey())
    process_video(src, out, ProcessOptions(overwrite=True, thumb_every=0), segmenter=RedKey())
    assert out.stat().st_size > 1000


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_midway_leaves_nothing_behind(make_video, tmp_path, error):
    src = make_video(tmp_path / "in.mp4", frames=40)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(error):
        process_video(src, out_dir / "o.mp4", ProcessOptions(batch_size=4, thumb_every=1),
                      segmenter=RedKey(fail_after=3, error=error))
    assert leftovers(out_dir, set()) == []


def test_bad_input_is_an_input_error(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    with pytest.raises(InputError):
        process_video(bad, tmp_path / "o.mp4", segmenter=RedKey())
    assert leftovers(tmp_path, {"notes.mp4"}) == []


@pytest.mark.media
@pytest.mark.parametrize("clip", ["grid/bbaf2n.mpg", "chaplin.mp4", "asl/again.mkv", "carphone.mp4",
                                  "bikes.mp4", "talking/d13.mp4"])
def test_real_clips_end_to_end(media_dir, probe, tmp_path, clip):
    """Each clip kind in ../shared/media, with a fake segmenter (the model's quality is tested elsewhere)."""
    src = media_dir / clip
    out = tmp_path / "out.mp4"
    before = probe(src)
    report = process_video(src, out, ProcessOptions(thumb_every=25, preset="ultrafast"),
                           segmenter=RedKey(work_size=(96, 64)))
    after = probe(out)
    assert report.frames == after["frames"] == before["frames"]
    assert (after["width"], after["height"]) == (before["width"] + before["width"] % 2,
                                                 before["height"] + before["height"] % 2)
    assert after["fps"] == before["fps"]
    assert len(after["audio"]) == len(before["audio"])
    for a, b in zip(after["audio"], before["audio"]):
        if a["codec"] == b["codec"]:
            assert a["hashes"] == b["hashes"]
        assert a["duration"] == pytest.approx(b["duration"], abs=0.05)
    assert len(list(thumbs_dir_for(out).glob("*.jpg"))) == -(-before["frames"] // 25)
