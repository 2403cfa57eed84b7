"""Extra outputs: the person with alpha (.mov, .webm, PNGs), the matte video, and side by side.

Each output is decoded back and compared with the alpha the compositor made for the same frame.
"""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from test_process import RedKey, decode_rgb, leftovers

from pipeline.cli import main
from pipeline.composite import upsample_alpha
from pipeline.errors import OutputError
from pipeline.outputs import alpha_format, decode_alpha
from pipeline.process import ProcessOptions, fit_work_size, process_video

SIZE = (128, 96)


@pytest.fixture
def clip(make_video, tmp_path) -> Path:
    """A lossless clip, so the test can recompute the exact alpha the pipeline saw."""
    return make_video(tmp_path / "in.mkv", size=SIZE, frames=6, codec="ffv1", audio=False)


def expected_alphas(clip: Path, size=SIZE) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(source frames, the compositor's alpha for each) as process_video computes them with RedKey."""
    seg = RedKey()
    work = fit_work_size(seg.work_size, size)
    frames = decode_rgb(clip)
    phas = [upsample_alpha(seg(cv2.resize(f, work, interpolation=cv2.INTER_AREA)[None])[0], f) for f in frames]
    return frames, phas


@pytest.mark.parametrize("name, max_err, mean_err", [
    ("person.mov", 1, 0.1),       # ProRes 4444: alpha at 10 bits (yuva444p10le): within one level
    ("person.webm", 40, 0.6),     # VP9 alpha is lossy: sharp edges ring a little
    ("person", 0, 0),             # PNG sequence: exact
])
def test_alpha_output_round_trips(clip, tmp_path, name, max_err, mean_err):
    out, alpha = tmp_path / "out.mp4", tmp_path / name
    process_video(clip, out, ProcessOptions(output_alpha=alpha, thumb_every=0), segmenter=RedKey())
    frames, phas = expected_alphas(clip)
    got = list(decode_alpha(alpha))
    assert len(got) == len(phas) == 6
    for rgba, pha, src in zip(got, phas, frames):
        assert rgba.shape == (SIZE[1], SIZE[0], 4)
        err = np.abs(rgba[..., 3].astype(int) - pha)
        assert err.max() <= max_err and err.mean() <= mean_err
        assert 0 < (pha == 255).mean() < 0.5                    # there is a person and a background
        opaque = pha == 255
        assert np.abs(rgba[..., :3][opaque].astype(int) - src[opaque]).mean() < 3   # the person's colours
    assert leftovers(tmp_path, {"in.mkv", "out.mp4", name}) == []


def test_webm_alpha_needs_the_libvpx_decoder(clip, tmp_path):
    """What FFmpeg does with VP9 alpha (documented in pipeline/outputs.py)."""
    alpha = tmp_path / "a.webm"
    process_video(clip, tmp_path / "o.mp4", ProcessOptions(output_alpha=alpha, thumb_every=0),
                  segmenter=RedKey())
    with av.open(str(alpha)) as c:
        stream = c.streams.video[0]
        assert stream.metadata.get("alpha_mode") == "1"
        native = next(c.decode(stream))
    assert native.format.name == "yuv420p"                   # the native vp9 decoder drops the alpha
    assert next(decode_alpha(alpha)).shape[2] == 4


@pytest.mark.parametrize("name", ["person.mp4", "person.m4v", "person.avi"])
def test_alpha_in_a_format_without_alpha_is_refused(name):
    with pytest.raises(OutputError, match="cannot hold transparency"):
        alpha_format(Path(name))


def test_alpha_output_is_atomic(make_video, tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=40)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for name in ("a.mov", "frames"):
        with pytest.raises(RuntimeError):
            process_video(src, out_dir / "o.mp4", ProcessOptions(output_alpha=out_dir / name, matte=out_dir / "m.mp4",
                                                                 thumb_every=0, batch_size=4),
                          segmenter=RedKey(fail_after=3))
        assert leftovers(out_dir, set()) == []


def test_outputs_refuse_to_overwrite(clip, tmp_path):
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "keep.png").write_bytes(b"x")
    with pytest.raises(OutputError, match="not empty"):
        process_video(clip, tmp_path / "o.mp4", ProcessOptions(output_alpha=tmp_path / "frames"),
                      segmenter=RedKey())
    with pytest.raises(OutputError, match="input"):
        process_video(clip, tmp_path / "o.mp4", ProcessOptions(matte=clip), segmenter=RedKey())
    assert not (tmp_path / "o.mp4").exists()
    process_video(clip, tmp_path / "o.mp4", ProcessOptions(output_alpha=tmp_path / "frames", overwrite=True,
                                                           thumb_every=0), segmenter=RedKey())
    assert sorted(p.name for p in (tmp_path / "frames").iterdir())[:2] == ["000000.png", "000001.png"]


def test_matte_decodes_to_the_mask(clip, probe, tmp_path):
    matte = tmp_path / "matte.mp4"
    process_video(clip, tmp_path / "o.mp4", ProcessOptions(matte=matte, crf=0, thumb_every=0), segmenter=RedKey())
    facts = probe(matte)
    assert facts["frames"] == 6 and (facts["width"], facts["height"]) == SIZE and facts["audio"] == []
    _, phas = expected_alphas(clip)
    for rgb, pha in zip(decode_rgb(matte), phas):
        assert np.abs(rgb.astype(int) - rgb[..., :1]).max() <= 1   # grey
        err = np.abs(rgb[..., 0].astype(int) - pha)
        assert err.mean() < 1 and err.max() <= 3                    # limited-range YUV rounding


def test_side_by_side_doubles_the_width(clip, probe, tmp_path):
    out = tmp_path / "sbs.mp4"
    process_video(clip, out, ProcessOptions(side_by_side=True, crf=0, thumb_every=0), segmenter=RedKey())
    facts = probe(out)
    assert (facts["width"], facts["height"]) == (2 * SIZE[0], SIZE[1]) and facts["frames"] == 6
    plain = tmp_path / "plain.mp4"
    process_video(clip, plain, ProcessOptions(crf=0, thumb_every=0), segmenter=RedKey())
    _, phas = expected_alphas(clip)
    for sbs, com, pha in zip(decode_rgb(out), decode_rgb(plain), phas):
        assert np.abs(sbs[:, : SIZE[0]].astype(int) - com).mean() < 2   # left: the result
        assert np.abs(sbs[:, SIZE[0] :, 0].astype(int) - pha).mean() < 2  # right: the mask


def test_cli_alpha_matte_and_side_by_side(make_video, probe, tmp_path, monkeypatch):
    src = make_video(tmp_path / "in.mp4", size=(96, 64), frames=5)
    monkeypatch.setattr("pipeline.segment.load_segmenter", lambda *a, **k: RedKey())
    runner = CliRunner()
    result = runner.invoke(main, ["process", str(src), "-o", str(tmp_path / "o.mp4"), "--output-alpha",
                                  str(tmp_path / "a.mov"), "--matte", str(tmp_path / "m.mp4"), "--side-by-side",
                                  "--thumb-every", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    assert probe(tmp_path / "o.mp4")["width"] == 192
    assert probe(tmp_path / "m.mp4")["width"] == 96
    assert len(list(decode_alpha(tmp_path / "a.mov"))) == 5
    result = runner.invoke(main, ["process", str(src), "-o", str(tmp_path / "o2.mp4"), "--output-alpha",
                                  str(tmp_path / "a.mp4")])
    assert result.exit_code == 2 and "cannot hold transparency" in result.output
