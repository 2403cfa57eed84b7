"""pipeline.video: synthetic round trips (reader -> writer with audio_from -> reopen), bad input, atomic output,
and the real clips in ../shared/media (marked `media`)."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import make_empty_video, write_silence
from pipeline.errors import InputError, OutputError
from pipeline.video import VideoInfo, VideoReader, VideoWriter, atomic_output, rotate


def transcode(src: Path, dst: Path, **writer_options) -> tuple[VideoInfo, list[np.ndarray]]:
    """Read src and write it to dst with its audio, as process.py does; returns the info and source frames."""
    frames = []
    with VideoReader(src) as reader, VideoWriter(dst, reader.info, audio_from=src, **writer_options) as writer:
        for frame in reader:
            frames.append(frame.rgb)
            writer.write(frame.rgb, pts=frame.pts)
    return reader.info, frames


def read_all(path: Path) -> list[np.ndarray]:
    with VideoReader(path) as reader:
        return [frame.rgb for frame in reader]


def assert_close(a: np.ndarray, b: np.ndarray, mean: float = 6.0) -> None:
    # A lossy re-encode of a 64x48 textured frame differs by ~2-4 levels; a wrong or shifted frame by 30+.
    assert a.shape == b.shape
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.mean() < mean, f"mean abs difference {diff.mean():.2f}"


def assert_same_audio(src: dict, out: dict, tolerance: float = 0.0) -> None:
    assert len(out["audio"]) == len(src["audio"])
    for a, b in zip(src["audio"], out["audio"]):
        assert b["hashes"] == a["hashes"]  # copied packet for packet
        assert b["duration"] == pytest.approx(a["duration"], abs=tolerance + 1e-9)


@pytest.mark.parametrize(
    "name, options",
    [
        ("in.mp4", {}),
        ("in.mov", {}),
        ("in.mkv", {}),
        ("in.mpg", {"codec": "mpeg1video"}),  # MP2 audio: copied into the mp4 too
        ("in.webm", {"codec": "libvpx-vp9"}),  # Opus audio
    ],
)
def test_round_trip(make_video, probe, tmp_path, name, options):
    src = make_video(tmp_path / name, frames=12, **options)
    out = tmp_path / "out.mp4"
    info, frames = transcode(src, out)
    a, b = probe(src), probe(out)

    assert (info.width, info.height, info.rotation, info.audio_streams) == (64, 48, 0, 1)
    assert info.fps == Fraction(25) and b["fps"] == Fraction(25)
    assert info.frames in (12, 13)  # mkv/webm: estimated from the container duration
    assert b["frames"] == a["frames"] == len(frames) == 12
    assert (b["width"], b["height"]) == (64, 48)
    for x, y in zip(frames, read_all(out)):
        assert_close(x, y)
    # WebM trims Opus's last frame with DiscardPadding, which has no mp4 equivalent: up to 20 ms longer.
    assert_same_audio(a, b, tolerance=0.02 if name.endswith(".webm") else 0.0)
    # faststart: the index (moov) comes before the media data (mdat)
    atoms = dict(b["atoms"])
    assert atoms["moov"] < atoms["mdat"]


def test_exact_ntsc_rate_and_frame_times(make_video, probe, tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=10, fps=Fraction(30000, 1001))
    out = tmp_path / "out.mp4"
    info, _ = transcode(src, out, crf=30, preset="ultrafast")
    assert info.fps == Fraction(30000, 1001)
    facts = probe(out)
    assert facts["fps"] == Fraction(30000, 1001)
    times = [p * facts["time_base"] for p in facts["pts"]]
    assert times == [i * Fraction(1001, 30000) for i in range(10)]


def test_millisecond_timestamps_back_on_the_exact_grid(make_video, probe, tmp_path):
    src = make_video(tmp_path / "in.mkv", frames=10, fps=Fraction(30))  # mkv: 0, 33, 67, 100 ms...
    assert probe(src)["pts"][:4] == [0, 33, 67, 100]
    out = tmp_path / "out.mp4"
    transcode(src, out)
    facts = probe(out)
    assert facts["fps"] == Fraction(30)
    assert [p * facts["time_base"] for p in facts["pts"]] == [Fraction(i, 30) for i in range(10)]


def test_frame_fields(make_video, tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=5)
    with VideoReader(src) as reader:
        frames = list(reader)
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert [f.time for f in frames] == pytest.approx([0, 0.04, 0.08, 0.12, 0.16])
    assert all(f.pts * reader.info.time_base == pytest.approx(f.time) for f in frames)
    rgb = frames[0].rgb
    assert rgb.dtype == np.uint8 and rgb.shape == (48, 64, 3) and rgb.flags.c_contiguous


def test_variable_frame_rate_keeps_pts(make_video, probe, tmp_path):
    pts = [0, 40, 80, 200, 240, 400, 440, 480]  # ms: gaps as in a phone recording
    src = make_video(tmp_path / "in.mkv", frames=len(pts), pts=pts, time_base=Fraction(1, 1000))
    out = tmp_path / "out.mp4"
    transcode(src, out)
    facts = probe(out)
    times = [p * facts["time_base"] for p in facts["pts"]]
    assert times == [Fraction(p, 1000) for p in pts]


def test_sequential_pts_when_none(make_video, probe, tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=6, audio=False)
    out = tmp_path / "out.mp4"
    with VideoReader(src) as reader, VideoWriter(out, reader.info) as writer:
        for frame in reader:
            writer.write(frame.rgb)  # no pts: frame n at n / fps
    facts = probe(out)
    assert [p * facts["time_base"] for p in facts["pts"]] == [Fraction(i, 25) for i in range(6)]
    assert facts["audio"] == []


def test_odd_size_is_padded_by_one_edge_pixel(make_video, probe, tmp_path):
    src = make_video(tmp_path / "in.mkv", size=(63, 47), codec="ffv1", audio=False)  # x264 cannot write odd
    out = tmp_path / "out.mp4"
    info, frames = transcode(src, out)
    assert (info.width, info.height) == (63, 47)
    facts = probe(out)
    assert (facts["width"], facts["height"]) == (64, 48)
    first = read_all(out)[0]
    assert_close(first[:47, :63], frames[0])
    # the added column and row repeat the edge
    assert_close(first[:47, 63], first[:47, 62], mean=3)
    assert_close(first[47, :63], first[46, :63], mean=3)


def test_resize_output(make_video, probe, tmp_path):
    src = make_video(tmp_path / "in.mp4", size=(128, 96), frames=4)
    out = tmp_path / "out.mp4"
    with VideoReader(src) as reader, VideoWriter(out, reader.info, size=(64, 48), audio_from=src) as writer:
        assert writer.size == (64, 48)
        for frame in reader:
            writer.write(frame.rgb, pts=frame.pts)
    facts = probe(out)
    assert (facts["width"], facts["height"], facts["frames"]) == (64, 48, 4)


@pytest.mark.parametrize("ccw, clockwise", [(-90, 90), (90, 270), (180, 180)])
def test_rotation_is_applied(make_video, tmp_path, ccw, clockwise):
    # set_display_rotation writes the display matrix that phones write (ccw=-90: "rotate 90" portrait).
    plain = make_video(tmp_path / "plain.mp4", frames=3, audio=False)
    turned = make_video(tmp_path / "turned.mp4", frames=3, audio=False, rotation=ccw)
    with VideoReader(turned) as reader:
        info = reader.info
        frames = [frame.rgb for frame in reader]
    assert info.rotation == clockwise
    assert (info.width, info.height) == ((48, 64) if clockwise in (90, 270) else (64, 48))
    for want, got in zip(read_all(plain), frames):
        assert got.flags.c_contiguous
        np.testing.assert_array_equal(got, np.rot90(want, k=-clockwise // 90))


def test_rotate_function():
    img = np.arange(6, dtype=np.uint8).reshape(2, 3, 1).repeat(3, axis=2)
    assert rotate(img, 0) is img
    np.testing.assert_array_equal(rotate(img, 90)[..., 0], [[3, 0], [4, 1], [5, 2]])  # clockwise
    np.testing.assert_array_equal(rotate(img, 270), np.rot90(img))
    np.testing.assert_array_equal(rotate(img, 180), img[::-1, ::-1])
    with pytest.raises(ValueError):
        rotate(img, 45)


def test_pcm_audio_is_reencoded_to_aac(make_video, probe, tmp_path):
    src = make_video(tmp_path / "in.mkv", frames=25, audio_codec="pcm_s16le")
    out = tmp_path / "out.mp4"
    transcode(src, out)
    a, b = probe(src), probe(out)
    assert a["audio"][0]["codec"] == "pcm_s16le" and b["audio"][0]["codec"] == "aac"
    assert b["audio"][0]["duration"] == pytest.approx(a["audio"][0]["duration"], abs=0.025)  # one AAC frame


def test_audio_is_interleaved_with_video(make_video, tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=100)  # 4 s
    out = tmp_path / "out.mp4"
    transcode(src, out, preset="ultrafast")
    with av.open(str(out)) as container:
        kinds = [p.stream.type for p in sorted(container.demux(), key=lambda p: p.pos or 0) if p.size]
    switches = sum(x != y for x, y in zip(kinds, kinds[1:]))
    assert switches >= 4  # chunks alternate through the file instead of all audio at the end


def test_every_audio_stream_is_kept(make_video, probe, tmp_path):
    # Two audio streams, one copyable (AAC) and one not (PCM): both come out, in order.
    src = tmp_path / "two.mkv"
    a = make_video(tmp_path / "a.mkv", frames=10)
    b = make_video(tmp_path / "b.mkv", frames=10, audio_codec="pcm_s16le")
    with av.open(str(a)) as ia, av.open(str(b)) as ib, av.open(str(src), "w") as oc:
        inputs = [ia.streams.video[0], ia.streams.audio[0], ib.streams.audio[0]]
        outputs = [oc.add_stream_from_template(s) for s in inputs]
        packets = [(p, outputs[p.stream.index]) for p in ia.demux(inputs[:2]) if p.size]
        packets += [(p, outputs[2]) for p in ib.demux(inputs[2]) if p.size]
        for packet, stream in sorted(packets, key=lambda ps: (ps[0].dts or 0) * ps[0].time_base):
            packet.stream = stream
            oc.mux(packet)
    out = tmp_path / "out.mp4"
    transcode(src, out)
    facts = probe(out)
    assert [s["codec"] for s in facts["audio"]] == ["aac", "aac"]
    assert facts["audio"][0]["hashes"] == probe(src)["audio"][0]["hashes"]


# --- bad input ------------------------------------------------------------------------------------


def open_and_read(path: Path) -> int:
    with VideoReader(path) as reader:
        return sum(1 for _ in reader)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        VideoReader(tmp_path / "nope.mp4")


def test_folder(tmp_path):
    with pytest.raises(InputError, match="folder"):
        VideoReader(tmp_path)


def test_text_file_named_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("these are not the frames you are looking for\n" * 20)
    with pytest.raises(InputError, match="not a video"):
        VideoReader(path)


def test_audio_only_file(tmp_path):
    path = tmp_path / "tone.m4a"
    with av.open(str(path), "w") as container:
        write_silence(container, container.add_stream("aac", rate=48000, layout="mono"), 1024)
    with pytest.raises(InputError, match="no video stream"):
        VideoReader(path)


def test_zero_frames(tmp_path):
    path = make_empty_video(tmp_path / "empty.mkv")
    with pytest.raises(InputError, match="no video frames"):
        VideoReader(path)


def cut(path: Path, share: float) -> Path:
    data = path.read_bytes()
    short = path.with_name("cut-" + path.name)
    short.write_bytes(data[: int(len(data) * share)])
    return short


@pytest.mark.parametrize(
    "name, options",
    [
        ("moov-at-end.mp4", {}),  # moov lost: FFmpeg cannot open it at all
        ("faststart.mp4", {"faststart": True}),  # last sample cut: a packet flagged corrupt
        ("in.mkv", {}),  # stops early without a word; the header says how long it should be
        ("in.webm", {"codec": "libvpx-vp9"}),
        ("in.mpg", {"codec": "mpeg1video"}),  # no index: the decoder flags the cut last picture
        ("in.ts", {"codec": "mpeg1video", "container": "mpegts"}),
    ],
)
def test_truncated_file(make_video, tmp_path, name, options):
    src = tmp_path / name
    if options.pop("faststart", False):
        make_video(tmp_path / "plain.mp4", frames=60, size=(96, 64))
        transcode(tmp_path / "plain.mp4", src)  # the writer puts moov in front
    else:
        make_video(src, frames=60, size=(96, 64), pattern="noise", **options)
    assert open_and_read(src) == 60
    with pytest.raises(InputError, match="truncated|corrupt|cut short"):
        open_and_read(cut(src, 0.6))


def test_decode_error_mid_stream_names_the_frame(make_video, tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=60, size=(96, 64), audio=False)
    with pytest.raises(InputError, match=r"frame \d+"):
        open_and_read(_corrupt_middle(src))


def _corrupt_middle(path: Path) -> Path:
    # Overwrite a stretch in the middle of the media data with garbage: the index is intact, so only
    # decoding can notice. Frames must not be skipped silently.
    data = bytearray(path.read_bytes())
    start = len(data) // 2
    data[start : start + 2000] = bytes(range(256)) * 7 + bytes(208)
    bad = path.with_name("bad-" + path.name)
    bad.write_bytes(data)
    return bad


def test_unwritable_output_is_output_error(make_video, tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=2)
    (tmp_path / "file").write_text("")
    with VideoReader(src) as reader, pytest.raises(OutputError):
        VideoWriter(tmp_path / "file" / "out.mp4", reader.info)


# --- atomic_output --------------------------------------------------------------------------------


def test_atomic_output_renames_on_success(tmp_path):
    path = tmp_path / "new" / "deeper" / "out.mp4"  # missing folders are created
    with atomic_output(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".mp4"
        assert tmp.name.startswith(".out.partial-")
        tmp.write_bytes(b"video")
    assert path.read_bytes() == b"video"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.mp4"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_output_cleans_up_on_error(tmp_path, error):
    path = tmp_path / "out.mp4"
    path.write_bytes(b"old")
    with pytest.raises(error):
        with atomic_output(path, overwrite=True) as tmp:
            tmp.write_bytes(b"half a video")
            raise error()
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_atomic_output_with_a_failing_writer(make_video, tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=4)
    path = tmp_path / "out" / "out.mp4"
    with pytest.raises(KeyboardInterrupt):
        with VideoReader(src) as reader, atomic_output(path) as tmp:
            with VideoWriter(tmp, reader.info, audio_from=src) as writer:
                for frame in reader:
                    writer.write(frame.rgb, pts=frame.pts)
                    raise KeyboardInterrupt
    assert list(path.parent.iterdir()) == []


def test_atomic_output_refuses_to_overwrite(tmp_path):
    path = tmp_path / "out.mp4"
    path.write_bytes(b"old")
    with pytest.raises(OutputError, match="exists"):
        with atomic_output(path):
            pass
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new"


def test_atomic_output_bad_folders(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError):
        with atomic_output(tmp_path / "file" / "out.mp4"):
            pass
    with pytest.raises(OutputError, match="folder"):
        with atomic_output(tmp_path):
            pass


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write to read-only folders")
def test_atomic_output_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="cannot write"):
            with atomic_output(folder / "out.mp4"):
                pass
    finally:
        folder.chmod(0o700)


# --- real clips -----------------------------------------------------------------------------------

CLIPS = {
    # path: (width, height, fps, frames, audio streams)
    "grid/bbaf2n.mpg": (360, 288, Fraction(25), 75, 1),  # MPEG-1 + MP2 (MP2 copied into the mp4)
    "chaplin.mp4": (640, 360, Fraction(25), 241, 1),  # H.264 + MP3
    "asl/again.mkv": (640, 480, Fraction(30), 77, 0),  # no per-stream duration, starts at 33 ms
    "carphone.mp4": (176, 144, Fraction(30000, 1001), 120, 0),
    "bikes.mp4": (640, 272, Fraction(25), 250, 0),
    "talking/d13.mp4": (720, 1280, Fraction(30), 352, 0),  # portrait
}


@pytest.mark.media
@pytest.mark.parametrize("clip", sorted(CLIPS))
def test_real_clip(media_dir, probe, tmp_path, clip):
    width, height, fps, frames, audio = CLIPS[clip]
    src = media_dir / clip
    out = tmp_path / "out.mp4"
    # Halve the big portrait clip to keep the suite fast; the others keep their size.
    size = (width // 2, height // 2) if width * height > 500_000 else None
    info, decoded = transcode(src, out, preset="ultrafast", size=size)
    assert (info.width, info.height, info.fps, info.audio_streams) == (width, height, fps, audio)
    assert info.frames is not None and abs(info.frames - frames) <= 1  # estimate for mpg/mkv
    assert len(decoded) == frames
    facts = probe(out)
    # mkv timestamps are whole milliseconds (33, 67, 100 ms at 30 fps): the writer puts them back on
    # the exact grid, so the mp4 measures 30 fps, not 29.99
    assert facts["frames"] == frames and facts["fps"] == fps
    assert (facts["width"], facts["height"]) == (size or (width, height))
    assert_same_audio(probe(src), facts)
    if size is None:
        assert_close(decoded[frames // 2], read_all(out)[frames // 2], mean=6)
