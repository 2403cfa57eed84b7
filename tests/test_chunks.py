"""Long videos in chunks: planned at keyframes, joined without re-encoding into what one pass writes."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.batch import MANIFEST_NAME
from pipeline.chunks import join_chunks, plan_chunks, process_chunked
from pipeline.cli import main
from pipeline.errors import OutputError
from pipeline.process import ProcessOptions, process_video
from pipeline.segment import load_segmenter

FAST = ["--thumb-every", "0", "--preset", "ultrafast", "-q"]
OPTIONS = ProcessOptions(preset="ultrafast", smooth=0, thumb_every=10)   # smoothing off: same masks


@pytest.fixture(scope="module")
def segmenter(tiny_model):
    """The tiny model on one torch thread (as the batch tests' --threads 1): tiny frames gain nothing
    from more, and on a busy machine idle threads spinning cost a lot."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_segmenter(tiny_model)
    torch.set_num_threads(threads)


def long_clip(make_video, path: Path, frames: int = 60) -> Path:
    """60 frames at 25 fps (2.4 s), a keyframe every 10 frames, with an AAC tone."""
    return make_video(path, size=(64, 48), frames=frames, gop=10)


def keyframe_pts(path: Path) -> list[int]:
    with av.open(str(path)) as c:
        return [p.pts for p in c.demux(video=0) if p.is_keyframe and p.size]


def rgb_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24").astype(np.int16) for f in c.decode(video=0)]


def assert_same_video(probe, one: Path, chunked: Path, src: Path) -> None:
    """Frame count, every pts, duration and audio packets of one pass; pictures within encoder noise."""
    a, b = probe(one), probe(chunked)
    assert b["frames"] == a["frames"] == probe(src)["frames"]
    assert b["pts"] == a["pts"] and b["time_base"] == a["time_base"]
    assert b["duration"] == a["duration"] and b["fps"] == a["fps"]
    assert len(b["audio"]) == len(a["audio"]) == len(probe(src)["audio"])
    for x, y, s in zip(a["audio"], b["audio"], probe(src)["audio"]):
        assert y["hashes"] == x["hashes"] == s["hashes"], "audio packets copied byte for byte"
        assert y["samples"] == x["samples"]
    diffs = [np.abs(p - q).mean() for p, q in zip(rgb_frames(one), rgb_frames(chunked))]
    assert max(diffs) < 6, diffs   # the same masks; only x264's own choices differ (ultrafast, 64×48)


# --- planning -------------------------------------------------------------------------------------

def test_plan_cuts_whole_gops_of_about_the_target(make_video, tmp_path):
    src = long_clip(make_video, tmp_path / "in.mp4")
    keys = keyframe_pts(src)
    assert len(keys) == 6
    spans = plan_chunks(src, 0.8)                 # 20 frames: every second keyframe
    assert [s.first_index for s in spans] == [0, 20, 40]
    assert [s.start for s in spans] == [keys[0], keys[2], keys[4]]
    assert [s.end for s in spans] == [keys[2], keys[4], None]
    assert spans[0].seek is None and all(s.seek is not None for s in spans[1:])
    assert len({s.t0 for s in spans}) == 1
    # A tail shorter than half a chunk stays with the chunk before it: 2.4 s in 1 s chunks is two.
    assert [s.first_index for s in plan_chunks(src, 1.0)] == [0, 30]
    assert len(plan_chunks(src, 2.0)) == 1        # shorter than 1.5 chunks: whole
    assert len(plan_chunks(src, 0)) == 1          # 0: off


def test_a_single_keyframe_is_one_chunk(make_video, tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=60, gop=300)
    assert len(keyframe_pts(src)) == 1
    (span,) = plan_chunks(src, 0.4)
    assert (span.first_index, span.end, span.seek) == (0, None, None)


def test_unsplittable_containers_stay_whole(make_video, tmp_path):
    src = make_video(tmp_path / "in.ts", frames=60, gop=10)
    assert len(plan_chunks(src, 0.8)) == 1


# --- joined = one pass ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["in.mp4", "in.mkv"])   # mkv: millisecond ticks put back on the grid
def test_chunked_output_matches_one_pass(make_video, probe, segmenter, tmp_path, name):
    src = long_clip(make_video, tmp_path / name)
    one = process_video(src, tmp_path / "one.mp4", OPTIONS, segmenter=segmenter)
    report = process_chunked(src, tmp_path / "chunked.mp4", OPTIONS, chunk_seconds=0.8, segmenter=segmenter)
    assert report.frames == one.frames == 60
    assert_same_video(probe, tmp_path / "one.mp4", tmp_path / "chunked.mp4", src)
    # The thumbnails of all chunks, numbered as in one pass, in one folder.
    names = sorted(p.name for p in (tmp_path / "one_thumbs").iterdir())
    assert sorted(p.name for p in (tmp_path / "chunked_thumbs").iterdir()) == names
    assert not list(tmp_path.glob(".*")), "no chunk folder or partial file left"


def test_joining_chunks_with_other_h264_parameters_fails(make_video, segmenter, tmp_path):
    src = long_clip(make_video, tmp_path / "in.mp4")
    spans = plan_chunks(src, 0.8)
    paths = []
    for i, (span, preset) in enumerate(zip(spans, ["ultrafast", "veryfast", "ultrafast"])):
        paths.append(tmp_path / f"{i}.mp4")
        process_video(src, paths[-1], ProcessOptions(preset=preset, thumb_every=0), segmenter=segmenter,
                      span=span)
    with pytest.raises(OutputError, match="other H.264 parameters"):
        join_chunks(src, paths, tmp_path / "out.mp4", t0=spans[0].t0)
    assert not (tmp_path / "out.mp4").exists() and not list(tmp_path.glob(".out*"))


# --- batch ----------------------------------------------------------------------------------------

@pytest.fixture
def data(make_video, tmp_path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    long_clip(make_video, root / "long.mp4")
    make_video(root / "short.mp4", frames=8)
    return root


def run_batch_cli(*args) -> tuple[int, dict]:
    result = CliRunner().invoke(main, ["batch", *map(str, args), "--json"])
    return result.exit_code, json.loads(result.stdout)


def chunks_of(rep: dict) -> dict[str, tuple[str, int]]:
    return {f["name"]: (f["status"], f["chunks"]) for f in rep["files"]}


@pytest.mark.parametrize("jobs", ["1", pytest.param("2", marks=pytest.mark.slow)])
def test_batch_chunks_long_videos_and_resumes(data, tiny_model, segmenter, probe, tmp_path, jobs):
    out = tmp_path / "out"
    args = [data, "-o", out, "--model", tiny_model, "--jobs", jobs, "--threads", "1",
            "--chunk-seconds", "0.8", *FAST]
    code, rep = run_batch_cli(*args, "--smooth", "0")
    assert code == 0, rep
    assert chunks_of(rep) == {"long.mp4": ("done", 3), "short.mp4": ("done", 0)}
    assert rep["chunk_seconds"] == 0.8
    assert {f["name"]: f["frames"] for f in rep["files"]} == {"long.mp4": 60, "short.mp4": 8}
    process_video(data / "long.mp4", tmp_path / "one.mp4",
                  ProcessOptions(preset="ultrafast", smooth=0, thumb_every=0), segmenter=segmenter)
    assert_same_video(probe, tmp_path / "one.mp4", out / "long.mp4", data / "long.mp4")
    manifest = json.loads((out / MANIFEST_NAME).read_text())["files"]
    assert manifest["long.mp4"]["chunks"] == 3 and manifest["long.mp4"]["frames"] == 60
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, "long.mp4", "short.mp4"]

    code, rep = run_batch_cli(*args, "--smooth", "0")     # up to date: skipped, chunked or not
    assert code == 0 and chunks_of(rep) == {"long.mp4": ("skipped", 0), "short.mp4": ("skipped", 0)}
    code, rep = run_batch_cli(*args, "--smooth", "0.5")   # other options: redone
    assert code == 0 and chunks_of(rep) == {"long.mp4": ("done", 3), "short.mp4": ("done", 0)}


def test_a_failed_chunk_fails_its_video_and_leaves_nothing(data, tiny_model, tmp_path, monkeypatch):
    import pipeline.chunks as chunks

    real = chunks.run_piece

    def flaky(piece, *args, **kwargs):
        if isinstance(piece, chunks.ChunkJob) and piece.index == 1:
            return chunks.JobResult(piece.name, piece.key, "failed", error=f"{piece.name}: disk full")
        return real(piece, *args, **kwargs)

    monkeypatch.setattr(chunks, "run_piece", flaky)
    out = tmp_path / "out"
    code, rep = run_batch_cli(data, "-o", out, "--model", tiny_model, "--jobs", "1",
                              "--chunk-seconds", "0.8", *FAST)
    assert code == 1
    assert chunks_of(rep) == {"long.mp4": ("failed", 3), "short.mp4": ("done", 0)}
    assert rep["files"][0]["error"] == "long.mp4 [chunk 2/3]: disk full"
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, "short.mp4"]   # no chunk folder
    assert set(json.loads((out / MANIFEST_NAME).read_text())["files"]) == {"short.mp4"}


@pytest.mark.slow
def test_batch_chunks_on_local_ray(data, tiny_model, segmenter, probe, tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed (optional: pip install 'blurvid[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024**2, log_to_driver=False)
    try:
        out = tmp_path / "out"
        code, rep = run_batch_cli(data, "-o", out, "--model", tiny_model, "--ray", "auto", "--threads", "1",
                                  "--chunk-seconds", "0.8", "--smooth", "0", *FAST)
    finally:
        ray.shutdown()
    assert code == 0, rep
    assert chunks_of(rep) == {"long.mp4": ("done", 3), "short.mp4": ("done", 0)}
    process_video(data / "long.mp4", tmp_path / "one.mp4",
                  ProcessOptions(preset="ultrafast", smooth=0, thumb_every=0), segmenter=segmenter)
    assert_same_video(probe, tmp_path / "one.mp4", out / "long.mp4", data / "long.mp4")
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, "long.mp4", "short.mp4"]
