"""A folder of videos → a folder of results, resumable, in parallel worker processes.

    jobs = plan_batch(Path("data"), Path("output"), recursive=True)
    results = run_batch(jobs, ProcessOptions(blur=30), model_path=None, workers=2)
    print(format_table(results))

Every output keeps its input's relative path, as .mp4. A manifest in the output folder
(.blurvid-manifest.json) records what produced each file: the input (size plus a hash of its first and
last MiB), the model (sha256 of its files) and the options. A later run skips a file whose record
still matches and redoes one whose input, model or options changed. One file failing never stops
the others; its BlurvidError message is its reason.

Workers are separate processes ('spawn'), each loading the model once and running the normal
streaming pipeline (pipeline.process) with `threads` torch/OpenCV threads. Only the parent writes the
manifest, after each file, so an interrupted batch keeps everything finished so far. With
`chunk_seconds`, long videos are split at keyframes into chunks that run as separate pieces and are
joined by the parent without re-encoding (pipeline.chunks); the manifest records the joined output.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import BlurvidError, OutputError

if TYPE_CHECKING:  # pipeline.process imports torch; workers set their thread counts before that
    from pipeline.process import ProcessOptions
    from pipeline.segment import Segmenter

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".avi", ".m4v", ".ts"})
MANIFEST_NAME = ".blurvid-manifest.json"
MANIFEST_VERSION = 1
HASH_BYTES = 1 << 20  # the input fingerprint hashes this much of the start and of the end of the file


@dataclass(frozen=True)
class Job:
    """One video of a batch: where it comes from and goes to."""

    src: Path    # the input video
    dst: Path    # the output .mp4
    name: str    # src relative to the input folder, as shown in the report
    key: str     # dst relative to the output folder: the manifest's key


@dataclass
class JobResult:
    """What happened to one video: status is 'done', 'skipped' or 'failed' (with the reason in error)."""

    name: str
    output: str
    status: str
    frames: int = 0
    fps: float = 0.0
    seconds: float = 0.0
    error: str | None = None
    chunks: int = 0    # pieces the video was processed in (pipeline.chunks); 0: whole


def default_parallelism(cores: int | None = None) -> tuple[int, int]:
    """(jobs, threads per job) that fit the machine: half the cores as jobs, the cores shared among them.

    Each job also runs a decode and an encode thread beside the model's threads, so one job per core
    would oversubscribe; two cores per job keeps every core busy without that.
    """
    cores = cores or _cores()
    jobs = max(1, cores // 2)
    return jobs, max(1, cores // jobs)


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    return max(1, (cores or _cores()) // jobs)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# --- planning -------------------------------------------------------------------------------------

def find_videos(folder: Path, *, recursive: bool = False, exclude: Path | None = None) -> list[Path]:
    """Video files in `folder` by extension, sorted; hidden files and folders and `exclude` are left out."""
    folder = Path(folder)
    exclude = exclude.resolve() if exclude is not None else None
    found = []
    for path in folder.rglob("*") if recursive else folder.iterdir():
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue   # .partial files, .git, the manifest
        if exclude is not None and (path.resolve() == exclude or exclude in path.resolve().parents):
            continue   # the output folder inside the input folder
        if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file():
            found.append(path)
    return sorted(found)


def plan_batch(input_dir: Path, output_dir: Path, *, recursive: bool = False) -> list[Job]:
    """One Job per video in `input_dir`, its output at the same relative path under `output_dir` as .mp4."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    jobs = []
    for src in find_videos(input_dir, recursive=recursive, exclude=output_dir):
        rel = src.relative_to(input_dir)
        key = rel.with_suffix(".mp4").as_posix()
        jobs.append(Job(src=src, dst=output_dir / key, name=rel.as_posix(), key=key))
    return jobs


# --- fingerprints and the manifest ----------------------------------------------------------------

def input_fingerprint(path: Path) -> dict[str, Any]:
    """Size plus sha256 of the first and last MiB: survives copying (mtime does not), cheap on big files."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(HASH_BYTES))
        if size > HASH_BYTES:
            f.seek(max(HASH_BYTES, size - HASH_BYTES))
            digest.update(f.read(HASH_BYTES))
    return {"size": size, "head_tail_sha256": digest.hexdigest()}


def model_fingerprint(path: Path | None) -> str:
    """sha256 over the model's files (weights, and the JSON config beside safetensors weights)."""
    from pipeline.segment import model_files

    digest = hashlib.sha256()
    for file in model_files(path):
        try:
            with open(file, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        except OSError:
            return "missing"   # loading the model reports it properly
    return digest.hexdigest()


def options_record(options: ProcessOptions) -> dict[str, Any]:
    """The options that shape an output, as JSON-ready values (overwrite only says how to write it)."""
    record = json.loads(json.dumps(asdict(options), default=str))
    record.pop("overwrite", None)
    return record


class Manifest:
    """OUTPUT_DIR/.blurvid-manifest.json: output key -> what produced it. Written atomically."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / MANIFEST_NAME
        self.files: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                raw = json.loads(self.path.read_text())
                if raw.get("version") == MANIFEST_VERSION and isinstance(raw.get("files"), dict):
                    self.files = raw["files"]
            except (ValueError, OSError, AttributeError):
                pass   # unreadable: everything counts as not made by us, so nothing is skipped wrongly

    def is_current(self, job: Job, record: dict[str, Any]) -> bool:
        old = self.files.get(job.key)
        return (old is not None and job.dst.is_file()
                and all(old.get(k) == v for k, v in record.items()))

    def made(self, job: Job) -> bool:
        return job.key in self.files

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.partial-{os.getpid()}")
        tmp.write_text(json.dumps({"version": MANIFEST_VERSION, "files": self.files}, indent=1,
                                  sort_keys=True) + "\n")
        os.replace(tmp, self.path)


# --- running --------------------------------------------------------------------------------------

_segmenters: dict[tuple, Segmenter] = {}  # per worker process: loaded once, reused for every video


def init_worker(threads: int) -> None:
    """Worker process start: thread counts first, before torch is imported and sizes its pools."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def worker_model_kwargs(model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """load_segmenter keywords in a worker process: ONNX Runtime gets the worker's share of the
    cores too (init_worker gave it to torch), not every core."""
    import torch

    return {"threads": torch.get_num_threads(), **model_kwargs}


def _segmenter(model_path: Path | None, device: str, model_kwargs: dict[str, Any]) -> Segmenter:
    from pipeline.segment import load_segmenter

    model_kwargs = worker_model_kwargs(model_kwargs)
    key = (str(model_path), device, tuple(sorted(model_kwargs.items())))
    if key not in _segmenters:
        _segmenters[key] = load_segmenter(model_path, device=device, **model_kwargs)
    return _segmenters[key]


def process_job(job: Job, options: ProcessOptions, model_path: Path | None, device: str,
                segmenter: Segmenter | None = None, model_kwargs: dict[str, Any] | None = None) -> JobResult:
    """Run one video through process_video; a BlurvidError becomes a 'failed' result with its message.

    Without `segmenter`, the model is loaded once per process: load_segmenter(model_path, device,
    **model_kwargs) (e.g. precision).
    """
    from pipeline.process import process_video

    try:
        report = process_video(job.src, job.dst, options,
                               segmenter=segmenter or _segmenter(model_path, device, model_kwargs or {}))
    except BlurvidError as e:
        return JobResult(job.name, job.key, "failed", error=str(e))
    return JobResult(job.name, job.key, "done", frames=report.frames, fps=report.fps,
                     seconds=report.seconds)


def prepare(jobs: Iterable[Job], options: ProcessOptions, model_path: Path | None, manifest: Manifest,
            *, redo: bool = False, model_kwargs: dict[str, Any] | None = None,
            ) -> tuple[list[tuple[Job, ProcessOptions, dict]], list[JobResult]]:
    """Splits jobs into (to run, with their options and manifest record) and results already known.

    Up to date (the manifest's record matches): skipped, unless `redo`. A stale output this batch made
    is replaced; an existing output it did not make is only replaced with `redo` (--overwrite).
    """
    model = model_fingerprint(model_path)
    settings = options_record(options)
    if model_kwargs:   # e.g. precision: it changes the masks too
        settings = {**settings, **{f"model_{k}": v for k, v in model_kwargs.items()}}
    todo, known = [], []
    seen: dict[str, Job] = {}
    for job in jobs:
        if job.key in seen:   # clip.mov and clip.mp4 would both write clip.mp4
            known.append(JobResult(job.name, job.key, "failed",
                                   error=f"{job.name}: same output as {seen[job.key].name} ({job.key}); "
                                         "rename one of them"))
            continue
        seen[job.key] = job
        try:
            record = {"input": input_fingerprint(job.src), "model": model, "options": settings}
        except OSError as e:
            known.append(JobResult(job.name, job.key, "failed", error=f"{job.src}: cannot read ({e.strerror})"))
            continue
        if not redo and manifest.is_current(job, record):
            old = manifest.files[job.key]
            known.append(JobResult(job.name, job.key, "skipped", frames=old.get("frames", 0)))
            continue
        overwrite = redo or manifest.made(job)
        todo.append((job, replace(options, overwrite=overwrite), record))
    return todo, known


def run_batch(jobs: list[Job], options: ProcessOptions, output_dir: Path, *, model_path: Path | None = None,
              device: str = "cpu", workers: int = 1, threads: int | None = None, redo: bool = False,
              segmenter: Segmenter | None = None, model_kwargs: dict[str, Any] | None = None,
              ray_address: str | None = None, chunk_seconds: float | None = None,
              on_result: Callable[[JobResult], None] | None = None) -> list[JobResult]:
    """Process every job not already up to date; returns one result per job, in the jobs' order.

    `workers` > 1 runs that many spawned processes with `threads` threads each (default: the cores
    shared among them); 1 (or a single file to do) runs here, with `segmenter` if given, leaving this
    process's thread settings alone. `model_kwargs` go to load_segmenter where a model is loaded
    (e.g. precision). `ray_address` runs one task per video on that Ray cluster
    instead (pipeline.distributed; `threads` CPUs per task). `chunk_seconds` splits videos longer
    than 1.5 times that into chunks at keyframes, processed as separate pieces (in parallel, like
    videos) and joined without re-encoding (pipeline.chunks). The manifest is updated after each
    finished file. `on_result` is called as each result is known (skipped ones first).
    """
    from pipeline.chunks import ChunkJob, run_piece, split_jobs

    manifest = Manifest(output_dir)
    model_kwargs = model_kwargs or {}
    todo, known = prepare(jobs, options, model_path, manifest, redo=redo, model_kwargs=model_kwargs)
    results = {r.name: r for r in known}
    for result in known:
        if on_result:
            on_result(result)

    def finish(job: Job, result: JobResult, record: dict) -> None:
        if result.status == "done":
            manifest.files[job.key] = {**record, "source": job.name, "frames": result.frames,
                                       "chunks": result.chunks,
                                       "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            manifest.save()
        results[job.name] = result
        if on_result:
            on_result(result)

    pieces, chunked, unplanned = split_jobs(todo, chunk_seconds)
    for job, record, result in unplanned:
        finish(job, result, record)

    def landed(piece: Job | ChunkJob, result: JobResult, record: dict) -> None:
        """A piece is back: a whole video is finished; a chunked one once its last chunk is in."""
        if isinstance(piece, ChunkJob):
            video = chunked[piece.key]
            if video.add(piece, result):
                finish(piece.job, video.finish(), record)
        else:
            finish(piece, result, record)

    try:
        _run_pieces(pieces, landed, run_piece, model_path=model_path, device=device, workers=workers,
                    threads=threads, segmenter=segmenter, model_kwargs=model_kwargs,
                    ray_address=ray_address)
    finally:
        for video in chunked.values():   # stopped early: no chunk folder is left behind
            video.cleanup()
    return [results[job.name] for job in jobs]


def _run_pieces(todo: list[tuple], landed: Callable, run_piece: Callable, *, model_path: Path | None,
                device: str, workers: int, threads: int | None, segmenter: Segmenter | None,
                model_kwargs: dict[str, Any], ray_address: str | None) -> None:
    """Runs each (piece, options, record) on Ray, in worker processes or here; landed() as each ends."""
    if ray_address is not None and todo:
        from pipeline.distributed import TASK_THREADS, run_tasks

        for job, record, result in run_tasks(todo, model_path=model_path, device=device,
                                             address=ray_address, threads=threads or TASK_THREADS,
                                             model_kwargs=model_kwargs, job_fn=run_piece):
            landed(job, result, record)
    elif workers <= 1 or len(todo) <= 1:
        for job, opts, record in todo:
            landed(job, run_piece(job, opts, model_path, device, segmenter, model_kwargs), record)
    else:
        context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools and locks
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context,
                                 initializer=init_worker,
                                 initargs=(threads or threads_per_job(workers),)) as pool:
            pending = {pool.submit(run_piece, job, opts, model_path, device, None, model_kwargs):
                       (job, record)
                       for job, opts, record in todo}
            try:
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        job, record = pending.pop(future)
                        landed(job, _outcome(job, future), record)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise


def _outcome(job: Job, future) -> JobResult:
    """A worker's result, or a failure when the worker itself died (a crash is a bug, but one file's)."""
    try:
        return future.result()
    except Exception as e:  # BrokenProcessPool, an unexpected error: reported for this file, batch goes on
        return JobResult(job.name, job.key, "failed", error=f"{job.name}: {type(e).__name__}: {e}")


# --- reporting ------------------------------------------------------------------------------------

def summary(results: list[JobResult]) -> dict[str, int]:
    return {status: sum(r.status == status for r in results) for status in ("done", "skipped", "failed")}


def format_table(results: list[JobResult]) -> str:
    """A plain-text table (file, status, frames, fps, seconds), then one line per failure's reason."""
    rows = [("file", "status", "frames", "fps", "seconds")]
    for r in results:
        ran = r.status == "done"
        rows.append((r.name, r.status, str(r.frames) if r.frames else "-",
                     f"{r.fps:.1f}" if ran else "-", f"{r.seconds:.1f}" if ran else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             .rstrip() for row in rows]
    counts = summary(results)
    lines.append(", ".join(f"{n} {status}" for status, n in counts.items()))
    lines += [f"failed: {r.error}" for r in results if r.status == "failed"]
    return "\n".join(lines)


def json_report(results: list[JobResult], **about: Any) -> dict[str, Any]:
    """The machine-readable report: `about` (folders, model, jobs), the counts and one entry per file."""
    return {**about, **summary(results), "files": [asdict(r) for r in results]}


def check_output_dir(output_dir: Path) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"{output_dir}: is a file; give a folder for the outputs")
