"""The `blurvid` command: through click's CliRunner and as a real subprocess, good and bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_empty_video
from pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def clip(make_video, tmp_path) -> Path:
    return make_video(tmp_path / "in.mp4", size=(96, 64), frames=10)


def blurvid(*args) -> "click.testing.Result":  # noqa: F821
    return CliRunner().invoke(main, [str(a) for a in args])


def test_process_writes_video_and_thumbnails(clip, tiny_model, probe, tmp_path):
    out = tmp_path / "out.mp4"
    result = blurvid("process", clip, "-o", out, "--model", tiny_model, "--thumb-every", "5", "--quiet")
    assert result.exit_code == 0, result.output
    facts = probe(out)
    assert facts["frames"] == 10 and (facts["width"], facts["height"]) == (96, 64)
    assert len(list((tmp_path / "out_thumbs").glob("*.jpg"))) == 2

    result = blurvid("preview", tmp_path / "out_thumbs")
    assert result.exit_code == 0
    assert (tmp_path / "out_thumbs" / "contact_sheet.png").is_file()
    html = (tmp_path / "out_thumbs" / "index.html").read_text()
    assert "out.mp4" in html       # the gallery plays the output found beside the thumbnails


def test_process_options_reach_the_pipeline(clip, tiny_model, probe, tmp_path):
    out = tmp_path / "o.mp4"
    result = blurvid("process", clip, "-o", out, "--model", tiny_model, "--size", "48x32",
                     "--work-size", "32x32", "--crf", "30", "--preset", "ultrafast", "--blur", "5",
                     "--thumb-every", "0", "--batch-size", "3", "--threads", "1", "--quiet")
    assert result.exit_code == 0, result.output
    facts = probe(out)
    assert (facts["width"], facts["height"]) == (48, 32)
    assert not (tmp_path / "o_thumbs").exists()


def _bad_inputs(tmp_path: Path, clip: Path, tiny_model: Path) -> dict[str, tuple[list, str]]:
    """name -> (arguments after `process`, text the one-line error must contain)."""
    text = tmp_path / "notes.mp4"
    text.write_text("hello")
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(clip.read_bytes()[: clip.stat().st_size // 3])
    empty = make_empty_video(tmp_path / "empty.mkv")
    exists = tmp_path / "exists.mp4"
    exists.write_bytes(b"keep me")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    corrupt_model = tmp_path / "bad.safetensors"
    corrupt_model.write_bytes(b"\0" * 64)
    (tmp_path / "bad.json").write_text(tiny_model.with_suffix(".json").read_text())
    out = tmp_path / "out.mp4"
    m = ["--model", tiny_model]
    return {
        "missing input": ([tmp_path / "nope.mp4", "-o", out, *m], "nope.mp4"),
        "directory": ([tmp_path, "-o", out, *m], "folder"),
        "text file": ([text, "-o", out, *m], "notes.mp4"),
        "truncated": ([truncated, "-o", out, *m], "cut.mp4"),
        "zero frames": ([empty, "-o", out, *m], "no video frames"),
        "unwritable folder": ([clip, "-o", locked / "o.mp4", *m], "locked"),
        "output exists": ([clip, "-o", exists, *m], "exists"),
        "output is input": ([clip, "-o", clip, "--overwrite", *m], "input"),
        "unknown model": ([clip, "-o", out, "--model", tmp_path / "model.onnx"], "model.onnx"),
        "corrupt model": ([clip, "-o", out, "--model", corrupt_model], "bad.safetensors"),
        "bad blur": ([clip, "-o", out, "--blur", "0", *m], "--blur"),
        "bad size": ([clip, "-o", out, "--size", "big", *m], "--size"),
        "bad device": ([clip, "-o", out, "--device", "tpu", *m], "--device"),
    }


BAD_CASES = ["missing input", "directory", "text file", "truncated", "zero frames", "unwritable folder",
             "output exists", "output is input", "unknown model", "corrupt model", "bad blur", "bad size",
             "bad device"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_one_line_nonzero_no_output(case, clip, tiny_model, tmp_path):
    if case == "unwritable folder" and os.geteuid() == 0:
        pytest.skip("root can write to read-only folders")
    args, needle = _bad_inputs(tmp_path, clip, tiny_model)[case]
    before = set(tmp_path.rglob("*"))
    result = CliRunner().invoke(main, ["process", *map(str, args)])
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and result.exception is None or isinstance(result.exception, SystemExit)
    error_lines = [line for line in lines if line.lower().startswith("error")]
    assert len(error_lines) == 1 and needle in lines[-1], result.stderr
    assert set(tmp_path.rglob("*")) == before      # no partial output, no thumbnails, no temp files


def test_missing_output_folder_is_created(clip, tiny_model, tmp_path):
    out = tmp_path / "a" / "b" / "out.mp4"
    result = blurvid("process", clip, "-o", out, "--model", tiny_model, "--quiet")
    assert result.exit_code == 0, result.output
    assert out.is_file()


def test_subprocess_error_is_one_clean_line(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("hello")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "process", str(text), "-o",
                           str(tmp_path / "o.mp4")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("Error: ")
    assert "notes.mp4" in proc.stderr
    assert not (tmp_path / "o.mp4").exists()


def test_subprocess_happy_path(clip, tiny_model, probe, tmp_path):
    out = tmp_path / "o.mp4"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "process", str(clip), "-o", str(out),
                           "--model", str(tiny_model)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert probe(out)["frames"] == 10
    assert "10 frames" in proc.stderr          # the summary line after the progress bar


def test_help_lists_every_command():
    result = blurvid("--help")
    for command in ("process", "preview", "train", "evaluate", "frames", "label"):
        assert command in result.output
