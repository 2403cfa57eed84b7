"""`blurvid batch`: a folder of tiny videos through the real CLI, resuming, failures, worker processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.batch import (MANIFEST_NAME, default_parallelism, find_videos, input_fingerprint,
                            plan_batch)
from pipeline.cli import PROCESS_OPTIONS, main

REPO = Path(__file__).resolve().parents[1]
from helpers import make_tiny_model  # noqa: E402

FAST = ["--thumb-every", "0", "--preset", "ultrafast", "-q"]


@pytest.fixture
def data(make_video, tmp_path) -> Path:
    """data/a.mp4 (8 frames), data/sub/b.mkv (6 frames), data/notes.txt, data/.hidden.mp4."""
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    make_video(root / "a.mp4", size=(64, 48), frames=8)
    make_video(root / "sub" / "b.mkv", size=(64, 48), frames=6)
    (root / "notes.txt").write_text("not a video")
    (root / ".hidden.mp4").write_text("skipped: hidden")
    return root


def batch(*args) -> "click.testing.Result":  # noqa: F821
    return CliRunner().invoke(main, ["batch", *map(str, args)])


def report(*args) -> tuple[int, dict]:
    result = batch(*args, "--json")
    return result.exit_code, json.loads(result.stdout)


def statuses(rep: dict) -> dict[str, str]:
    return {f["name"]: f["status"] for f in rep["files"]}


# --- planning -------------------------------------------------------------------------------------

def test_finds_videos_by_extension_and_keeps_relative_paths(data, tmp_path):
    (data / "C.MOV").write_bytes(b"")          # extensions are matched case-insensitively
    assert [p.name for p in find_videos(data)] == ["C.MOV", "a.mp4"]
    assert [p.relative_to(data).as_posix() for p in find_videos(data, recursive=True)] == \
        ["C.MOV", "a.mp4", "sub/b.mkv"]
    jobs = plan_batch(data, tmp_path / "out", recursive=True)
    assert [(j.name, j.key) for j in jobs] == [("C.MOV", "C.mp4"), ("a.mp4", "a.mp4"), ("sub/b.mkv", "sub/b.mp4")]
    assert jobs[2].dst == tmp_path / "out" / "sub" / "b.mp4"


def test_output_folder_inside_the_input_is_not_an_input(data):
    (data / "out").mkdir()
    (data / "out" / "a.mp4").write_bytes(b"an earlier result")
    assert [j.name for j in plan_batch(data, data / "out", recursive=True)] == ["a.mp4", "sub/b.mkv"]


def test_default_parallelism_fits_the_cores():
    assert default_parallelism(1) == (1, 1)
    assert default_parallelism(2) == (1, 2)
    assert default_parallelism(8) == (4, 2)
    assert default_parallelism(6) == (3, 2)


def test_input_fingerprint_sees_changes_at_either_end(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(3 << 20))
    before = input_fingerprint(path)
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\1")
    assert input_fingerprint(path) != before
    shutil.copy(path, tmp_path / "copy.bin")      # a copy (new mtime) is the same input
    assert input_fingerprint(tmp_path / "copy.bin") == input_fingerprint(path)


# --- the command ----------------------------------------------------------------------------------

def test_batch_processes_the_folder_and_resumes(data, tiny_model, probe, tmp_path):
    out = tmp_path / "out"
    code, rep = report(data, "-o", out, "--recursive", "--model", tiny_model, "--jobs", "1", *FAST)
    assert code == 0, rep
    assert statuses(rep) == {"a.mp4": "done", "sub/b.mkv": "done"}
    assert (rep["done"], rep["skipped"], rep["failed"]) == (2, 0, 0)
    assert probe(out / "a.mp4")["frames"] == 8
    facts = probe(out / "sub" / "b.mp4")
    assert facts["frames"] == 6 and facts["audio"], "audio is kept"
    assert {f["name"]: f["frames"] for f in rep["files"]} == {"a.mp4": 8, "sub/b.mkv": 6}
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert set(manifest["files"]) == {"a.mp4", "sub/b.mp4"}
    assert manifest["files"]["a.mp4"]["options"]["model_precision"] == "auto"   # model options count too
    assert not list(out.rglob(".*partial*"))

    # Nothing changed: everything is skipped and the outputs are untouched.
    mtime = (out / "a.mp4").stat().st_mtime_ns
    code, rep = report(data, "-o", out, "--recursive", "--model", tiny_model, "--jobs", "1", *FAST)
    assert code == 0 and statuses(rep) == {"a.mp4": "skipped", "sub/b.mkv": "skipped"}
    assert (out / "a.mp4").stat().st_mtime_ns == mtime

    # A changed input is redone, the other skipped.
    a = data / "a.mp4"
    a.write_bytes(a.read_bytes() + b"\0")
    code, rep = report(data, "-o", out, "--recursive", "--model", tiny_model, "--jobs", "1", *FAST)
    assert statuses(rep) == {"a.mp4": "done", "sub/b.mkv": "skipped"}

    # Other options: both redone (replacing the outputs this batch made, no --overwrite needed).
    code, rep = report(data, "-o", out, "--recursive", "--model", tiny_model, "--jobs", "1", *FAST,
                       "--size", "32x24")
    assert code == 0 and statuses(rep) == {"a.mp4": "done", "sub/b.mkv": "done"}
    assert (probe(out / "a.mp4")["width"], probe(out / "a.mp4")["height"]) == (32, 24)

    # Another model (other weights): redone.
    other = make_tiny_model(tmp_path / "m2", "other")
    code, rep = report(data, "-o", out, "--recursive", "--model", other, "--jobs", "1", *FAST,
                       "--size", "32x24")
    assert statuses(rep) == {"a.mp4": "done", "sub/b.mkv": "done"}

    # Another precision (a load_segmenter option): redone.
    code, rep = report(data, "-o", out, "--recursive", "--model", other, "--jobs", "1", *FAST,
                       "--size", "32x24", "--precision", "fp32")
    assert statuses(rep) == {"a.mp4": "done", "sub/b.mkv": "done"}

    # --overwrite redoes what is up to date.
    code, rep = report(data, "-o", out, "--recursive", "--model", other, "--jobs", "1", *FAST,
                       "--size", "32x24", "--overwrite")
    assert statuses(rep) == {"a.mp4": "done", "sub/b.mkv": "done"}


def test_a_deleted_output_is_made_again(data, tiny_model, tmp_path):
    out = tmp_path / "out"
    assert report(data, "-o", out, "--model", tiny_model, "-j", "1", *FAST)[0] == 0
    (out / "a.mp4").unlink()
    code, rep = report(data, "-o", out, "--model", tiny_model, "-j", "1", *FAST)
    assert code == 0 and statuses(rep) == {"a.mp4": "done"} and (out / "a.mp4").is_file()


def test_one_failure_does_not_stop_the_batch(data, tiny_model, tmp_path):
    (data / "broken.mp4").write_text("hello")
    out = tmp_path / "out"
    result = batch(data, "-o", out, "--model", tiny_model, "-j", "1", *FAST)
    assert result.exit_code == 1
    table = result.stdout
    assert "broken.mp4" in table and "failed" in table and "1 done, 0 skipped, 1 failed" in table
    assert "failed: " in table and "not a video FFmpeg can read" in table   # the BlurvidError's message
    assert (out / "a.mp4").is_file() and not (out / "broken.mp4").exists()
    assert "Traceback" not in result.output
    header = table.splitlines()[0].split()
    assert header == ["file", "status", "frames", "fps", "seconds"]

    code, rep = report(data, "-o", out, "--model", tiny_model, "-j", "1", *FAST)
    assert code == 1 and statuses(rep) == {"a.mp4": "skipped", "broken.mp4": "failed"}
    failed = next(f for f in rep["files"] if f["status"] == "failed")
    assert "broken.mp4" in failed["error"]


def test_existing_output_it_did_not_make_needs_overwrite(data, tiny_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.mp4").write_bytes(b"someone else's")
    code, rep = report(data, "-o", out, "--model", tiny_model, "-j", "1", *FAST)
    assert code == 1 and "already exists" in rep["files"][0]["error"]
    assert (out / "a.mp4").read_bytes() == b"someone else's"
    code, rep = report(data, "-o", out, "--model", tiny_model, "-j", "1", *FAST, "--overwrite")
    assert code == 0 and statuses(rep) == {"a.mp4": "done"}


def test_two_inputs_for_one_output_fail_clearly(make_video, tiny_model, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    make_video(data / "clip.mov", frames=4)
    make_video(data / "clip.mp4", frames=4)
    code, rep = report(data, "-o", tmp_path / "out", "--model", tiny_model, "-j", "1", *FAST)
    assert code == 1 and statuses(rep) == {"clip.mov": "done", "clip.mp4": "failed"}
    assert "same output" in rep["files"][1]["error"]


@pytest.mark.slow
def test_worker_processes(data, tiny_model, probe, tmp_path):
    (data / "broken.mp4").write_text("hello")
    out = tmp_path / "out"
    code, rep = report(data, "-o", out, "-r", "--model", tiny_model, "--jobs", "2", "--threads", "1", *FAST)
    assert code == 1 and rep["jobs"] == 2
    assert statuses(rep) == {"a.mp4": "done", "broken.mp4": "failed", "sub/b.mkv": "done"}
    assert probe(out / "sub" / "b.mp4")["frames"] == 6
    assert set(json.loads((out / MANIFEST_NAME).read_text())["files"]) == {"a.mp4", "sub/b.mp4"}


def test_bad_model_stops_before_any_video(data, tmp_path):
    result = batch(data, "-o", tmp_path / "out", "--model", tmp_path / "nope.safetensors", *FAST)
    assert result.exit_code == 1 and "model file not found" in result.stderr
    assert not (tmp_path / "out").exists()


def test_no_videos_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = batch(tmp_path / "empty", "-o", tmp_path / "out")
    assert result.exit_code == 1 and "no videos found" in result.stderr and "--recursive" in result.stderr


def test_output_is_a_file(data, tmp_path):
    (tmp_path / "out").write_text("x")
    result = batch(data, "-o", tmp_path / "out")
    assert result.exit_code != 0


def test_jobs_and_ray_do_not_mix(data, tmp_path):
    result = batch(data, "-o", tmp_path / "o", "--jobs", "2", "--ray", "auto")
    assert result.exit_code == 2 and "--ray" in result.output


def test_process_and_batch_share_the_process_options():
    def names(command):
        return {p.name for p in main.commands[command].params}

    shared = names("process") & names("batch")
    assert len(PROCESS_OPTIONS) + 1 <= len(shared)      # every shared option, and --overwrite
    assert {"model_path", "blur", "background", "size", "crf", "smooth", "threads", "quiet"} <= shared
    assert names("process") - names("batch") == {"input_path", "output", "output_alpha", "matte"}


def test_makefile_batch_pattern_rules(tmp_path):
    """`make batch` has one output per video in data/, each built by `blurvid process` from its source."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    for path in ("pyproject.toml", "constraints.txt", "data/a.mkv", "data/b.mp4", "data/notes.txt",
                 ".venv/bin/activate",
                 "pipeline/models/person-unet-r18.safetensors"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x")
    dry = subprocess.run(["make", "-n", "-f", str(REPO / "Makefile"), "batch", "PROCESS_FLAGS=--blur 9"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    commands = sorted(line for line in dry.stdout.splitlines() if " process " in line)
    assert len(commands) == 2
    assert "process data/a.mkv -o output/a.mp4" in commands[0] and commands[0].endswith("--blur 9")
    assert "process data/b.mp4 -o output/b.mp4" in commands[1]
