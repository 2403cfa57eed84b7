"""`blurvid batch --ray`: one Ray task per video, the model shipped once through the object store.

    for job, record, result in run_tasks(todo, model_path=None, device="cpu", address="auto"):
        print(result.name, result.status)

Every node needs blurvid installed and must see the input and output folders at the same paths (a
shared filesystem): each task reads its video and writes its output (atomically, as always) there.
A long video is split into chunks (pipeline.chunks), one task each; they write chunk files into a
folder beside the output, and the driver joins them (no re-encoding) once all are back.
The model's files are put in the object store once and written to a temporary folder on each
worker, which loads them once. A task that crashes or raises something unexpected is retried once,
then reported as failed; a BlurvidError (a bad input) is a result, not retried.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.batch import Job, JobResult, init_worker, process_job, worker_model_kwargs
from pipeline.errors import BlurvidError, ModelError

if TYPE_CHECKING:
    from pipeline.process import ProcessOptions
    from pipeline.segment import Segmenter

RETRIES = 1         # a failed task runs once more before it is reported
TASK_THREADS = 2    # CPUs (and torch threads) per task unless --threads says otherwise


def connect(address: str) -> None:
    """ray.init(address) unless this process already has Ray running (e.g. a local instance)."""
    try:
        import ray
    except ImportError as e:
        raise BlurvidError("--ray needs Ray: pip install 'blurvid[ray]'") from e
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise BlurvidError(f"cannot connect to a Ray cluster at {address!r} ({e}); start one with "
                           "`ray start --head` or give its address (ray://HOST:10001 or HOST:6379)") from e


def model_blob(model_path: Path | None) -> dict[str, Any]:
    """The model's files as bytes: {"name": file name, "files": {file name: bytes}, "sha256": ...}.

    A "deeplabv3" name ships no files: torchvision's weights are read from each node's torch cache.
    """
    from pipeline.deeplab import MODELS as DEEPLAB_MODELS, how_to_get
    from pipeline.segment import model_files

    if model_path is not None and str(model_path) in DEEPLAB_MODELS:
        (checkpoint,) = model_files(model_path)
        if not checkpoint.is_file():
            raise ModelError(how_to_get(str(model_path)))
        return {"name": str(model_path), "files": {}, "sha256": f"{model_path}:{checkpoint.stat().st_size}"}
    paths = model_files(model_path)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ModelError(f"{missing[0]}: model file not found")
    files = {p.name: p.read_bytes() for p in paths}
    digest = hashlib.sha256(b"".join(files[s] for s in sorted(files))).hexdigest()
    return {"name": paths[0].name, "files": files, "sha256": digest}


_loaded: dict[tuple[str, str], Segmenter] = {}   # per worker process: model sha and device -> Segmenter
_threads_set = False


def _worker_segmenter(blob: dict[str, Any], device: str, model_kwargs: dict[str, Any]) -> Segmenter:
    from pipeline.segment import load_segmenter

    model_kwargs = worker_model_kwargs(model_kwargs)
    key = (blob["sha256"], device, tuple(sorted(model_kwargs.items())))
    if key not in _loaded and not blob["files"]:   # a model by name (deeplabv3): this node's cache
        _loaded[key] = load_segmenter(blob["name"], device=device, **model_kwargs)
    if key not in _loaded:
        with tempfile.TemporaryDirectory(prefix="blurvid-model-") as folder:
            for name, data in blob["files"].items():
                (Path(folder) / name).write_bytes(data)
            path = Path(folder) / blob["name"]
            _loaded[key] = load_segmenter(path, device=device, **model_kwargs)
    return _loaded[key]


def _task(job: Job, options: ProcessOptions, blob: dict[str, Any], device: str, threads: int,
          model_kwargs: dict[str, Any], job_fn: Callable[..., JobResult]) -> JobResult:
    """Runs on a Ray worker: Ray hands `blob` over from the object store (one copy per node)."""
    global _threads_set
    if not _threads_set:
        init_worker(threads)
        _threads_set = True
    return job_fn(job, options, None, device, _worker_segmenter(blob, device, model_kwargs))


def run_tasks(todo: list[tuple[Job, ProcessOptions, dict]], *, model_path: Path | None, device: str,
              address: str = "auto", threads: int = TASK_THREADS, model_kwargs: dict[str, Any] | None = None,
              job_fn: Callable[..., JobResult] = process_job) -> Iterator[tuple[Job, dict, JobResult]]:
    """Submits one task per (job, options, record) and yields (job, record, result) as each finishes.

    Each task asks Ray for `threads` CPUs and runs with that many torch/OpenCV threads and loads the
    model with load_segmenter(..., **model_kwargs) (e.g. precision). `job_fn` is
    what a task does with its video (process_job; tests pass a flaky one).
    """
    import ray

    connect(address)
    blob = ray.put(model_blob(model_path))   # once; every task gets this reference
    task = ray.remote(_task).options(num_cpus=threads, max_retries=RETRIES, retry_exceptions=True)
    pending = {task.remote(job, opts, blob, device, threads, model_kwargs or {}, job_fn): (job, record)
               for job, opts, record in todo}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                job, record = pending.pop(ref)
                yield job, record, _outcome(job, ref)
    finally:
        for ref in pending:   # stopped early (Ctrl-C): do not leave the cluster busy
            ray.cancel(ref, force=True)


def _outcome(job: Job, ref) -> JobResult:
    import ray
    from ray.exceptions import RayError, RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as e:   # raised by the task twice: the original exception is its cause
        cause = e.cause if getattr(e, "cause", None) is not None else e
        reason = f"{type(cause).__name__}: {cause}".splitlines()[0]
    except RayError as e:       # the worker or its node died twice, or the task was cancelled
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return JobResult(job.name, job.key, "failed",
                     error=f"{job.name}: {reason} (after {RETRIES + 1} attempts)")
