"""The demo clip: opens, right frames/size/rate, audio of the right length, and it moves."""

from fractions import Fraction

import av
import numpy as np
import pytest

pytest.importorskip("skimage", reason="the demo clip is made from scikit-image's astronaut photo: pip install scikit-image")

from pipeline.sample import main, make_sample  # noqa: E402  (after the skip, which it needs)


def read_clip(path):
    """(video frames as RGB arrays, video stream facts, audio seconds decoded, audio stream facts)."""
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        vfacts = dict(codec=v.codec_context.name, w=v.width, h=v.height, fps=v.average_rate, pix=v.format.name)
        afacts = dict(codec=a.codec_context.name, rate=a.rate, seconds=float(a.duration * a.time_base))
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(v)]
    with av.open(str(path)) as c:
        samples = sum(f.samples for f in c.decode(audio=0))
    return frames, vfacts, samples / afacts["rate"], afacts


def test_sample_clip(tmp_path):
    out = make_sample(tmp_path / "demo.mp4", seconds=2.0, size=(320, 180), fps=25)
    assert out == tmp_path / "demo.mp4"
    assert [p.name for p in tmp_path.iterdir()] == ["demo.mp4"]  # no temporary file left behind
    frames, v, decoded_s, a = read_clip(out)
    assert v == dict(codec="h264", w=320, h=180, fps=25, pix="yuv420p")
    assert len(frames) == 50
    assert a["codec"] == "aac"
    assert a["seconds"] == pytest.approx(2.0, abs=0.03)
    assert decoded_s == pytest.approx(2.0, abs=0.05)  # AAC pads the last packet by < 1024 samples
    # it moves: every step changes the picture, and the person travels over the backdrop
    diffs = [np.abs(f1.astype(int) - f0).mean() for f0, f1 in zip(frames, frames[1:])]
    assert min(diffs) > 0.5
    assert np.abs(frames[-1].astype(int) - frames[len(frames) // 4]).mean() > 10
    # the backdrop is textured and coloured, not flat: a blurred background must look different
    corner = frames[0][:40, :40].astype(int)
    assert corner.std() > 5 and np.ptp(corner.mean(axis=(0, 1))) > 10


def test_sample_fractional_rate_and_replace(tmp_path):
    out = tmp_path / "demo.mp4"
    out.write_bytes(b"old")
    make_sample(out, seconds=1.0, size=(160, 90), fps=Fraction(30000, 1001))
    frames, v, _, a = read_clip(out)
    assert v["fps"] == Fraction(30000, 1001)
    assert len(frames) == 30  # round(1.0 * 29.97)
    assert frames[0].shape == (90, 160, 3)


def test_sample_rejects_odd_size(tmp_path):
    with pytest.raises(ValueError, match="even"):
        make_sample(tmp_path / "demo.mp4", size=(321, 180))
    assert not list(tmp_path.iterdir())


def test_sample_command(tmp_path, capsys):
    out = tmp_path / "sub" / "demo.mp4"
    assert main([str(out), "--seconds", "0.4", "--size", "64x48", "--fps", "10"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    frames, v, _, _ = read_clip(out)
    assert (len(frames), v["w"], v["h"], v["fps"]) == (4, 64, 48, 10)
