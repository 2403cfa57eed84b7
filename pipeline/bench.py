"""Speed benchmark: `blurvid process` against the reference pipeline, on the same clips in one run.

    python -m pipeline.bench --shared ../shared --json output/bench.json          # make bench
    python -m pipeline.bench --shared ../shared --json output/bench.json --quick  # 1 run per clip
    python -m pipeline.bench --only batch --quick         # the batch section alone, small
    python -m pipeline.bench --levers                     # segmentation ms/frame: size, batch, precision

The reference is what a first fastai script does: per frame, resize to 640×360, one fastai
`learn.predict` (a real Learner from stock `unet_learner(resnet18)`, random weights), Gaussian blur
k=61 over the whole frame, float alpha blend, OpenCV VideoWriter mp4v. It is slow, so it is timed on
the first `ref_frames` frames of each clip and its FPS extrapolated to the whole clip.

Ours is `process_video` with default options, each run in a fresh child process so that its peak RSS
(VmHWM, see peak_rss_kb) and warm caches are its own. Numbers are medians over `runs` runs.

The batch section (`batch` in --only) times `blurvid batch` on 8 short clips with --jobs 1, --jobs 2
and a local Ray, and a long clip whole against in chunks: videos per minute (bench_batch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

REF_SIZE = (640, 360)   # (w, h) the reference pipeline works and writes at
REF_BLUR = 61           # the reference's Gaussian kernel
STAGES = ("decode", "segment", "composite", "encode")


@dataclass(frozen=True)
class Case:
    """One benchmarked input: a clip and the `process` options that differ from the defaults."""

    name: str
    path: Path
    size: tuple[int, int] | None = None   # --size
    reference: bool = True                # also time the reference pipeline on it
    note: str = ""
    options: tuple[tuple[str, object], ...] = ()   # other process options (ProcessOptions, backend, precision)


@dataclass
class CaseResult:
    name: str
    clip: str
    note: str
    src_size: tuple[int, int]
    out_size: tuple[int, int]
    frames: int
    runs: list[dict] = field(default_factory=list)   # one child report per run
    fps: float = 0.0                                 # medians over runs from here on
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_ms_per_frame: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    wall_seconds: float = 0.0                        # the whole child: imports and model load too
    ref_fps: float | None = None
    ref_frames_timed: int | None = None
    ratio: float | None = None                       # ours / reference, FPS


# --- inputs ---------------------------------------------------------------------------------------

def make_clip(path: Path, src: Path, *, size: tuple[int, int], seconds: float, fps: int = 30,
              audio: bool = True) -> Path:
    """A clip of `src`'s frames scaled to `size` (H.264 + AAC tone), `src` looped when it is shorter:
    real content at any size and length."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial.mp4")
    frames = round(seconds * fps)
    with av.open(str(src)) as inp, av.open(str(tmp), "w") as out:
        video = out.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "veryfast"})
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        sound = out.add_stream("aac", rate=48000, layout="stereo") if audio else None
        decoded = inp.decode(video=0)
        written = 0
        while written < frames:
            frame = next(decoded, None)
            if frame is None:   # a short source: from the start again
                inp.seek(0)
                decoded = inp.decode(video=0)
                continue
            rgb = cv2.resize(frame.to_ndarray(format="rgb24"), size, interpolation=cv2.INTER_CUBIC)
            vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            vf.pts = written
            out.mux(video.encode(vf))
            written += 1
        out.mux(video.encode())
        if sound is not None:
            n, chunk = round(seconds * 48000), 1024
            tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(n) / 48000)).astype(np.float32)
            for start in range(0, n, chunk):
                part = np.ascontiguousarray(np.stack([tone[start:start + chunk]] * 2))
                af = av.AudioFrame.from_ndarray(part, format="fltp", layout="stereo")
                af.sample_rate, af.pts, af.time_base = 48000, start, Fraction(1, 48000)
                out.mux(sound.encode(af))
            out.mux(sound.encode())
    tmp.rename(path)
    return path


def default_cases(shared: Path, cache: Path) -> list[Case]:
    """The clips of DESIGN.md §5: a long low-res clip, a 720p talking head, 1080p, and 640×360 output."""
    media = shared / "media"
    long_clip = media / "one-by-one.mp4"
    talking = media / "talking" / "s18.mp4"
    hd = make_clip(cache / "talking-1080p-5s.mp4", talking, size=(1920, 1080), seconds=5)
    short = make_clip(cache / "one-by-one-10s.mp4", long_clip, size=(768, 432), seconds=10, fps=10,
                      audio=False)
    ten_minutes = make_clip(cache / "one-by-one-10min.mp4", long_clip, size=(768, 432), seconds=600, fps=10,
                            audio=False)
    return [
        Case("one-by-one", long_clip, note="139 s, 768×432, 10 fps"),
        # the speed levers one at a time (issue #4): without mask reuse, then also in torch
        Case("one-by-one no-reuse", long_clip, reference=False, options=(("reuse", 0.0),),
             note="--reuse 0: the model on every frame"),
        Case("one-by-one torch", long_clip, reference=False, options=(("reuse", 0.0), ("backend", "torch")),
             note="--reuse 0 --backend torch: the network in torch (bf16), not int8 ONNX Runtime"),
        Case("one-by-one@640x360", long_clip, size=(640, 360), reference=False,
             note="--size 640x360 (the reference's output size)"),
        Case("talking-720p", talking, note="s18.mp4, 1280×720, 30 fps"),
        Case("talking-720p@640x360", talking, size=(640, 360), reference=False,
             note="--size 640x360: the reference's output size"),
        Case("synthetic-1080p", hd, note="s18 upscaled to 1920×1080, 5 s, AAC"),
        Case("one-by-one-10s", short, reference=False,
             note="first 10 s of one-by-one: peak RSS vs the 139 s run"),
        Case("one-by-one-10min", ten_minutes, reference=False,
             note="one-by-one looped to 10 min: peak RSS vs 10 s"),
    ]


# --- the reference pipeline -----------------------------------------------------------------------

def reference_learner(model_path: Path, work_dir: Path, size: tuple[int, int] = REF_SIZE):
    """The reference posts' Learner: stock `unet_learner(resnet18, pretrained=False, n_out=2)`.

    Stock means fastai's default U-Net options (last_cross=True: a full-resolution ResBlock at the
    end), which blurvid's model drops for speed, so our weights do not fit it: it runs with random
    weights, which costs the same time. No Resize in its transforms, so `predict` runs the network
    at the size it is given (640×360).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastai.data.block import DataBlock
        from fastai.data.transforms import Normalize, get_image_files
        from fastai.vision.core import imagenet_stats
        from fastai.vision.data import ImageBlock, MaskBlock
        from fastai.vision.learner import unet_learner
        from fastai.vision.models import resnet18

    from pipeline.segment import load_model

    _, config = load_model(model_path)
    images, masks = work_dir / "images", work_dir / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(exist_ok=True)
    w, h = size
    for i in range(2):   # unet_learner needs DataLoaders: two dummy pairs at the working size
        cv2.imwrite(str(images / f"{i}.png"), np.full((h, w, 3), 100 + i, np.uint8))
        cv2.imwrite(str(masks / f"{i}.png"), np.zeros((h, w), np.uint8))
    block = DataBlock(blocks=(ImageBlock, MaskBlock(codes=list(config.classes))),
                      get_items=get_image_files, get_y=lambda p: masks / p.name,
                      batch_tfms=[Normalize.from_stats(*imagenet_stats)])
    dls = block.dataloaders(images, bs=1, num_workers=0, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learn = unet_learner(dls, resnet18, pretrained=False, n_out=len(config.classes))
    learn.model.eval()
    return learn, config.person_index


def run_reference(src: Path, dst: Path, learn, person_index: int, max_frames: int,
                  size: tuple[int, int] = REF_SIZE) -> dict:
    """The reference pipeline on the first `max_frames` frames of `src` -> `dst` (mp4v, 640×360)."""
    from fastai.vision.core import PILImage

    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25
    out = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    frames = 0
    started = time.perf_counter()
    try:
        while frames < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            bgr = cv2.resize(bgr, size)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, _, probs = learn.predict(PILImage.create(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
            pha = probs[person_index].numpy().astype(np.float32)[..., None]   # [h, w, 1]
            bgr_blur = cv2.GaussianBlur(bgr, (REF_BLUR, REF_BLUR), 0)
            com = pha * bgr.astype(np.float32) + (1 - pha) * bgr_blur.astype(np.float32)
            out.write(com.astype(np.uint8))
            frames += 1
    finally:
        cap.release()
        out.release()
    seconds = time.perf_counter() - started
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds if seconds else 0.0}


# --- ours, in a child process ---------------------------------------------------------------------

def run_ours(case: Case, model_path: Path, out_dir: Path, *, threads: int | None = None,
             extra: dict | None = None, env: dict[str, str] | None = None) -> dict:
    """One `process_video` run of `case` in a fresh Python: its report, peak RSS and wall time."""
    spec = {"src": str(case.path), "dst": str(out_dir / f"{case.name}.mp4"), "model": str(model_path),
            "size": case.size, "threads": threads, "options": extra or {}}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline.bench", "--child", json.dumps(spec)],
                          capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark run of {case.name} failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = time.perf_counter() - started
    return result


def peak_rss_kb() -> int:
    """This process's peak resident memory in kB: VmHWM, the high-water mark of its own address space.

    Not ru_maxrss: Linux carries the parent's peak into a child across fork + exec, so a child of
    this benchmark (whose parent holds the fastai reference) would report the parent's memory.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # elsewhere: kB on Linux, bytes on macOS


def _child(spec_json: str) -> None:
    """Runs in the child: process one clip, print a JSON line with the report and peak RSS."""
    spec = json.loads(spec_json)
    import torch

    from pipeline.process import ProcessOptions, process_video
    from pipeline.segment import load_segmenter, pipeline_threads

    torch.set_num_threads(spec["threads"] or pipeline_threads())   # what `blurvid process` does
    seg_opts = {k: spec["options"].pop(k) for k in ("precision", "backend") if k in spec["options"]}
    segmenter = load_segmenter(spec["model"], threads=spec["threads"], **seg_opts)
    size = tuple(spec["size"]) if spec["size"] else None
    options = ProcessOptions(size=size, overwrite=True, **spec["options"])
    report = process_video(spec["src"], spec["dst"], options, segmenter=segmenter)
    rss_kb = peak_rss_kb()
    print(json.dumps({"frames": report.frames, "reused": report.reused, "seconds": report.seconds,
                      "fps": report.fps, "backend": segmenter.backend,
                      "stage_seconds": dict(report.stage_seconds), "peak_rss_mb": rss_kb / 1024,
                      "torch_threads": torch.get_num_threads(),
                      "precision": getattr(segmenter, "precision", None)}))


# --- the benchmark --------------------------------------------------------------------------------

def clip_facts(path: Path) -> tuple[tuple[int, int], int]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = s.frames or round(float(s.duration * s.time_base * s.average_rate))
        return (s.width, s.height), frames


def bench_case(case: Case, model_path: Path, work: Path, *, runs: int, learn=None,
               person_index: int = 1, ref_frames: int = 24, ref_size: tuple[int, int] = REF_SIZE,
               log=print) -> CaseResult:
    src_size, frames = clip_facts(case.path)
    res = CaseResult(name=case.name, clip=str(case.path), note=case.note, src_size=src_size,
                     out_size=case.size or src_size, frames=frames)
    if case.reference and learn is not None:
        ref = run_reference(case.path, work / f"{case.name}-reference.mp4", learn, person_index,
                            ref_frames, ref_size)
        res.ref_fps, res.ref_frames_timed = ref["fps"], ref["frames"]
        log(f"  reference: {ref['frames']} frames in {ref['seconds']:.1f} s = {ref['fps']:.2f} fps")
    for i in range(runs):
        r = run_ours(case, model_path, work, extra=dict(case.options))
        res.runs.append(r)
        log(f"  run {i + 1}/{runs}: {r['frames']} frames, {r['fps']:.2f} fps, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB")
    med = statistics.median
    res.frames = res.runs[0]["frames"]
    res.fps = med(r["fps"] for r in res.runs)
    res.stage_seconds = {s: med(r["stage_seconds"].get(s, 0.0) for r in res.runs) for s in STAGES}
    res.stage_ms_per_frame = {s: 1000 * v / max(res.frames, 1) for s, v in res.stage_seconds.items()}
    res.peak_rss_mb = med(r["peak_rss_mb"] for r in res.runs)
    res.wall_seconds = med(r["wall_seconds"] for r in res.runs)
    if res.ref_fps:
        res.ratio = res.fps / res.ref_fps
    return res


def machine_facts() -> dict:
    import torch

    flags = ""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        model = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")).split(":", 1)[1].strip()
    except (OSError, StopIteration):
        model = platform.processor()
    import fastai

    return {
        "cpu": model, "cores": os.cpu_count(), "platform": platform.platform(),
        "load_average_1m": os.getloadavg()[0],   # other work on the machine skews every number
        "cpu_flags": sorted(f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")
                            if f in flags.split()),
        "torch_threads_default": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "fastai": fastai.__version__, "av": av.__version__, "opencv": cv2.__version__,
                     "numpy": np.__version__},
    }


def resolve_model(model: Path | None, work: Path, log=print) -> tuple[Path, bool]:
    """The model to time and whether it is the trained one; a random one of the same config otherwise."""
    from pipeline.segment import DEFAULT_MODEL, ModelConfig, build_unet, save_model

    path = model or DEFAULT_MODEL
    if path.with_suffix(".safetensors").is_file():
        return path, True
    if model is not None:
        raise SystemExit(f"{model}: model file not found")
    log(f"NOTE: {DEFAULT_MODEL} does not exist yet: timing a RANDOMLY INITIALISED model of the same "
        "config (speed does not depend on the weights; the outputs are meaningless)")
    import torch

    torch.manual_seed(0)
    return save_model(build_unet(ModelConfig()), ModelConfig(), work / "random-unet-r18.safetensors"), False


def run_bench(cases: list[Case], *, model: Path | None = None, runs: int = 3, ref_frames: int = 24,
              work: Path, ref_size: tuple[int, int] = REF_SIZE, log=print) -> dict:
    """Benchmark `cases`; returns the JSON-ready result (machine, model, per-clip numbers).

    `ref_size` is the reference's working size: 640×360 (a smaller one only makes tests fast).
    """
    model_path, trained = resolve_model(model, work, log)
    learn, person_index = reference_learner(model_path, work / "ref-data", ref_size)
    results = []
    for case in cases:
        log(f"{case.name}: {case.path.name} {case.note}")
        results.append(bench_case(case, model_path, work, runs=runs, learn=learn if case.reference else None,
                                  person_index=person_index, ref_frames=ref_frames, ref_size=ref_size,
                                  log=log))
    with av.open(str(cases[0].path)) as clip:   # bf16 vs fp32 on real frames, with this model
        src = [f.to_ndarray(format="rgb24") for _, f in zip(range(8), clip.decode(video=0))]
    from pipeline.onnx_backend import int8_path
    from pipeline.segment import load_model

    w, h = load_model(model_path)[1].work_size
    small = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in src])
    checks = {"bf16_vs_fp32": precision_check(model_path, small, backend="torch", precision="bf16")}
    if int8_path(model_path).exists():
        checks["int8_vs_fp32"] = precision_check(model_path, small, backend="onnx")
    by_name = {r.name: r for r in results}
    rss = {n: by_name[n].peak_rss_mb for n in ("one-by-one-10s", "one-by-one", "one-by-one-10min")
           if n in by_name}
    return {
        "machine": machine_facts(),
        "model": {"path": str(model_path), "trained": trained},
        "runs_per_clip": runs,
        "reference": {"description": f"per frame: resize to {ref_size[0]}x{ref_size[1]}, fastai "
                      f"learn.predict, GaussianBlur k={REF_BLUR} on the whole frame, float blend, "
                      "OpenCV VideoWriter mp4v",
                      "model": "stock unet_learner(resnet18, pretrained=False, n_out=2): fastai's default "
                               "U-Net options (last_cross=True), random weights (speed only)",
                      "frames_timed": ref_frames,
                      "extrapolated": "FPS over the first frames_timed frames, taken as the whole clip's"},
        "clips": [asdict(r) for r in results],
        "rss_short_vs_long_mb": rss,
        **checks,
    }


def print_table(result: dict) -> None:
    trained = "trained" if result["model"]["trained"] else "RANDOM (default model missing)"
    m = result["machine"]
    run = result["clips"][0]["runs"][0]
    print(f"\nmodel: {result['model']['path']} [{trained}]; {m['cores']} cores; torch threads "
          f"{run['torch_threads']}; medians of {result['runs_per_clip']} run(s)")
    print(f"{'clip':<22}{'in':>10}{'out':>10}{'frames':>7}{'backend':>10}{'reused':>7}{'ours fps':>9}"
          f"{'ref fps':>8}{'ratio':>7}   ms/frame: {'dec':>5}{'seg':>6}{'comp':>6}{'enc':>6}{'RSS MB':>8}")
    for c in result["clips"]:
        ref = f"{c['ref_fps']:.2f}" if c["ref_fps"] else "-"
        ratio = f"{c['ratio']:.0f}×" if c["ratio"] else "-"
        ms = c["stage_ms_per_frame"]
        first = c["runs"][0]
        backend = first.get("backend", "?") if first.get("backend") != "torch" else f"torch {first['precision']}"
        reused = f"{first.get('reused', 0) / max(first['frames'], 1):.0%}"
        print(f"{c['name']:<22}{'x'.join(map(str, c['src_size'])):>10}{'x'.join(map(str, c['out_size'])):>10}"
              f"{c['frames']:>7}{backend:>10}{reused:>7}{c['fps']:>9.2f}{ref:>8}{ratio:>7}"
              f"   {'':>9}{ms['decode']:>5.1f}{ms['segment']:>6.1f}{ms['composite']:>6.1f}{ms['encode']:>6.1f}"
              f"{c['peak_rss_mb']:>8.0f}")
    print(f"reference FPS measured on the first {result['reference']['frames_timed']} frames of each clip "
          "and extrapolated to the clip; stage times overlap (decode and encode run in their own threads)")


# --- batch: videos per minute, jobs vs Ray, chunked vs whole --------------------------------------

BATCH_CLIPS = 8   # short clips in the batch figure (issue #6)


def cut_clip(path: Path, src: Path, *, start: float, seconds: float) -> Path:
    """Whole GOPs of `src`'s video from its first keyframe at or after `start`, for about `seconds`,
    copied without re-encoding and timed from 0: a real clip that keeps the source's keyframes.

    Meant for sources with closed GOPs (one-by-one.mp4: a keyframe every second); video only.
    """
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial.mp4")
    start, seconds = (Fraction(x).limit_denominator(10**6) for x in (start, seconds))   # 0.4 s is 2/5
    with av.open(str(src)) as inp, av.open(str(tmp), "w") as out:
        video = inp.streams.video[0]
        copy = out.add_stream_from_template(video)
        first = None
        for packet in inp.demux(video):
            if packet.size == 0 or packet.pts is None:
                continue
            if packet.is_keyframe:
                if first is None and packet.pts * video.time_base >= start:
                    first = packet.pts
                elif first is not None and (packet.pts - first) * video.time_base >= seconds:
                    break
            if first is None:
                continue
            packet.pts -= first
            if packet.dts is not None:
                packet.dts -= first
            packet.stream = copy
            out.mux(packet)
    if first is None:
        tmp.unlink(missing_ok=True)
        raise SystemExit(f"{src}: no keyframe at or after {start} s")
    tmp.rename(path)
    return path


def batch_clips(shared: Path, cache: Path, *, quick: bool) -> tuple[list[Path], Path, dict]:
    """8 short clips and one long one, cut from one-by-one.mp4 (768×432, 10 fps, keyframe every 1 s)."""
    src = shared / "media" / "one-by-one.mp4"
    short_s, long_s = (1, 20) if quick else (3, 60)
    shorts = [cut_clip(cache / f"batch-{short_s}s" / f"clip{i}.mp4", src, start=5 + i * (short_s + 2),
                       seconds=short_s) for i in range(BATCH_CLIPS)]
    long_clip = cut_clip(cache / f"one-by-one-first-{long_s}s.mp4", src, start=0, seconds=long_s)
    about = {"short": f"{BATCH_CLIPS} × {short_s} s cut from {src.name} at keyframes (stream copy, no audio)",
             "long": f"the first {long_s} s of {src.name} (of 139 s; stream copy), to keep the bench bearable"}
    return shorts, long_clip, about


def run_batch_child(args: list[str], *, ray_cpus: int | None = None) -> dict:
    """`blurvid batch ARGS --json` in a fresh Python (with a local Ray of `ray_cpus` CPUs first)."""
    spec = {"args": ["batch", *args, "--json", "-q"], "ray_cpus": ray_cpus}
    proc = subprocess.run([sys.executable, "-m", "pipeline.bench", "--batch-child", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"batch benchmark run {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _batch_child(spec_json: str) -> None:
    """Runs in the child: the batch command, timed from the call (Ray's start-up timed apart)."""
    import contextlib
    import io

    from pipeline.cli import main as cli

    spec = json.loads(spec_json)
    ray_init = None
    if spec["ray_cpus"]:
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=spec["ray_cpus"], include_dashboard=False, log_to_driver=False)
        ray_init = time.perf_counter() - t0
    printed = io.StringIO()
    try:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(printed):
            code = cli.main(spec["args"], standalone_mode=False)
        seconds = time.perf_counter() - t0
    finally:
        if ray_init is not None:
            ray.shutdown()
    report = json.loads(printed.getvalue())
    if code or report["failed"]:
        raise SystemExit(f"batch failed: {[f['error'] for f in report['files'] if f['error']]}")
    print(json.dumps({"seconds": seconds, "ray_init_seconds": ray_init, "videos": report["done"],
                      "frames": sum(f["frames"] for f in report["files"]),
                      "chunks": sum(f["chunks"] for f in report["files"])}))


def bench_batch(shorts: list[Path], long_clip: Path, model_path: Path, work: Path, *, chunk_seconds: float,
                runs: int = 1, cores: int | None = None, ray: bool = True, about: dict | None = None,
                log=print) -> dict:
    """Videos per minute for `shorts` with --jobs 1, --jobs 2 and Ray local; `long_clip` whole vs chunked.

    Each configuration is `blurvid batch` (default options) into an empty folder in a fresh Python,
    timed from the command's start (model load and worker start-up included; Ray's own start-up is
    reported apart); medians over `runs`. Ray local is ray.init(num_cpus=cores) with --threads
    cores/2, so it runs two tasks at once as --jobs 2 does.
    """
    cores = cores or os.cpu_count() or 1
    half = str(max(1, cores // 2))
    folder = work / "batch-in"
    folder.mkdir(parents=True, exist_ok=True)
    for clip in shorts:
        link = folder / clip.name
        if not link.exists():
            link.symlink_to(clip.resolve())
    long_folder = work / "batch-long"
    long_folder.mkdir(exist_ok=True)
    if not (long_folder / long_clip.name).exists():
        (long_folder / long_clip.name).symlink_to(long_clip.resolve())
    chunk = ["--chunk-seconds", f"{chunk_seconds:g}"]
    configs = [("--jobs 1", folder, ["--jobs", "1"], None),
               ("--jobs 2", folder, ["--jobs", "2"], None),
               (f"Ray local ({cores} CPUs, --threads {half})", folder, ["--ray", "auto", "--threads", half], cores),
               ("long: whole (--jobs 1)", long_folder, ["--jobs", "1"], None),
               (f"long: chunked (--jobs 2, {chunk_seconds:g} s chunks)", long_folder, ["--jobs", "2", *chunk], None),
               (f"long: chunked (Ray local, {chunk_seconds:g} s chunks)", long_folder,
                ["--ray", "auto", "--threads", half, *chunk], cores)]
    if not ray:
        configs = [c for c in configs if c[3] is None]
    rows = []
    for i, (name, src, extra, ray_cpus) in enumerate(configs):
        done = []
        for r in range(runs):
            out = work / f"batch-out-{i}-{r}"
            done.append(run_batch_child([str(src), "-o", str(out), "--model", str(model_path), *extra],
                                        ray_cpus=ray_cpus))
            shutil.rmtree(out, ignore_errors=True)
        seconds = statistics.median(d["seconds"] for d in done)
        row = {"config": name, "seconds": seconds, "videos": done[0]["videos"], "frames": done[0]["frames"],
               "chunks": done[0]["chunks"], "videos_per_minute": 60 * done[0]["videos"] / seconds,
               "fps": done[0]["frames"] / seconds, "runs": [d["seconds"] for d in done],
               "ray_init_seconds": done[0]["ray_init_seconds"]}
        rows.append(row)
        log(f"  {name}: {row['videos']} video(s), {row['frames']} frames in {seconds:.1f} s = "
            f"{row['videos_per_minute']:.1f} videos/min, {row['fps']:.1f} fps")
    return {"about": about or {}, "cores": cores, "chunk_seconds": chunk_seconds, "runs": runs,
            "timed": "blurvid batch in a fresh Python from the command's start: model load and worker "
                     "start-up included, Ray's start-up (ray_init_seconds) not",
            "configs": rows}


def print_batch_table(batch: dict) -> None:
    print(f"\nbatch: {batch['about'].get('short', '')}; long clip: {batch['about'].get('long', '')}")
    print(f"{'config':<46}{'videos':>7}{'frames':>8}{'chunks':>7}{'seconds':>9}{'videos/min':>11}{'fps':>7}")
    for c in batch["configs"]:
        print(f"{c['config']:<46}{c['videos']:>7}{c['frames']:>8}{c['chunks'] or '-':>7}{c['seconds']:>9.1f}"
              f"{c['videos_per_minute']:>11.1f}{c['fps']:>7.1f}")
    print("timed from the batch command's start (model load, worker start-up; not Ray's own start-up); "
          f"median of {batch['runs']} run(s)")


# --- levers: segmentation alone -------------------------------------------------------------------

def lever_table(model_path: Path | None = None, *, sizes=((256, 144), (224, 128), (192, 112), (160, 96)),
                batches=(1, 4, 8), precisions=("fp32", "bf16"), repeats: int = 8, log=print) -> list[dict]:
    """ms/frame of the segmenter alone for each work size × batch size × precision (median of repeats)."""
    import torch

    from pipeline.segment import ModelConfig, UnetSegmenter, build_unet, load_model

    if model_path is not None and Path(model_path).with_suffix(".safetensors").is_file():
        model, config = load_model(model_path)
    else:
        torch.manual_seed(0)
        config = ModelConfig()
        model = build_unet(config)
    rows = []
    rng = np.random.default_rng(0)
    for size in sizes:
        for precision in precisions:
            seg = UnetSegmenter(model, config, work_size=size, precision=precision)
            for bs in batches:
                x = rng.integers(0, 256, (bs, size[1], size[0], 3), dtype=np.uint8)
                for _ in range(2):
                    seg(x)
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    seg(x)
                    times.append(time.perf_counter() - t0)
                ms = 1000 * statistics.median(times) / bs
                rows.append({"work_size": size, "precision": precision, "batch": bs, "ms_per_frame": ms})
                log(f"{size[0]}x{size[1]} {precision} batch {bs}: {ms:.1f} ms/frame")
    return rows


def precision_check(model_path: Path | None, frames: np.ndarray, **variant) -> dict:
    """How far a segmenter variant (load_segmenter keywords: precision="bf16", backend="onnx") is from
    the torch fp32 network on `frames`: max/mean abs diff of the probabilities, mask agreement."""
    from pipeline.segment import load_segmenter

    ref = load_segmenter(model_path, backend="torch", precision="fp32")(frames)
    low = load_segmenter(model_path, **variant)(frames)
    diff = np.abs(ref - low)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "mask_agreement": float(((ref > 0.5) == (low > 0.5)).mean())}


# --- command line ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared"), help="the shared folder (media/)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="one run per clip instead of three")
    parser.add_argument("--runs", type=int, default=None, help="runs per clip (default 3, 1 with --quick)")
    parser.add_argument("--ref-frames", type=int, default=24, help="frames the reference is timed on")
    parser.add_argument("--model", type=Path, default=None, help="model to time (default: the shipped one)")
    parser.add_argument("--only", nargs="+", default=None, metavar="CLIP",
                        help="only these clips; 'batch' is the batch section (videos per minute)")
    parser.add_argument("--levers", action="store_true", help="segmentation ms/frame table instead")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--batch-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child)
        return
    if args.batch_child:
        _batch_child(args.batch_child)
        return
    if args.levers:
        rows = lever_table(args.model)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"machine": machine_facts(), "levers": rows}, indent=2) + "\n")
        return
    media = args.shared / "media"
    if not media.is_dir():
        raise SystemExit(f"{media}: not found (give --shared, the folder that holds media/)")
    cache = Path.home() / ".cache" / "blurvid" / "bench"
    cases = default_cases(args.shared, cache)
    with_batch = not args.only or "batch" in args.only
    if args.only:
        unknown = set(args.only) - {c.name for c in cases} - {"batch"}
        if unknown:
            raise SystemExit(f"unknown clip(s) {sorted(unknown)}; choose from "
                             f"{[c.name for c in cases] + ['batch']}")
        cases = [c for c in cases if c.name in args.only]
    runs = args.runs or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="blurvid-bench-") as tmp:
        work = Path(tmp)
        if cases:
            result = run_bench(cases, model=args.model, runs=runs, ref_frames=args.ref_frames, work=work)
        else:
            model_path, trained = resolve_model(args.model, work)
            result = {"machine": machine_facts(), "model": {"path": str(model_path), "trained": trained}}
        if with_batch:
            print(f"batch: {BATCH_CLIPS} short clips and a long one{' (--quick: shorter)' if args.quick else ''}")
            shorts, long_clip, about = batch_clips(args.shared, cache, quick=args.quick)
            result["batch"] = bench_batch(shorts, long_clip, Path(result["model"]["path"]), work,
                                          chunk_seconds=5 if args.quick else 15, runs=runs, about=about)
    if cases:
        print_table(result)
    if with_batch:
        print_batch_table(result["batch"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
