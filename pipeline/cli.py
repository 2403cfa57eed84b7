"""The `blurvid` command line: parse, validate, call the library. Nothing else lives here.

    blurvid process input.mp4 -o out.mp4
    blurvid preview out_thumbs/
    blurvid train data/me -o models/me.safetensors --from pipeline/models/person-unet-r18.safetensors

User errors (pipeline.errors.BlurvidError) print one line on stderr and exit 1; bad option values
exit 2 (click's usage errors).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from pipeline.errors import BlurvidError
from pipeline.onnx_backend import BACKENDS

DEVICES = ("auto", "cpu", "cuda")


class SizeType(click.ParamType):
    """A WxH size such as 640x360."""

    name = "WxH"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            w, h = (int(v) for v in str(value).lower().split("x"))
        except ValueError:
            self.fail(f"{value!r} is not a size like 640x360", param, ctx)
        if not (2 <= w <= 16384 and 2 <= h <= 16384):
            self.fail(f"{value!r}: width and height must be between 2 and 16384", param, ctx)
        return w, h


SIZE = SizeType()


class BlurvidGroup(click.Group):
    """Turns user errors into one clean line on stderr instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BlurvidError as e:
            raise click.ClickException(str(e)) from e


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("no CUDA device is available here", param_hint="--device")
    return device


def _set_threads(threads: int | None) -> None:
    import torch

    from pipeline.segment import pipeline_threads

    if threads:
        import cv2

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
    else:   # one core is left to decoding and encoding, which run beside the model
        torch.set_num_threads(pipeline_threads())


@click.group(cls=BlurvidGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="blurvid")
def main() -> None:
    """Blur or replace the background behind people in video files."""


def _check_background(ctx, param, value: str) -> str:
    """--background: fail now, before the model loads, on a missing file or an unknown colour."""
    from pipeline.backgrounds import check_background

    try:
        check_background(value)
    except BlurvidError as e:
        raise click.BadParameter(str(e), ctx, param) from e
    return value


def _check_alpha_output(ctx, param, value: Path | None) -> Path | None:
    """--output-alpha: a name whose format can hold alpha (.mov, .webm, a folder)."""
    from pipeline.outputs import alpha_format

    if value is not None:
        try:
            alpha_format(value)
        except BlurvidError as e:
            raise click.BadParameter(str(e), ctx, param) from e
    return value


model_option = click.option(
    "--model", "model_path", type=click.Path(path_type=Path), default=None,
    help="Model file: NAME.safetensors (+ NAME.json), or a fastai learn.export() .pkl "
         "(pickle runs code: only load files you trust), or 'deeplabv3' / 'deeplabv3-resnet50' "
         "(torchvision's DeepLabv3, weights from the torch cache). Default: the shipped person model.")


# How one video is processed: shared by `process` and `batch`, so both take the same options.
# Parameter names match ProcessOptions fields; process_options() picks them out by name.
PROCESS_OPTIONS = [
    model_option,
    click.option("--blur", type=click.IntRange(1, 100), default=21, show_default=True,
                 help="Background blur strength (1 = light, 100 = heavy)."),
    click.option("--background", metavar="SPEC", default="blur", show_default=True,
                 callback=_check_background,
                 help="What goes behind the person: 'blur', an image or video file (looped), or a colour "
                      "(#00ff00, green, 0,255,0)."),
    click.option("--background-fit", type=click.Choice(["cover", "stretch"]), default="cover",
                 show_default=True, help="How an image or video background fills the frame: "
                                         "cover (scale and crop, keep its shape) or stretch."),
    click.option("--light-wrap", type=click.FloatRange(0, 1), default=0.0, show_default=True,
                 help="Let the new background's light spill over the person's edge (0: off, 1: most)."),
    click.option("--smooth", type=click.FloatRange(0, 1), default=0.7, show_default=True,
                 help="Temporal smoothing of the mask where the model is unsure (0: off)."),
    click.option("--reuse", type=click.FloatRange(0, 1, max_open=True), default=0.005, show_default=True,
                 metavar="FRACTION",
                 help="Reuse the last mask for a frame where under this fraction of pixels changed since "
                      "the model last ran (at most 3 frames in a row; 0: run the model on every frame)."),
    click.option("--zoom", is_flag=True,
                 help="Look closer at the people: the model segments a crop around them instead of the "
                      "whole frame (sharper masks of small, full-body people; MODEL.md, Person zoom)."),
    click.option("--side-by-side", is_flag=True, help="Show the result and the mask side by side "
                                                       "(the output is twice as wide)."),
    click.option("--size", type=SIZE, default=None, help="Output size WxH (default: the source's)."),
    click.option("--work-size", type=SIZE, default=None,
                 help="Model input size WxH (default: the model's, fitted to the video's aspect)."),
    click.option("--crf", type=click.IntRange(0, 51), default=20, show_default=True,
                 help="H.264 quality: lower is better and bigger."),
    click.option("--preset", type=click.Choice(["ultrafast", "superfast", "veryfast", "faster", "fast",
                                                "medium", "slow", "slower", "veryslow"]),
                 default="veryfast", show_default=True, help="H.264 encoder speed preset."),
    click.option("--thumb-every", type=click.IntRange(min=0), default=25, show_default=True,
                 help="Save every Nth frame as a JPEG beside the output (0: none)."),
    click.option("--batch-size", type=click.IntRange(1, 256), default=4, show_default=True,
                 help="Frames per model call."),
    click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True),
    click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto",
                 show_default=True,
                 help="Model arithmetic: bf16 is ~2x faster where the CPU/GPU has it (auto picks it there)."),
    click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
                 help="Where the model runs: onnx is the int8 ONNX Runtime copy of its weights (2.5x faster "
                      "on a CPU; auto uses it on the CPU when the model has one), torch the network itself."),
    click.option("--threads", type=click.IntRange(min=1), default=None,
                 help="CPU threads for the model and OpenCV, per video (default: all cores but one; in batch, "
                      "the cores divided among the jobs)."),
    click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
]


def shared_process_options(command):
    """Decorator: PROCESS_OPTIONS on a command, in that order in its --help."""
    for option in reversed(PROCESS_OPTIONS):
        command = option(command)
    return command


def process_options(params: dict, **overrides):
    """ProcessOptions from a command's parameters: each one named like a field (the one place)."""
    from dataclasses import fields

    from pipeline.process import ProcessOptions

    names = {f.name for f in fields(ProcessOptions)}
    return ProcessOptions(**{k: v for k, v in {**params, **overrides}.items() if k in names})


def process_options_named(*names: str):
    """Decorator: the PROCESS_OPTIONS with these parameter names, so another command checks them alike."""
    by_name = {option(lambda: None).__click_params__[0].name: option for option in PROCESS_OPTIONS}

    def decorate(command):
        for name in reversed(names):
            command = by_name[name](command)
        return command
    return decorate


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output .mp4 file.")
@shared_process_options
@click.option("--output-alpha", type=click.Path(path_type=Path), default=None,
              callback=_check_alpha_output,
              help="Also write the person with transparency: FILE.mov (ProRes 4444), FILE.webm (VP9) "
                   "or a folder (PNG sequence).")
@click.option("--matte", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the soft mask as a greyscale H.264 video (.mp4).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def process(input_path: Path, output: Path, model_path: Path | None, blur: int, background: str,
            background_fit: str, light_wrap: float, smooth: float, output_alpha: Path | None,
            matte: Path | None, side_by_side: bool, size, work_size,
            crf: int, preset: str, thumb_every: int, batch_size: int, device: str,
            threads: int | None, precision: str, backend: str, reuse: float, zoom: bool, overwrite: bool,
            quiet: bool) -> None:
    """Blur or replace the background behind people in INPUT: an H.264 mp4 with INPUT's audio."""
    from tqdm import tqdm

    from pipeline.process import process_video
    from pipeline.segment import load_segmenter
    from pipeline.video import VideoReader

    _set_threads(threads)
    with VideoReader(input_path):   # a bad input is reported before the model is loaded
        pass
    options = process_options(click.get_current_context().params)
    segmenter = load_segmenter(model_path, device=_resolve_device(device), precision=precision,
                               backend=backend, threads=threads)
    bars: list[tqdm] = []   # made once the input has opened, so a bad input prints only its error

    def start(info) -> None:
        bars.append(tqdm(total=info.frames, unit="frame", disable=quiet, desc=input_path.name,
                         dynamic_ncols=True))

    try:
        report = process_video(input_path, output, options, segmenter=segmenter,
                               progress=lambda n: bars[0].update(n), on_start=start)
    finally:
        for bar in bars:
            bar.close()
    if not quiet:
        click.echo(f"{output}: {report.frames} frames in {report.seconds:.1f} s "
                   f"({report.fps:.1f} fps)", err=True)


@main.command()
@click.argument("input_dir", metavar="INPUT_DIR",
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", "output_dir", type=click.Path(file_okay=False, path_type=Path),
              required=True, help="Folder for the results: each video's relative path, as .mp4.")
@click.option("-r", "--recursive", is_flag=True, help="Also the videos in subfolders.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Videos processed at once, each in its own process (default: half the cores).")
@click.option("--ray", "ray_address", metavar="auto|ADDRESS", default=None,
              help="Run one task per video (per chunk of a long one) on a Ray cluster instead ('auto': "
                   "the running one). Every node needs blurvid and the same paths to INPUT_DIR and "
                   "OUTPUT_DIR.")
@click.option("--chunk-seconds", type=click.FloatRange(min=0), default=None, metavar="S",
              help="Split videos longer than 1.5*S seconds into chunks of about S at keyframes, processed "
                   "in parallel and joined without re-encoding (mask smoothing restarts at each chunk). "
                   "0: off. Default: off; 60 with --ray.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report instead of the table.")
@shared_process_options
@click.option("--overwrite", is_flag=True,
              help="Redo every video, also those whose output is up to date, and replace outputs "
                   "this batch did not make.")
def batch(input_dir: Path, output_dir: Path, recursive: bool, jobs: int | None, ray_address: str | None,
          chunk_seconds: float | None, as_json: bool, model_path: Path | None, device: str, precision: str,
          backend: str, threads: int | None, overwrite: bool, quiet: bool, **_: object) -> None:
    """Process every video in INPUT_DIR into OUTPUT_DIR; skips outputs that are up to date.

    Videos: mp4 mov mkv webm mpg mpeg avi m4v ts. A file that fails is reported and the rest go on;
    the exit status is 1 if any failed. OUTPUT_DIR/.blurvid-manifest.json records what made each
    output, so a rerun only redoes what changed (input, model or options)."""
    import json

    from tqdm import tqdm

    from pipeline.batch import (VIDEO_EXTENSIONS, check_output_dir, default_parallelism, format_table,
                                json_report, plan_batch, run_batch)
    from pipeline.chunks import RAY_CHUNK_SECONDS
    from pipeline.segment import load_segmenter

    if jobs and ray_address:
        raise click.UsageError("--jobs and --ray do not go together: Ray decides how many run at once")
    check_output_dir(output_dir)
    todo = plan_batch(input_dir, output_dir, recursive=recursive)
    if not todo:
        kinds = " ".join(sorted(ext[1:] for ext in VIDEO_EXTENSIONS))
        hint = "" if recursive else "; --recursive also looks in subfolders"
        raise click.ClickException(f"{input_dir}: no videos found ({kinds}){hint}")
    if not ray_address:
        jobs = jobs or default_parallelism()[0]
    if chunk_seconds is None:
        chunk_seconds = RAY_CHUNK_SECONDS if ray_address else 0.0
    device = _resolve_device(device)
    if jobs == 1:   # in-process, exactly like `blurvid process`
        _set_threads(threads)
    options = process_options(click.get_current_context().params, overwrite=False)
    model_kwargs = {"precision": precision, "backend": backend}
    segmenter = load_segmenter(model_path, device=device, threads=threads if jobs == 1 else None,
                               **model_kwargs)   # a bad model stops here
    if ray_address:
        from pipeline.distributed import connect

        connect(ray_address)   # before the progress bar, so a failure is one clean line
    with tqdm(total=len(todo), unit="video", desc="batch", disable=quiet or as_json,
              dynamic_ncols=True) as bar:
        def done(result) -> None:
            bar.set_postfix_str(f"{result.name}: {result.status}")
            bar.update(1)

        results = run_batch(todo, options, output_dir, model_path=model_path, device=device,
                            workers=jobs or 1, threads=threads, redo=overwrite, segmenter=segmenter,
                            model_kwargs=model_kwargs, ray_address=ray_address,
                            chunk_seconds=chunk_seconds, on_result=done)
    if as_json:
        click.echo(json.dumps(json_report(results, input_dir=str(input_dir), output_dir=str(output_dir),
                                          model=str(model_path or "default"), jobs=jobs,
                                          ray=ray_address, chunk_seconds=chunk_seconds), indent=2))
    else:
        click.echo(format_table(results))
    if any(r.status == "failed" for r in results):
        click.get_current_context().exit(1)


@main.command()
@click.argument("thumb_dir", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--columns", type=click.IntRange(1, 16), default=4, show_default=True)
@click.option("--video", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Output video to play on the page (default: the one `blurvid process` recorded).")
@click.option("--source", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Input video to play beside it (default: the one `blurvid process` recorded).")
def preview(thumb_dir: Path, columns: int, video: Path | None, source: Path | None) -> None:
    """Make a contact sheet (PNG) and an index.html gallery of the thumbnails in DIR, with the source
    and output videos side by side."""
    from pipeline.preview import find_videos, make_preview

    # DIR/videos.json from `blurvid process`, or DIR's name + .mp4
    found = find_videos(thumb_dir) if video is None or source is None else {}
    sheet, page = make_preview(thumb_dir, columns=columns, video=video or found.get("video"),
                               source=source or found.get("source"))
    click.echo(f"{sheet}\n{page}")


@main.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Model to write: NAME.safetensors (+ NAME.json).")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--minutes", type=click.FloatRange(min=0.1), default=None,
              help="Instead of --epochs: as many epochs as fit in this many minutes.")
@click.option("--size", type=click.IntRange(32, 2048), default=160, show_default=True,
              help="Square training crop size.")
@click.option("--min-scale", type=click.FloatRange(0.05, 1.0), default=0.3, show_default=True,
              help="Smallest share of an image's area a training crop covers; nearer 1 shows people "
                   "at the scale the whole frame gives them at --work-size (test-resolution fine-tuning).")
@click.option("--keep-aspect", is_flag=True,
              help="Square training crops (side: sqrt(--min-scale..1) of the image's shorter side), so "
                   "people keep the proportions inference sees instead of being stretched to a square.")
@click.option("--colour", is_flag=True,
              help="Also vary saturation (towards grey or more vivid) and, a little, hue, besides the "
                   "brightness and contrast every run varies.")
@click.option("--work-size", type=SIZE, default="256x144", show_default=True,
              help="Inference size WxH recorded in the model.")
@click.option("--bs", type=click.IntRange(min=1), default=16, show_default=True, help="Batch size.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-3, show_default=True)
# The names of pipeline.train.LOSSES, spelled out so --help need not import fastai.
@click.option("--loss", type=click.Choice(["ce", "ce+dice", "ce+lovasz", "focal+dice"]), default="ce",
              show_default=True,
              help="Cross-entropy, or cross-entropy plus a term that scores overlap like IoU: soft Dice, "
                   "or the Lovász-softmax (IoU's own surrogate; for fine-tuning with --from); or the "
                   "focal loss, which weights the pixels the model still gets wrong, plus soft Dice.")
@click.option("--swa", is_flag=True,
              help="Stochastic weight averaging: train at a constant --lr and write the mean of every "
                   "epoch's weights instead of one-cycle's last ones (for fine-tuning with --from).")
@click.option("--swa-every", "swa_every", type=click.IntRange(min=1), default=None, metavar="N",
              help="With --swa: average the weights after every N-th training batch of each epoch instead "
                   "of at each epoch's end (a short fine-tune has few epoch ends to average).")
@click.option("--no-geometry", "no_geometry", multiple=True, metavar="PREFIX",
              help="Images whose names start with PREFIX get no rotation, zoom or warp; the others still "
                   "do (repeatable; e.g. the default model's street photos: ccp_).")
@click.option("--valid-pct", type=click.FloatRange(0.01, 0.9), default=0.1, show_default=True,
              help="Share of the images to validate on (at least one image).")
@click.option("--valid-list", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="File of image names (stems) to validate on instead of a random split.")
@click.option("--seed", type=int, default=42, show_default=True,
              help="Seeds the validation split, the order of the images and the augmentations; another "
                   "seed gives another run of the same recipe (e.g. more fine-tunes for `blurvid soup`).")
@click.option("--from", "from_model", type=click.Path(path_type=Path), default=None,
              help="Fine-tune this model instead of starting from scratch.")
@click.option("--resume", is_flag=True, help="Continue from the last epoch checkpoint.")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where epoch checkpoints go (default: ~/.cache/blurvid/checkpoints).")
@click.option("--export-pkl", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a fastai learn.export() .pkl here.")
@click.option("--workers", type=click.IntRange(min=0), default=None, help="DataLoader workers.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
def train(data: Path, output: Path, epochs: int, minutes, size: int, min_scale: float, keep_aspect: bool,
          colour: bool, work_size, bs: int, lr: float, loss: str, swa: bool, swa_every: int | None,
          no_geometry: tuple[str, ...], valid_pct: float, valid_list, seed: int, from_model, resume: bool,
          checkpoint_dir, export_pkl, workers, device: str) -> None:
    """Train the person U-Net on DATA (images/ and masks/ with matching names)."""
    with warnings.catch_warnings():   # fastai's imports warn about torch.jit and pandas options
        warnings.simplefilter("ignore")
        from pipeline.train import DEFAULT_CHECKPOINTS, TrainOptions
        from pipeline.train import train as run_training

    opts = TrainOptions(epochs=epochs, minutes=minutes, size=size, min_scale=min_scale,
                        keep_aspect=keep_aspect, colour=colour, bs=bs, lr=lr,
                        loss=loss, swa=swa, swa_every=swa_every, no_geometry=no_geometry, valid_pct=valid_pct,
                        valid_list=valid_list, seed=seed, work_size=work_size, from_model=from_model,
                        resume=resume, checkpoint_dir=checkpoint_dir or DEFAULT_CHECKPOINTS,
                        export_pkl=export_pkl, num_workers=workers, device=_resolve_device(device))
    run_training(data, output, opts, log=lambda msg: click.echo(msg, err=True))



@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path), required=False)
@click.option("--split", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Only the image names listed in this file (e.g. a dataset's test.txt).")
@click.option("--video", type=click.Path(path_type=Path), default=None,
              help="Also measure flicker (mean |m_t - m_t-1|) on this video.")
@click.option("--smooth", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Temporal smoothing applied before measuring --video flicker (process uses 0.7).")
@click.option("--reuse", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              metavar="FRACTION", help="Mask reuse on near-identical frames before measuring --video "
                                       "flicker (process uses 0.005).")
@click.option("--work-size", type=SIZE, default=None,
              help="Model input size WxH instead of the model's own (to trade speed for accuracy).")
@click.option("--worst", type=click.IntRange(min=0), default=0, metavar="N",
              help="Also name the N images with the lowest IoU (failures to look at; wrong masks).")
@click.option("--against", "against_path", type=click.Path(path_type=Path), default=None, metavar="OTHER",
              help="Also score model OTHER on DATA and report MODEL's IoU minus OTHER's, image by image, "
                   "with a 95 % bootstrap interval.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@process_options_named("backend", "zoom")
def evaluate(model_path: Path, data: Path | None, split, video, smooth: float, reuse: float, work_size,
             worst: int, against_path: Path | None, as_json: bool, device: str, backend: str, zoom: bool) -> None:
    """Score MODEL on DATA (images/ + masks/): IoU, MAD, boundary F; flicker with --video.

    MODEL is a model file, 'default' for the shipped one, or 'teacher' for the MediaPipe teacher."""
    import json

    from tqdm import tqdm

    from pipeline.evaluate import evaluate_masks, paired_difference, video_flicker
    from pipeline.segment import load_segmenter

    if data is None and video is None:
        raise click.UsageError("give DATA, --video, or both")
    if against_path is not None and data is None:
        raise click.UsageError("--against compares scores on DATA: give DATA too")

    def load(path: Path):
        if str(path) == "teacher":   # the MediaPipe teacher, for comparison (MODEL.md)
            from pipeline.dataprep import DEFAULT_TEACHER_DIR, Teacher, TeacherSegmenter
            return TeacherSegmenter(Teacher(DEFAULT_TEACHER_DIR))
        return load_segmenter(None if str(path) == "default" else path,
                              device=_resolve_device(device), work_size=work_size, backend=backend)

    def score(segmenter, name: str):
        with tqdm(unit="image", disable=as_json, desc=name, leave=False) as bar:
            return evaluate_masks(segmenter, data, split=split, zoom=zoom, progress=bar.update)

    seg = load(model_path)
    against_seg = load(against_path) if against_path is not None else None   # a bad OTHER fails before scoring
    result: dict = {"model": str(model_path), "backend": getattr(seg, "backend", "torch"),
                    "work_size": "x".join(map(str, seg.work_size)), "zoom": zoom}
    if data is not None:
        scores = score(seg, "evaluate")
        result.update({key: value for key, value in vars(scores).items() if key != "per_image"})
        result["worst"] = scores.lowest(worst)
        if against_seg is not None:
            other = score(against_seg, "against")
            diff = paired_difference(other.per_image, scores.per_image)
            result["against"] = {"model": str(against_path), "iou": other.iou, "difference": diff.mean,
                                 "low": diff.low, "high": diff.high, "resolved": diff.resolved}
    if video is not None:
        from pipeline.reuse import MaskReuse
        from pipeline.temporal import TemporalSmoother

        result["smooth"], result["reuse"] = smooth, reuse
        result["flicker"] = video_flicker(seg, video, smoother=TemporalSmoother(smooth) if smooth else None,
                                          reuse=MaskReuse(reuse) if reuse else None, zoom=zoom)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    worst_images, against = result.pop("worst", []), result.pop("against", None)
    for key, value in result.items():
        click.echo(f"{key:<14}{value:.4f}" if isinstance(value, float) else f"{key:<14}{value}")
    for stem, iou in worst_images:
        click.echo(f"{'worst':<14}{iou:.4f}  {stem}")
    if against:   # in IoU points, as MODEL.md reports differences
        click.echo(f"{'against':<14}{against['model']}\n{'against_iou':<14}{against['iou']:.4f}\n"
                   f"{'difference':<14}{100 * against['difference']:+.2f} points (95 % interval "
                   f"{100 * against['low']:+.2f} to {100 * against['high']:+.2f}"
                   f"{'' if against['resolved'] else ', not resolved'})")


@main.command("export-int8")
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--calibration", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Folder of images like the videos the model will see (e.g. its training images/).")
@click.option("--count", type=click.IntRange(min=1), default=64, show_default=True,
              help="Calibration images drawn from the folder.")
def export_int8(model_path: Path, calibration: Path, count: int) -> None:
    """Write MODEL's int8 ONNX copy (NAME.int8.onnx beside it): the fast CPU backend.

    Run it after training or fine-tuning; until then blurvid runs MODEL in torch."""
    from pipeline.onnx_backend import export_int8 as export

    if model_path.suffix not in (".safetensors", ".json"):
        raise click.BadParameter("give a NAME.safetensors model", param_hint="MODEL")
    click.echo(export(model_path, calibration, count=count))


@main.command()
@click.argument("models", metavar="MODEL...", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The averaged model (NAME.safetensors + NAME.json).")
def soup(models: tuple[Path, ...], output: Path) -> None:
    """Average the weights of models fine-tuned from one parent (a "model soup").

    Give the parent and its fine-tunes: the soup usually scores better than any one of them.
    Run export-int8 on the result to get its fast CPU copy."""
    from pipeline.soup import average_models

    click.echo(average_models(models, output))


@main.command()
@click.argument("video", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the frames (created).")
@click.option("--every", type=click.IntRange(min=1), default=30, show_default=True,
              help="Keep every Nth frame.")
def frames(video: Path, output: Path, every: int) -> None:
    """Save every Nth frame of VIDEO as JPEG, to start a training set from your own footage."""
    from pipeline.label import extract_frames

    written = extract_frames(video, output, every=every)
    click.echo(f"{output}: {written} frames")


@main.command()
@click.argument("images", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the draft masks (PNG, 0/255) and overlays/ previews.")
@model_option
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@process_options_named("zoom")
def label(images: Path, output: Path, model_path, device: str, zoom: bool) -> None:
    """Draft masks for a folder of frames, to correct by hand and then fine-tune with `train --from`."""
    from pipeline.label import draft_masks
    from pipeline.segment import load_segmenter

    seg = load_segmenter(model_path, device=_resolve_device(device))
    written = draft_masks(seg, images, output, zoom=zoom)
    click.echo(f"{output}: {written} masks (previews in {output / 'overlays'})")


@main.command()
@click.option("--source", default="0", show_default=True, metavar="CAMERA|FILE|URL",
              help="Camera index (0: the default webcam), a video file or a stream URL.")
@click.option("--window/--no-window", default=True, show_default=True,
              help="Show the result in a window ('q' quits).")
@click.option("--virtual-camera", is_flag=True,
              help="Also send the result to a virtual webcam that video-call apps can use "
                   "(needs pyvirtualcam: pip install 'blurvid[live]').")
@click.option("--realtime/--no-realtime", default=True, show_default=True,
              help="Read a file source at its frame rate, as a camera would deliver it "
                   "(--no-realtime: as fast as it decodes).")
@click.option("--max-frames", type=click.IntRange(min=1), default=None,
              help="Stop after this many source frames (processed or dropped).")
@process_options_named("model_path", "blur", "background", "background_fit", "light_wrap", "smooth",
                       "side_by_side", "size", "work_size", "zoom", "device", "precision", "backend",
                       "threads")
@click.option("-q", "--quiet", is_flag=True, help="No FPS line every 2 s (the summary is still printed).")
def live(model_path: Path | None, device: str, precision: str, backend: str, threads: int | None,
         quiet: bool, **_: object) -> None:
    """Blur or replace the background of a webcam, stream or file as it plays.

    Frames that arrive while the last one is still being processed are dropped rather than queued, so
    the delay does not grow. Ends on 'q' in the window, Ctrl-C, or the end of the source."""
    from dataclasses import fields

    from pipeline.live import LiveOptions, run_live
    from pipeline.segment import load_segmenter

    _set_threads(threads)
    device = _resolve_device(device)
    params = click.get_current_context().params
    names = {f.name for f in fields(LiveOptions)}
    options = LiveOptions(**{k: v for k, v in params.items() if k in names},
                          report_every=0 if quiet else 2.0)
    report = run_live(options, load_model=lambda: load_segmenter(model_path, device=device, precision=precision,
                                                                   backend=backend, threads=threads),
                      log=lambda line: click.echo(line, err=True))
    click.echo(report.summary(), err=True)
