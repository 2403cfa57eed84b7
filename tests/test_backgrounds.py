"""`--background SPEC`: blur, image, looped video, colour, and the light wrap; good and bad specs."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from test_process import RedKey, decode_rgb

from pipeline.backgrounds import VideoBackground, open_background, parse_colour
from pipeline.cli import main
from pipeline.composite import (
    BlurBackground,
    ColourBackground,
    Compositor,
    ImageBackground,
    fit_frame,
    light_wrap,
)
from pipeline.errors import InputError
from pipeline.process import ProcessOptions, process_video

# one solid colour per background video frame: survives 4:2:0 and H.264 within a few levels
PALETTE = [(230, 30, 30), (30, 200, 40), (40, 60, 220), (240, 220, 40), (200, 40, 200)]


def solid_video(path: Path, colours=PALETTE, size=(80, 60), fps=Fraction(10)) -> Path:
    """A lossless (ffv1) clip whose frame i is colours[i], filled."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("ffv1", rate=fps)
        s.width, s.height, s.pix_fmt = *size, "yuv444p"
        for i, rgb in enumerate(colours):
            img = np.empty((size[1], size[0], 3), np.uint8)
            img[:] = rgb
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in s.encode(frame):
                out.mux(packet)
        for packet in s.encode():
            out.mux(packet)
    return path


def person_frame(h=60, w=80) -> tuple[np.ndarray, np.ndarray]:
    """A grey textured frame with a red "person" block, and its 0/1 probability."""
    rng = np.random.default_rng(0)
    src = rng.integers(60, 120, (h, w, 3), np.uint8)
    prob = np.zeros((h, w), np.float32)
    prob[15:45, 25:55] = 1
    src[prob > 0] = (230, 40, 60)
    return src, prob


# ---- parsing specs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, rgb", [("#00ff00", (0, 255, 0)), ("00FF00", (0, 255, 0)), ("#0f0", (0, 255, 0)),
                                       ("green", (0, 128, 0)), (" Grey ", (128, 128, 128)),
                                       ("12, 34,56", (12, 34, 56))])
def test_parse_colour(text, rgb):
    assert parse_colour(text) == rgb


@pytest.mark.parametrize("text", ["greenish", "#12345", "300,0,0", "", "#gggggg"])
def test_unknown_colour_is_an_input_error(text):
    with pytest.raises(InputError, match="not a colour"):
        parse_colour(text)


def test_open_background_reads_every_kind(tmp_path):
    img = tmp_path / "room.png"
    cv2.imwrite(str(img), np.full((30, 40, 3), 200, np.uint8))
    vid = solid_video(tmp_path / "loop.mkv")
    with open_background("blur", blur=7) as bg:
        assert isinstance(bg, BlurBackground) and bg.strength == 7
    with open_background(str(img)) as bg:
        assert isinstance(bg, ImageBackground)
    with open_background(str(vid), fit="stretch") as bg:
        assert isinstance(bg, VideoBackground) and bg.fit == "stretch"
    assert bg._reader is None                        # closed on exit
    with open_background("#00ff00") as bg:
        assert isinstance(bg, ColourBackground) and bg.rgb == (0, 255, 0)


def test_bad_specs_say_what_is_wrong(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        with open_background(str(tmp_path / "missing.jpg")):
            pass
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    with pytest.raises(InputError, match="not an image or a video"):
        with open_background(str(broken)):
            pass
    with pytest.raises(InputError, match="not a colour"):
        with open_background("blurple"):
            pass
    with pytest.raises(InputError, match="folder"):
        with open_background(str(tmp_path)):
            pass


# ---- backgrounds -----------------------------------------------------------------------------------

def test_video_background_loops_frame_aligned_by_index(tmp_path):
    vid = solid_video(tmp_path / "loop.mkv")
    src = np.zeros((30, 50, 3), np.uint8)
    pha = np.zeros((30, 50), np.uint8)
    with VideoBackground(vid) as bg:
        for index in [0, 1, 2, 3, 4, 5, 6, 11, 12, 3, 0, 24]:   # forwards, looping, and back again
            bgr = bg(src, pha, index)
            assert bgr.shape == src.shape
            assert np.abs(bgr.astype(int) - PALETTE[index % len(PALETTE)]).max() <= 2, index
        assert bg.length == len(PALETTE)


def test_fit_cover_keeps_the_shape_and_stretch_fills():
    img = np.zeros((100, 100, 3), np.uint8)
    img[:, :50] = 255                                 # left half white
    cov = fit_frame(img, 200, 50, "cover")            # scaled to 200 wide, middle 50 rows kept
    st = fit_frame(img, 200, 50, "stretch")
    assert cov.shape == st.shape == (50, 200, 3)
    assert (cov[:, :95] == 255).all() and (cov[:, 105:] == 0).all()
    assert (st[:, :95] == 255).all() and (st[:, 105:] == 0).all()
    tall = fit_frame(img, 50, 200, "cover")           # cover crops the sides: the middle column is the seam
    assert tall.shape == (200, 50, 3) and (tall[:, :20] == 255).all() and (tall[:, 30:] == 0).all()
    with pytest.raises(ValueError):
        fit_frame(img, 10, 10, "zoom")


def test_light_wrap_touches_only_the_persons_edge():
    src, prob = person_frame()
    bg = ColourBackground((0, 255, 0))
    plain, pha = Compositor(background=bg)(src, prob)
    wrapped, pha2 = Compositor(background=bg, light_wrap=1.0)(src, prob)
    np.testing.assert_array_equal(pha, pha2)
    outside = pha == 0
    assert (wrapped[outside] == (0, 255, 0)).all()                  # the new background, exact
    inner = cv2.erode((pha == 255).astype(np.uint8), np.ones((13, 13), np.uint8)) > 0
    np.testing.assert_array_equal(wrapped[inner], plain[inner])     # the person's middle, untouched
    edge = (pha > 0) & ~inner
    greener = wrapped[edge][:, 1].astype(int) - plain[edge][:, 1]
    assert greener.mean() > 10 and greener.min() >= 0               # the band takes the green light
    assert light_wrap(plain, bg(src, pha, 0), pha, 0) is plain
    with pytest.raises(ValueError):
        Compositor(light_wrap=1.5)


def test_colour_background_is_exact_where_alpha_is_zero():
    src, prob = person_frame()
    com, pha = Compositor(background=ColourBackground((0, 177, 64)))(src, prob)
    assert (pha == 0).any()
    assert (com[pha == 0] == (0, 177, 64)).all()
    assert (com[pha == 255] == src[pha == 255]).all()


# ---- through the pipeline and the CLI ---------------------------------------------------------------

def test_process_with_colour_background_keeps_audio(make_video, probe, tmp_path):
    src = make_video(tmp_path / "in.mp4", size=(128, 96), frames=8)
    out = tmp_path / "out.mp4"
    process_video(src, out, ProcessOptions(background="#0000ff", thumb_every=0, crf=0), segmenter=RedKey())
    before, after = probe(src), probe(out)
    assert after["frames"] == 8
    assert after["audio"][0]["hashes"] == before["audio"][0]["hashes"]
    src_rgb, com = decode_rgb(src)[4], decode_rgb(out)[4]
    person = RedKey()(src_rgb[None])[0] > 0.5
    far = cv2.dilate(person.astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
    err = np.abs(com[far].astype(int) - (0, 0, 255))   # H.264 4:2:0 round trip: a few levels
    assert err.mean() < 1 and np.percentile(err, 99) <= 3


def test_process_with_video_background_is_frame_aligned(make_video, tmp_path):
    src = make_video(tmp_path / "in.mp4", size=(128, 96), frames=12, audio=False)
    bgv = solid_video(tmp_path / "bg.mkv", size=(40, 30))            # 5 frames: loops twice, stretched up
    out = tmp_path / "out.mp4"
    process_video(src, out, ProcessOptions(background=str(bgv), background_fit="stretch", thumb_every=0,
                                           crf=0), segmenter=RedKey())
    src_frames, out_frames = decode_rgb(src), decode_rgb(out)
    assert len(out_frames) == 12
    for n, (s, com) in enumerate(zip(src_frames, out_frames)):
        person = RedKey()(s[None])[0] > 0.5
        far = cv2.dilate(person.astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
        assert np.abs(com[far].astype(int) - PALETTE[n % len(PALETTE)]).mean() < 3, n


def test_process_with_image_background(make_video, tmp_path):
    src = make_video(tmp_path / "in.mp4", size=(128, 96), frames=3, audio=False)
    img = tmp_path / "wall.jpg"
    cv2.imwrite(str(img), np.full((50, 300, 3), (40, 90, 200), np.uint8))   # BGR: an orange wall
    out = tmp_path / "out.mp4"
    process_video(src, out, ProcessOptions(background=str(img), light_wrap=0.5, thumb_every=0),
                  segmenter=RedKey())
    com = decode_rgb(out)[1]
    assert np.abs(com[:8, :8].astype(int) - (200, 90, 40)).mean() < 4


def blurvid(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("spec, message", [("nope/missing.jpg", "no such file"), ("blurple", "not a colour")])
def test_cli_bad_background_is_one_clear_error(make_video, tmp_path, spec, message):
    src = make_video(tmp_path / "in.mp4", frames=3)
    result = blurvid("process", src, "-o", tmp_path / "o.mp4", "--background", spec, "--model",
                     tmp_path / "never-loaded.safetensors")
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o.mp4").exists()


def test_cli_background_options_reach_the_pipeline(make_video, tmp_path, monkeypatch):
    src = make_video(tmp_path / "in.mp4", frames=3)
    seen = {}

    def fake_process(src, dst, options, **kwargs):
        seen["options"] = options
        raise InputError("stop here")

    monkeypatch.setattr("pipeline.process.process_video", fake_process)
    monkeypatch.setattr("pipeline.segment.load_segmenter", lambda *a, **k: RedKey())
    result = blurvid("process", src, "-o", tmp_path / "o.mp4", "--background", "green",
                     "--background-fit", "stretch", "--light-wrap", "0.3", "--smooth", "0",
                     "--side-by-side", "--matte", tmp_path / "m.mp4", "--output-alpha", tmp_path / "a.webm")
    assert result.exit_code == 1 and "stop here" in result.output
    o = seen["options"]
    assert (o.background, o.background_fit, o.light_wrap, o.smooth, o.side_by_side) == (
        "green", "stretch", 0.3, 0.0, True)
    assert o.matte == tmp_path / "m.mp4" and o.output_alpha == tmp_path / "a.webm"
