"""`blurvid batch --ray` on a local Ray instance: one task per video, retries, failures reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray", reason="ray is not installed (optional: pip install 'blurvid[ray]')")

from pipeline.batch import MANIFEST_NAME, Manifest, plan_batch, prepare  # noqa: E402
from pipeline.cli import main  # noqa: E402
from pipeline.distributed import RETRIES, run_tasks  # noqa: E402
from pipeline.process import ProcessOptions  # noqa: E402

FAST = ["--thumb-every", "0", "--preset", "ultrafast", "-q"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance for this module; `--ray auto` finds it already running in the process."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024**2, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def data(make_video, tmp_path) -> Path:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    make_video(root / "a.mp4", frames=8)
    make_video(root / "sub" / "b.mkv", frames=6)
    (root / "broken.mp4").write_text("hello")
    return root


def test_no_cluster_is_one_clean_error(data, tiny_model, tmp_path):
    # First in the module: once local_ray is up, `--ray auto` would find it.
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}   # the local instance's
    proc = subprocess.run([sys.executable, "-m", "pipeline", "batch", str(data), "-o", str(tmp_path / "o"),
                           "--model", str(tiny_model), "--ray", "auto"], capture_output=True, text=True,
                          env=env, cwd=Path(__file__).resolve().parents[1], timeout=120)
    if proc.returncode == 0 or "cannot connect" not in proc.stderr:
        pytest.skip("a Ray cluster is running on this machine")
    assert proc.returncode == 1 and proc.stderr.startswith("Error: cannot connect to a Ray cluster")
    assert not (tmp_path / "o").exists()


def test_batch_on_ray(local_ray, data, tiny_model, probe, tmp_path):
    out = tmp_path / "out"
    args = ["batch", str(data), "-o", str(out), "-r", "--model", str(tiny_model), "--ray", "auto",
            "--threads", "1", "--json", *FAST]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    rep = json.loads(result.stdout)
    assert {f["name"]: f["status"] for f in rep["files"]} == \
        {"a.mp4": "done", "broken.mp4": "failed", "sub/b.mkv": "done"}
    assert "not a video FFmpeg can read" in rep["files"][1]["error"]   # a BlurvidError: not retried
    assert "attempts" not in rep["files"][1]["error"]
    assert probe(out / "a.mp4")["frames"] == 8
    facts = probe(out / "sub" / "b.mp4")
    assert facts["frames"] == 6 and facts["audio"]
    assert set(json.loads((out / MANIFEST_NAME).read_text())["files"]) == {"a.mp4", "sub/b.mp4"}

    result = CliRunner().invoke(main, args)                 # resumes like a local batch
    rep = json.loads(result.stdout)
    assert [f["status"] for f in rep["files"]] == ["skipped", "failed", "skipped"]


def _todo(data: Path, out: Path, tiny_model: Path):
    jobs = [j for j in plan_batch(data, out, recursive=True) if j.name != "broken.mp4"]
    todo, _ = prepare(jobs, ProcessOptions(thumb_every=0, preset="ultrafast"), tiny_model, Manifest(out))
    return todo


def test_a_failed_task_is_retried_once(local_ray, data, tiny_model, tmp_path):
    attempts = tmp_path / "attempts"
    attempts.mkdir()

    def flaky(job, options, model_path, device, segmenter):
        from pipeline.batch import process_job

        (attempts / f"{job.key.replace('/', '_')}-{len(list(attempts.iterdir()))}").touch()
        if job.name == "a.mp4" and len([p for p in attempts.iterdir() if p.name.startswith("a.mp4")]) == 1:
            raise RuntimeError("worker hiccup")
        return process_job(job, options, model_path, device, segmenter)

    results = {job.name: result for job, _, result in
               run_tasks(_todo(data, tmp_path / "out", tiny_model), model_path=tiny_model,
                         device="cpu", threads=1, job_fn=flaky)}
    assert {name: r.status for name, r in results.items()} == {"a.mp4": "done", "sub/b.mkv": "done"}
    assert len([p for p in attempts.iterdir() if p.name.startswith("a.mp4")]) == 2
    assert (tmp_path / "out" / "a.mp4").is_file()


def test_a_task_that_keeps_failing_is_reported(local_ray, data, tiny_model, tmp_path):
    attempts = tmp_path / "attempts"
    attempts.mkdir()

    def broken(job, options, model_path, device, segmenter):
        (attempts / f"{job.key.replace('/', '_')}-{len(list(attempts.iterdir()))}").touch()
        raise RuntimeError("always fails")

    results = [result for _, _, result in
               run_tasks(_todo(data, tmp_path / "out", tiny_model), model_path=tiny_model,
                         device="cpu", threads=1, job_fn=broken)]
    assert [r.status for r in results] == ["failed", "failed"]
    assert all("always fails" in r.error and f"{RETRIES + 1} attempts" in r.error for r in results)
    assert len(list(attempts.iterdir())) == 2 * (RETRIES + 1)


