"""Build the default model's training and evaluation data from ../shared, reproducibly.

    python -m pipeline.dataprep --shared ../shared --out ~/.cache/blurvid/data [--max-side 384] [--quality 90]
        [--image-format webp]

Writes, under OUT:
    train/images/NAME.jpg, train/masks/NAME.png   mask 0/255 uint8, same size as the image, longer side <= max-side
                                                  (NAME.webp with --image-format webp: 0.6-0.75x the bytes)
    eval/heldout-frames/{images,masks,probs}/     teacher-labelled frames of the held-out clips (full size)
    eval/eg1800-test/{images,masks}/              EG1800 test.txt at full size (images are symlinks)
    eval/ccp-test/{images,masks}/                 CCP-person test.txt at full size (images are symlinks)
    train-video-weighted/, train-ccp-clip-weighted/  views of train/ (symlinks) with some images repeated,
                                                  for stages 10-11 and 35 (with the teacher only)
    MANIFEST.json                                 counts per source, seeds, held-out clips, teacher

Training sources: EG1800 train.txt portraits; CCP-person train.txt photos and upper-body crops of them;
people pasted onto empty rooms and onto other CCP training photos (whose person stays labelled);
people pasted onto plain walls and defocused rooms, the backgrounds of most webcam calls;
frames of the training clips in ../shared/media labelled by the MediaPipe selfie-segmentation teacher
(../shared/tools/get-teacher.sh, run with ai-edge-litert).
Nothing from a test.txt or a held-out clip ever reaches train/.
Images are handled as OpenCV BGR uint8 throughout, except where a frame meets the teacher (RGB).
A copy small enough to carry to a lent GPU machine: --max-side 384 --quality 80 --image-format webp
(MODEL.md, Training on a GPU).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np

from pipeline.errors import BlurvidError, InputError

SEED = 20240607  # every random choice below derives from this, so a rebuild is identical

# Clips kept out of training; evaluate.py measures on them. The talking-head and webcam ones also
# get teacher-labelled frames in eval/heldout-frames (EVAL_FRAME_CLIPS).
HELDOUT_CLIPS: tuple[str, ...] = (
    "talking/s18.mp4",
    "talking/d13.mp4",            # portrait 720x1280
    "grid/id2_vcd_swwp2s.mpg",
    "grid/swiz3n.mpg",
    "asl/yes.mkv",
    "asl/thanks.mkv",
    "one-by-one.mp4",             # the speed benchmark
    "carphone.mp4",
    "bikes.mp4",                  # no person: the mask should stay empty
    "chaplin.mp4",                # two people, letterboxed; the teacher is weak there
)
EVAL_FRAME_CLIPS: tuple[str, ...] = HELDOUT_CLIPS[:6]
VIDEO_SUFFIXES = (".mp4", ".mpg", ".mkv", ".mov", ".webm", ".avi")
IMAGE_FORMATS = {"jpg": cv2.IMWRITE_JPEG_QUALITY, "webp": cv2.IMWRITE_WEBP_QUALITY}   # training image encodings

TEACHER_MODELS = {"general": "selfie_segmentation.tflite", "landscape": "selfie_segmentation_landscape.tflite"}
TEACHER_THRESHOLD = 0.5
DEFAULT_TEACHER_DIR = Path.home() / ".cache" / "blurvid-teacher"
DEFAULT_OUT = Path.home() / ".cache" / "blurvid" / "data"

TRAIN_FRAME_INTERVAL = 0.5    # seconds between sampled training frames: the clips are 1.5-7 s long
TRAIN_FRAMES_PER_CLIP = 8     # cap, so the longer clips do not dominate
EVAL_FRAMES_PER_CLIP = 10
VIDEO_WEIGHT = 4              # stages 10 and 11 see each teacher-labelled video frame this often
CLIP_PREFIX = "clip_"         # names of the teacher-labelled video frames start with it
# Stage 35 (v18) sees the CCP photos, their upper-body crops and the video frames twice each: the street
# photos weigh more without thinning the video frames' share (MODEL.md, stages 34b and 35).
CCP_CLIP_WEIGHTS = {"ccp_": 2, "ccpcrop_": 2, CLIP_PREFIX: 2}
ROOM_COMPOSITES = 240         # 10 per room
PHOTO_COMPOSITES = 120        # people pasted onto other CCP training photos (two-person scenes)
WALL_COMPOSITES = 240         # people pasted onto plain walls and defocused rooms (see plain_wall)
COLOUR_MATCH = 0.3            # fraction of the lightness/colour-cast gap closed; "lightly"


# ---------------------------------------------------------------- small image helpers

def rng_for(*keys: str | int) -> np.random.Generator:
    """rng_for("ccp-crop", "0002") -> a Generator that depends only on SEED and the keys.

    Per-item generators keep each sample identical when other sources or counts change."""
    digest = hashlib.sha256("/".join(map(str, (SEED, *keys))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def binarize(msk: np.ndarray) -> np.ndarray:
    """binarize(msk) -> uint8 0/255 mask; EG1800 masks are anti-aliased, so threshold at the middle."""
    return np.where(msk >= 128, 255, 0).astype(np.uint8)


def fit_max_side(img: np.ndarray, msk: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """img, msk = fit_max_side(img, msk, 384): shrink both so the longer side <= max_side (never enlarge).

    The mask is area-resized and re-thresholded, which places the edge more accurately than nearest."""
    h, w = img.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return img, msk
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    msk = binarize(cv2.resize(msk, size, interpolation=cv2.INTER_AREA))
    return img, msk


def read_pair(root: Path, stem: str) -> tuple[np.ndarray, np.ndarray]:
    """img, msk = read_pair(Path("../shared/datasets/eg1800"), "00001") from images/STEM.jpg + masks/STEM.png."""
    img = cv2.imread(str(root / "images" / f"{stem}.jpg"), cv2.IMREAD_COLOR)
    msk = cv2.imread(str(root / "masks" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
    if img is None or msk is None:
        raise InputError(f"{root}: cannot read images/{stem}.jpg or masks/{stem}.png")
    if img.shape[:2] != msk.shape:
        raise InputError(f"{root}: {stem} image {img.shape[:2]} and mask {msk.shape} differ in size")
    return img, binarize(msk)


def read_split(root: Path, name: str) -> list[str]:
    """read_split(root, "train") -> the stems listed in root/train.txt, in file order."""
    path = root / f"{name}.txt"
    if not path.is_file():
        raise InputError(f"{path}: split list not found")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def bbox(msk: np.ndarray) -> tuple[int, int, int, int] | None:
    """bbox(msk) -> (x0, y0, x1, y1) of the nonzero pixels, end-exclusive; None for an empty mask."""
    ys, xs = np.nonzero(msk)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


class SampleWriter:
    """w = SampleWriter(Path("out/train"), max_side=384, quality=90); w.write("eg1800_00001", img, msk).

    Writes images/NAME.jpg (or .webp, `image_format`, at the same `quality` scale) and masks/NAME.png
    (0/255), and counts samples per source prefix."""

    def __init__(self, root: Path, *, max_side: int | None, quality: int, image_format: str = "jpg"):
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {tuple(IMAGE_FORMATS)}, not {image_format!r}")
        self.images, self.masks = root / "images", root / "masks"
        self.images.mkdir(parents=True, exist_ok=True)
        self.masks.mkdir(parents=True, exist_ok=True)
        self.max_side, self.suffix = max_side, f".{image_format}"
        self.encode_params = [IMAGE_FORMATS[image_format], quality]
        self.counts: dict[str, int] = {}

    def write(self, name: str, img: np.ndarray, msk: np.ndarray, *, source: str) -> None:
        if self.max_side:
            img, msk = fit_max_side(img, msk, self.max_side)
        if not cv2.imwrite(str(self.images / f"{name}{self.suffix}"), img, self.encode_params):
            raise BlurvidError(f"{self.images}: cannot write {name}{self.suffix}")
        cv2.imwrite(str(self.masks / f"{name}.png"), msk)
        self.counts[source] = self.counts.get(source, 0) + 1


# ---------------------------------------------------------------- crops and composites

def upper_body_crop(img: np.ndarray, msk: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """crop = upper_body_crop(img, msk, rng): the top 45-60 % of the person with margins, like webcam framing.

    The crop is cut off at the bottom through the body, as a desk camera cuts people off. None if no person."""
    box = bbox(msk)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    h, w = msk.shape
    ph = y1 - y0
    bottom = y0 + int(ph * rng.uniform(0.45, 0.60))
    top = max(0, y0 - int(ph * rng.uniform(0.03, 0.12)))
    cols = np.nonzero(msk[y0:bottom].any(axis=0))[0]   # the width of the upper body, not of the legs
    cx0, cx1 = int(cols.min()), int(cols.max()) + 1
    # widen towards a webcam-like aspect (0.8..1.4 w/h) as far as the photo allows, person off-centre a little
    want_w = max(int((bottom - top) * rng.uniform(0.8, 1.4)), int((cx1 - cx0) * 1.3))
    want_w = min(want_w, w)
    left = int(np.clip((cx0 + cx1) / 2 - want_w * rng.uniform(0.35, 0.65), 0, w - want_w))
    return img[top:bottom, left:left + want_w].copy(), msk[top:bottom, left:left + want_w].copy()


@dataclass(frozen=True)
class Cutout:
    """A person cut out of a photo: fgr (h, w, 3) BGR, pha (h, w) 0/255, and which edges the person touches."""
    fgr: np.ndarray
    pha: np.ndarray
    left: bool
    right: bool
    bottom: bool


def make_cutout(img: np.ndarray, msk: np.ndarray) -> Cutout | None:
    """cut = make_cutout(img, msk): crop to the person's box; None if the mask is empty or a sliver."""
    box = bbox(msk)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    if (x1 - x0) < 8 or (y1 - y0) < 16:
        return None
    h, w = msk.shape
    # a person cut by the photo's edge must stay cut by the canvas edge, else the cut looks sliced off
    return Cutout(img[y0:y1, x0:x1].copy(), msk[y0:y1, x0:x1].copy(), x0 == 0, x1 == w, y1 == h)


@dataclass(frozen=True)
class Placement:
    """Where a cutout goes on a canvas: top-left (x, y) and its size (w, h) there; may overhang the canvas."""
    x: int
    y: int
    w: int
    h: int


def canvas_aspect(cut: Cutout, rng: np.random.Generator) -> float:
    """canvas_aspect(cut, rng) -> width/height of the canvas the cutout will be pasted on.

    A person cut by both side edges must fill the canvas width, so the canvas takes the person's shape,
    made taller so the person fills 72-90 % of its height (head room; choose_placement may zoom 8 % more);
    everyone else gets a common camera aspect."""
    if cut.left and cut.right:
        return cut.fgr.shape[1] / cut.fgr.shape[0] * rng.uniform(0.72, 0.90)
    return float(rng.choice([16 / 9, 4 / 3, 4 / 3, 1.0, 3 / 4]))


def choose_placement(cut: Cutout, canvas_hw: tuple[int, int], rng: np.random.Generator) -> Placement:
    """p = choose_placement(cut, (H, W), rng): a plausible webcam placement, bottom-anchored.

    Cut-off people (portraits, upper-body crops) sit on the bottom edge at 55-95 % of the frame height;
    whole people stand a little above it at 45-85 %. Edges the person touched stay on canvas edges."""
    H, W = canvas_hw
    ch, cw = cut.pha.shape
    if cut.left and cut.right:
        scale = W / cw * rng.uniform(1.0, 1.08)
    else:
        frac = rng.uniform(0.55, 0.95) if cut.bottom else rng.uniform(0.45, 0.85)
        scale = min(frac * H / ch, 0.9 * W / cw)
    w, h = max(1, round(cw * scale)), max(1, round(ch * scale))
    y = H - h if cut.bottom else H - h - int(H * rng.uniform(0.0, 0.08))
    if cut.left and cut.right:
        x = (W - w) // 2
    elif cut.left:
        x = 0
    elif cut.right:
        x = W - w
    else:
        x = int(rng.uniform(0.15, 0.85) * W - w / 2)
        x = int(np.clip(x, -w // 5, W - w + w // 5))     # up to a fifth of the person may leave the frame
    return Placement(x, y, w, h)


def random_canvas(img: np.ndarray, msk: np.ndarray, aspect: float, long_side: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """bgr, bgr_msk = random_canvas(img, msk, 4/3, 384, rng): a random crop of aspect w/h, resized to long_side."""
    h, w = img.shape[:2]
    cw, ch = (w, int(w / aspect)) if w / h < aspect else (int(h * aspect), h)
    zoom = rng.uniform(0.7, 1.0)
    cw, ch = max(8, int(cw * zoom)), max(8, int(ch * zoom))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    scale = long_side / max(cw, ch)
    size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    bgr = cv2.resize(img[y:y + ch, x:x + cw], size, interpolation=interp)
    bgr_msk = binarize(cv2.resize(msk[y:y + ch, x:x + cw], size, interpolation=cv2.INTER_AREA))
    return bgr, bgr_msk


def match_colour(fgr: np.ndarray, pha: np.ndarray, bgr: np.ndarray, strength: float = COLOUR_MATCH) -> np.ndarray:
    """fgr = match_colour(fgr, pha, bgr): move the person's mean Lab colour part of the way to the background's.

    A light shift only: enough that a person shot in daylight does not glow in a dim room."""
    person = pha > 0
    if not person.any():
        return fgr
    lab = cv2.cvtColor(fgr, cv2.COLOR_BGR2LAB).astype(np.float32)
    bgr_lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB).astype(np.float32)
    shift = (bgr_lab.reshape(-1, 3).mean(0) - lab[person].mean(0)) * strength
    lab = np.clip(lab + shift, 0, 255).astype(np.uint8)
    return cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)


def paste(bgr: np.ndarray, bgr_msk: np.ndarray, cut: Cutout, at: Placement) -> tuple[np.ndarray, np.ndarray]:
    """com, msk = paste(bgr, bgr_msk, cut, at): the cutout composited over the canvas, and the new label.

    msk = the pasted person's mask, united with any person already in the canvas (bgr_msk), so a
    second person in the background stays labelled. The image edge is feathered by a pixel or so
    to hide the cut, but the label is the hard resized mask."""
    H, W = bgr.shape[:2]
    interp = cv2.INTER_AREA if at.w < cut.fgr.shape[1] else cv2.INTER_LINEAR
    fgr = cv2.resize(cut.fgr, (at.w, at.h), interpolation=interp)
    pha = binarize(cv2.resize(cut.pha, (at.w, at.h), interpolation=interp))
    soft = cv2.GaussianBlur(pha, (3, 3), 0).astype(np.float32) / 255.0
    soft[pha > 0] = np.maximum(soft[pha > 0], 0.5)   # keep the feather from eroding thin parts
    # the part of the cutout that lands on the canvas
    x0, y0, x1, y1 = max(at.x, 0), max(at.y, 0), min(at.x + at.w, W), min(at.y + at.h, H)
    com, msk = bgr.copy(), bgr_msk.copy()
    if x0 >= x1 or y0 >= y1:
        return com, msk
    sx, sy = x0 - at.x, y0 - at.y
    a = soft[sy:sy + y1 - y0, sx:sx + x1 - x0, None]
    region = com[y0:y1, x0:x1].astype(np.float32)
    com[y0:y1, x0:x1] = np.round(a * fgr[sy:sy + y1 - y0, sx:sx + x1 - x0] + (1 - a) * region).astype(np.uint8)
    msk[y0:y1, x0:x1] = np.maximum(msk[y0:y1, x0:x1], pha[sy:sy + y1 - y0, sx:sx + x1 - x0])
    return com, msk


# ---------------------------------------------------------------- teacher and video frames

class Teacher:
    """t = Teacher(Path("~/.cache/blurvid-teacher")); prob = t(rgb)  # (H, W) float32 person probability.

    The MediaPipe selfie-segmentation models via ai-edge-litert: the landscape model (144x256) for
    frames wider than tall, the general one (256x256) otherwise; plain resize in, bilinear resize out."""

    def __init__(self, model_dir: Path, *, threads: int = 2):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise BlurvidError("the teacher needs ai-edge-litert: pip install ai-edge-litert") from e
        self.files: dict[str, Path] = {}
        self.interpreters = {}
        for kind, name in TEACHER_MODELS.items():
            path = Path(model_dir).expanduser() / name
            if not path.is_file():
                raise InputError(f"{path}: teacher model missing; run ../shared/tools/get-teacher.sh")
            it = Interpreter(model_path=str(path), num_threads=threads)
            it.allocate_tensors()
            self.files[kind], self.interpreters[kind] = path, it

    def kind_for(self, h: int, w: int) -> str:
        """teacher.kind_for(288, 360) -> "landscape"; square and portrait frames get "general"."""
        return "landscape" if w > h else "general"

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        it = self.interpreters[self.kind_for(h, w)]
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        _, ih, iw, _ = inp["shape"]
        x = cv2.resize(rgb, (int(iw), int(ih)), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        it.set_tensor(inp["index"], x[None])
        it.invoke()
        prob = it.get_tensor(out["index"])[0, :, :, 0]
        return np.clip(cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)

    def describe(self) -> dict:
        """The MANIFEST entry: which files (with sha256), the runtime, the threshold."""
        from importlib.metadata import version
        return {
            "name": "MediaPipe selfie segmentation (mediapipe 0.10.21 wheel), Apache-2.0",
            "runtime": f"ai-edge-litert {version('ai-edge-litert')}",
            "models": {k: {"file": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                       for k, p in self.files.items()},
            "choice": "landscape (144x256) when width > height, else general (256x256)",
            "threshold": TEACHER_THRESHOLD,
        }


class TeacherSegmenter:
    """The teacher behind the Segmenter interface, to measure it the way blurvid models are measured.

        seg = TeacherSegmenter(Teacher(DEFAULT_TEACHER_DIR)); prob = seg(frames)  # (B,h,w,3) -> (B,h,w)
    """

    work_size = (256, 144)   # the landscape model's input; frames are resized to its own size anyway

    def __init__(self, teacher: Teacher):
        self.teacher = teacher

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return np.stack([self.teacher(f) for f in frames]).astype(np.float32)


def sample_frames(path: Path, *, interval: float, cap: int, offset: float = 0.0) -> Iterator[tuple[float, np.ndarray]]:
    """for t, rgb in sample_frames(clip, interval=0.5, cap=8): the first decoded frame at or after
    offset, offset+interval, ... (at most cap), upright RGB uint8. Uses frame times, because some
    containers (the ASL MKVs) carry no frame count or stream duration."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as e:
        raise InputError(f"{path}: cannot open video ({e})") from e
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        due, taken = offset, 0
        for frame in container.decode(stream):
            if taken >= cap:
                break
            t = float(frame.time) if frame.time is not None else 0.0
            if t + 1e-6 < due:
                continue
            rgb = frame.to_ndarray(format="rgb24")
            rotation = getattr(frame, "rotation", 0) or 0
            if rotation % 360:
                rgb = np.ascontiguousarray(np.rot90(rgb, k=(rotation // 90) % 4))
            yield t, rgb
            taken += 1
            due += interval


def clip_duration(path: Path) -> float:
    """clip_duration(clip) -> seconds, from the container (the stream may not say)."""
    with av.open(str(path)) as container:
        if container.duration:
            return container.duration / av.time_base
        stream = container.streams.video[0]
        return float(stream.duration * stream.time_base) if stream.duration else 0.0


def list_clips(media: Path) -> list[str]:
    """list_clips(Path("../shared/media")) -> every video under it as a sorted relative POSIX path."""
    return sorted(p.relative_to(media).as_posix() for p in media.rglob("*")
                  if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def training_clips(media: Path) -> list[str]:
    """training_clips(media) -> list_clips(media) minus HELDOUT_CLIPS."""
    return [c for c in list_clips(media) if c not in HELDOUT_CLIPS]


def clip_stem(clip: str) -> str:
    """clip_stem("grid/bbaf2n.mpg") -> "grid-bbaf2n": a file-name-safe name for a clip."""
    return Path(clip).with_suffix("").as_posix().replace("/", "-")


# ---------------------------------------------------------------- the builders, one per source

def build_eg1800(root: Path, out: SampleWriter) -> None:
    """EG1800 train.txt portraits, as they are (already webcam framing)."""
    for stem in read_split(root, "train"):
        img, msk = read_pair(root, stem)
        out.write(f"eg1800_{stem}", img, msk, source="eg1800")


def build_ccp(root: Path, out: SampleWriter, *, full_body: int | None = None) -> None:
    """CCP-person train.txt: an upper-body crop of every photo, and `full_body` of the full-body photos
    (a fixed random subset; None = all). Full-body framing matters least for webcams, so it is what gives
    way when the packed data set must stay small."""
    stems = read_split(root, "train")
    keep = set(stems)
    if full_body is not None and full_body < len(stems):
        keep = set(rng_for("ccp-full-body").choice(stems, size=full_body, replace=False).tolist())
    for stem in stems:
        img, msk = read_pair(root, stem)
        if stem in keep:
            out.write(f"ccp_{stem}", img, msk, source="ccp")
        crop = upper_body_crop(img, msk, rng_for("ccp-crop", stem))
        if crop is not None:
            out.write(f"ccpcrop_{stem}", *crop, source="ccp-crop")


def person_cutout(dataset: str, root: Path, stem: str, rng: np.random.Generator) -> Cutout | None:
    """A cutout of the person in a training photo; CCP people are mostly cut to the upper body."""
    img, msk = read_pair(root, stem)
    if dataset == "ccp" and rng.random() < 0.7:
        crop = upper_body_crop(img, msk, rng)
        if crop is None:
            return None
        img, msk = crop
    return make_cutout(img, msk)


def training_people(eg1800: Path, ccp: Path) -> list[tuple[str, Path, str]]:
    """(dataset, root, stem) of every train.txt photo whose person may be cut out and pasted."""
    return [("eg1800", eg1800, s) for s in read_split(eg1800, "train")] + \
           [("ccp", ccp, s) for s in read_split(ccp, "train")]


def room_images(rooms: Path) -> list[Path]:
    """The background images in `rooms`, sorted; InputError if there are none."""
    files = sorted(p for p in rooms.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise InputError(f"{rooms}: no background images")
    return files


def compose(bg: np.ndarray, bg_msk: np.ndarray, cut: Cutout, *, long_side: int,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """com, msk = compose(bg, bg_msk, cut, long_side=256, rng=rng): a canvas cut from bg, the person
    lightly colour-matched to it and pasted where a webcam would frame them."""
    canvas, canvas_msk = random_canvas(bg, bg_msk, canvas_aspect(cut, rng), long_side, rng)
    cut = Cutout(match_colour(cut.fgr, cut.pha, canvas), cut.pha, cut.left, cut.right, cut.bottom)
    return paste(canvas, canvas_msk, cut, choose_placement(cut, canvas.shape[:2], rng))


def build_composites(eg1800: Path, ccp: Path, rooms: Path, out: SampleWriter, *, long_side: int,
                     n_rooms: int = ROOM_COMPOSITES, n_photos: int = PHOTO_COMPOSITES) -> None:
    """Training people pasted onto the empty rooms, and onto other CCP training photos (two-person scenes)."""
    people = training_people(eg1800, ccp)
    scenes = read_split(ccp, "train")
    room_files = room_images(rooms)
    plan = rng_for("composite-plan")
    jobs = [("room", i) for i in range(n_rooms)] + [("photo", i) for i in range(n_photos)]
    for kind, i in jobs:
        rng = rng_for("composite", kind, i)
        dataset, root, stem = people[int(plan.integers(len(people)))]
        cut = person_cutout(dataset, root, stem, rng)
        if cut is None:
            continue
        if kind == "room":
            bg = cv2.imread(str(room_files[i % len(room_files)]), cv2.IMREAD_COLOR)
            bg_msk = np.zeros(bg.shape[:2], np.uint8)
        else:
            # backgrounds are CCP street photos only: their people are small enough that a pasted person
            # in front looks plausible (on an EG1800 close-up the pasted person would be a doll on a face)
            bg_stem = scenes[int(plan.integers(len(scenes)))]
            if bg_stem == stem and root == ccp:
                bg_stem = scenes[(scenes.index(bg_stem) + 1) % len(scenes)]   # never the same person twice
            bg, bg_msk = read_pair(ccp, bg_stem)
        com, msk = compose(bg, bg_msk, cut, long_side=long_side, rng=rng)
        out.write(f"comp{kind}_{i:04d}_{dataset}{stem}", com, msk, source=f"composite-{kind}")


def plain_wall(rooms: list[Path], rng: np.random.Generator, size: int = 384) -> np.ndarray:
    """bgr = plain_wall(room_files, rng): a size x size background with almost nothing in it.

    Half are a flat colour with a soft light gradient and sensor noise, half an empty room blurred as a
    shallow-focus webcam blurs it. Without them the model saw few large flat areas that were not a
    person's clothing, and it marked plain backdrops (GRID's, a studio wall) as person."""
    if rng.random() < 0.5:
        room = cv2.imread(str(rooms[int(rng.integers(len(rooms)))]), cv2.IMREAD_COLOR)
        room = cv2.resize(room, (size, size), interpolation=cv2.INTER_AREA)
        return cv2.GaussianBlur(room, (0, 0), sigmaX=rng.uniform(6, 16))
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(0, 160), rng.integers(60, 240)]]])
    colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0.05, 0.35) * ((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle))
    wall = colour * light[..., None] + rng.normal(0, rng.uniform(1, 5), (size, size, 3))
    return np.clip(wall, 0, 255).astype(np.uint8)


def build_wall_composites(eg1800: Path, ccp: Path, rooms: Path, out: SampleWriter, *, long_side: int,
                          n: int = WALL_COMPOSITES) -> None:
    """Training people pasted onto plain_wall backgrounds; each sample has its own seed (nothing shared
    with build_composites, so the two stay reproducible apart)."""
    people = training_people(eg1800, ccp)
    room_files = room_images(rooms)
    for i in range(n):
        rng = rng_for("composite", "wall", i)
        dataset, root, stem = people[int(rng.integers(len(people)))]
        cut = person_cutout(dataset, root, stem, rng)
        if cut is None:
            continue
        wall = plain_wall(room_files, rng)
        com, msk = compose(wall, np.zeros(wall.shape[:2], np.uint8), cut, long_side=long_side, rng=rng)
        out.write(f"compwall_{i:04d}_{dataset}{stem}", com, msk, source="composite-wall")


def label_clip(teacher: Teacher, media: Path, clip: str, out: SampleWriter, *, interval: float, cap: int,
               source: str, probs: Path | None = None) -> None:
    """Sampled frames of one clip with the teacher's mask (probability > 0.5); optionally the probability too."""
    for j, (t, rgb) in enumerate(sample_frames(media / clip, interval=interval, cap=cap)):
        prob = teacher(rgb)
        msk = np.where(prob > TEACHER_THRESHOLD, 255, 0).astype(np.uint8)
        name = f"{CLIP_PREFIX}{clip_stem(clip)}_{j:03d}"
        out.write(name, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), msk, source=source)
        if probs is not None:
            cv2.imwrite(str(probs / f"{name}.png"), np.round(prob * 255).astype(np.uint8))


def build_clip_frames(teacher: Teacher, media: Path, out: SampleWriter) -> list[str]:
    """Teacher-labelled frames of the training clips, every TRAIN_FRAME_INTERVAL s, capped. Returns the clips."""
    clips = training_clips(media)
    for clip in clips:
        label_clip(teacher, media, clip, out, interval=TRAIN_FRAME_INTERVAL, cap=TRAIN_FRAMES_PER_CLIP,
                   source=f"teacher-{clip.split('/')[0] if '/' in clip else 'other'}")
    return clips


def build_weighted_view(train: Path, dest: Path, weights: dict[str, int]) -> int:
    """n = build_weighted_view(out / "train", out / "train-ccp-clip-weighted", CCP_CLIP_WEIGHTS): a view
    of the training set (symbolic links, no copies) in which each image whose name starts with a prefix
    in `weights` appears that many times (copies named STEM_rep1, STEM_rep2, ...); the rest once.

    A previous view in `dest` is removed first. Returns the number of images."""
    shutil.rmtree(dest, ignore_errors=True)
    for sub in ("images", "masks"):
        (dest / sub).mkdir(parents=True)
    masks = {p.stem: p for p in (train / "masks").iterdir()}
    n = 0
    for img in sorted((train / "images").iterdir()):
        msk = masks[img.stem]
        repeats = next((w for prefix, w in weights.items() if img.stem.startswith(prefix)), 1)
        for k in range(repeats):
            stem = img.stem if k == 0 else f"{img.stem}_rep{k}"
            (dest / "images" / f"{stem}{img.suffix}").symlink_to(img.resolve())
            (dest / "masks" / f"{stem}{msk.suffix}").symlink_to(msk.resolve())
            n += 1
    return n


def build_video_weighted(train: Path, dest: Path, *, weight: int = VIDEO_WEIGHT) -> int:
    """n = build_video_weighted(out / "train", out / "train-video-weighted"): the view in which each
    teacher-labelled video frame appears `weight` times (build_weighted_view).

    Stages 10 and 11 of the default model fine-tune on it, so the video frames that blurvid's
    users resemble weigh more than their 4 % share of the images (MODEL.md). Returns the number
    of images."""
    return build_weighted_view(train, dest, {CLIP_PREFIX: weight})


def build_heldout_frames(teacher: Teacher, media: Path, dest: Path, *, quality: int) -> dict[str, int]:
    """EVAL_FRAMES_PER_CLIP evenly spaced, teacher-labelled, full-size frames of each EVAL_FRAME_CLIPS clip."""
    out = SampleWriter(dest, max_side=None, quality=quality)
    probs = dest / "probs"
    probs.mkdir(parents=True, exist_ok=True)
    for clip in EVAL_FRAME_CLIPS:
        if not (media / clip).is_file():
            continue
        interval = clip_duration(media / clip) / EVAL_FRAMES_PER_CLIP
        label_clip(teacher, media, clip, out, interval=interval, cap=EVAL_FRAMES_PER_CLIP, source=clip, probs=probs)
    return out.counts


def build_test_split(root: Path, dest: Path) -> int:
    """root's test.txt at full size: images symlinked (they are not ours to copy), masks written as 0/255."""
    (dest / "images").mkdir(parents=True, exist_ok=True)
    (dest / "masks").mkdir(parents=True, exist_ok=True)
    stems = read_split(root, "test")
    for stem in stems:
        _, msk = read_pair(root, stem)
        link = dest / "images" / f"{stem}.jpg"
        link.unlink(missing_ok=True)
        link.symlink_to((root / "images" / f"{stem}.jpg").resolve())
        cv2.imwrite(str(dest / "masks" / f"{stem}.png"), msk)
    return len(stems)


# ---------------------------------------------------------------- the whole build

def build(shared: Path, out: Path, *, max_side: int = 384, quality: int = 90, image_format: str = "jpg",
          ccp_full_body: int | None = None, teacher_dir: Path | None = DEFAULT_TEACHER_DIR,
          composites: tuple[int, int] = (ROOM_COMPOSITES, PHOTO_COMPOSITES), walls: int = WALL_COMPOSITES) -> dict:
    """manifest = build(Path("../shared"), Path("out")): the whole data set; returns the manifest written.

    teacher_dir=None skips the teacher-labelled clip frames and held-out frames (tests, no ai-edge-litert).
    A previous build in `out` is removed first, so nothing stale survives."""
    started = time.time()
    datasets, media = shared / "datasets", shared / "media"
    eg1800, ccp, rooms = datasets / "eg1800", datasets / "ccp-person", datasets / "backgrounds"
    for folder in (eg1800, ccp, rooms):
        if not folder.is_dir():
            raise InputError(f"{folder}: not found; is --shared the shared folder?")
    for sub in ("train", "eval", "train-video-weighted", "train-ccp-clip-weighted"):
        shutil.rmtree(out / sub, ignore_errors=True)
    train = SampleWriter(out / "train", max_side=max_side, quality=quality, image_format=image_format)
    build_eg1800(eg1800, train)
    build_ccp(ccp, train, full_body=ccp_full_body)
    build_composites(eg1800, ccp, rooms, train, long_side=max_side, n_rooms=composites[0], n_photos=composites[1])
    build_wall_composites(eg1800, ccp, rooms, train, long_side=max_side, n=walls)
    manifest: dict = {"max_side": max_side, "image_format": image_format, "quality": quality,
                      "ccp_full_body": ccp_full_body, "seed": SEED,
                      "heldout_clips": list(HELDOUT_CLIPS), "eval_frame_clips": list(EVAL_FRAME_CLIPS)}
    clips: list[str] = []
    heldout: dict[str, int] = {}
    if teacher_dir is not None and media.is_dir():
        teacher = Teacher(teacher_dir)
        clips = build_clip_frames(teacher, media, train)
        heldout = build_heldout_frames(teacher, media, out / "eval" / "heldout-frames", quality=95)
        manifest["video_weighted"] = {"weight": VIDEO_WEIGHT, "images": build_video_weighted(
            out / "train", out / "train-video-weighted")}
        manifest["ccp_clip_weighted"] = {"weights": CCP_CLIP_WEIGHTS, "images": build_weighted_view(
            out / "train", out / "train-ccp-clip-weighted", CCP_CLIP_WEIGHTS)}
        manifest["teacher"] = teacher.describe()
        manifest["teacher_sampling"] = {"train_interval_s": TRAIN_FRAME_INTERVAL, "train_cap": TRAIN_FRAMES_PER_CLIP,
                                        "eval_frames_per_clip": EVAL_FRAMES_PER_CLIP}
    else:
        manifest["teacher"] = None
    eval_counts = {"eg1800-test": build_test_split(eg1800, out / "eval" / "eg1800-test"),
                   "ccp-test": build_test_split(ccp, out / "eval" / "ccp-test"),
                   "heldout-frames": heldout}
    manifest.update({
        "train_counts": dict(sorted(train.counts.items())),
        "train_total": sum(train.counts.values()),
        "training_clips": clips,
        "eval_counts": eval_counts,
        "composites": {"rooms": composites[0], "photos": composites[1], "walls": walls, "colour_match": COLOUR_MATCH},
        "licences": "EG1800: research use only (a model trained on it inherits that); see ../shared/*/SOURCES.md",
        "build_seconds": round(time.time() - started, 1),
    })
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """python -m pipeline.dataprep --shared ../shared --out DIR [--max-side 384] [--quality 90]
    [--image-format webp] [--ccp-full-body N] [--composites ROOMS PHOTOS WALLS] [--no-teacher];
    returns the exit status (1 on a BlurvidError)."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.dataprep", description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path("../shared"), help="the shared folder (datasets/, media/)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--max-side", type=int, default=384, help="longest side of training images (default 384)")
    ap.add_argument("--quality", type=int, default=90, help="JPEG or WebP quality of training images (default 90)")
    ap.add_argument("--image-format", choices=tuple(IMAGE_FORMATS), default="jpg",
                    help="training images as JPEG (default) or WebP (0.6-0.75x the bytes at the same --quality)")
    ap.add_argument("--ccp-full-body", type=int, default=None, metavar="N",
                    help="keep only N of the CCP full-body photos (fixed seed; default all); crops use all")
    ap.add_argument("--composites", type=int, nargs=3, metavar=("ROOMS", "PHOTOS", "WALLS"),
                    default=(ROOM_COMPOSITES, PHOTO_COMPOSITES, WALL_COMPOSITES),
                    help="people pasted onto empty rooms, onto other street photos and onto plain walls "
                         f"(default {ROOM_COMPOSITES} {PHOTO_COMPOSITES} {WALL_COMPOSITES}); a larger count keeps "
                         "the default build's room and wall composites and adds new ones")
    ap.add_argument("--teacher", type=Path, default=DEFAULT_TEACHER_DIR, help="folder with the selfie .tflite models")
    ap.add_argument("--no-teacher", action="store_true", help="skip the teacher-labelled video frames")
    args = ap.parse_args(argv)
    if args.max_side < 32:
        ap.error("--max-side must be at least 32")
    if not 1 <= args.quality <= 100:
        ap.error("--quality must be 1..100")
    if min(args.composites) < 0:
        ap.error("--composites counts must be 0 or more")
    try:
        manifest = build(args.shared, args.out.expanduser(), max_side=args.max_side, quality=args.quality,
                         image_format=args.image_format, ccp_full_body=args.ccp_full_body,
                         teacher_dir=None if args.no_teacher else args.teacher,
                         composites=tuple(args.composites[:2]), walls=args.composites[2])
    except BlurvidError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    summary = {k: manifest[k] for k in ("train_counts", "train_total", "eval_counts", "build_seconds")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
