"""Train the person U-Net with fastai on a folder of images/ and masks/.

    from pipeline.train import TrainOptions, train
    train(Path("data/me"), Path("models/me.safetensors"), TrainOptions(epochs=20, size=160))

DATA holds images/NAME.{jpg,png} and masks/NAME.png with matching names; mask values 0/255 or 0/1,
any size. The recipe: fastai DataBlock (ImageBlock + MaskBlock), `unet_learner` over a ResNet18
with no pretrained weights (none can be downloaded here), webcam-minded augmentation (flips,
scale/crop, lighting, blur, noise, JPEG), fit_one_cycle (or, with `swa`, a constant rate and the
mean of every epoch's weights), a checkpoint every epoch so a killed run resumes, and `from_model`
to fine-tune an existing model on a user's own footage.
"""

from __future__ import annotations

import io
import math
import platform
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import fastai.callback.fp16  # noqa: F401  (patches Learner.to_bf16)
import fastai.callback.schedule  # noqa: F401  (patches Learner.fit_one_cycle)
from fastai.callback.core import Callback
from fastai.callback.tracker import SaveModelCallback
from fastai.data.block import DataBlock, TransformBlock
from fastai.data.transforms import FuncSplitter, IntToFloatTensor, Normalize, RandomSplitter
from fastai.losses import CrossEntropyLossFlat, DiceLoss, FocalLossFlat
from fastai.metrics import JaccardCoeff
from fastai.torch_core import set_seed
from fastai.vision.augment import Hue, RandomResizedCrop, RandTransform, Saturation, aug_transforms
from fastai.vision.core import PILImage, PILMask
from fastai.vision.data import ImageBlock, MaskBlock
from fastai.vision.learner import unet_learner
from fastai.vision.models import resnet18
from fastai.vision.models.unet import ResizeToOrig
from fasttransform import ItemTransform
from kornia.losses import lovasz_softmax_loss
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn
from PIL import Image

from pipeline.errors import InputError, ModelError
from pipeline.evaluate import IMAGE_SUFFIXES
from pipeline.segment import ModelConfig, load_model, save_model

CODES = ["background", "person"]
DEFAULT_CHECKPOINTS = Path.home() / ".cache" / "blurvid" / "checkpoints"


@dataclass(frozen=True)
class TrainOptions:
    """How to train; every field is a CLI option of `blurvid train`."""

    epochs: int = 20
    minutes: float | None = None    # instead of epochs: as many epochs as fit in this time budget
    size: int = 160                 # square training crop; inference runs at the model's work_size
    min_scale: float = 0.3          # smallest share of an image's area a crop covers (see SquareCrop)
    bs: int = 16
    lr: float = 2e-3
    valid_pct: float = 0.1          # random validation split, unless valid_list names the images
    valid_list: Path | None = None  # a file of image stems to validate on
    seed: int = 42                  # the validation split, the order of the images, the augmentations
    work_size: tuple[int, int] = (256, 144)  # (w, h) recorded in the model config
    from_model: Path | None = None  # fine-tune these weights instead of starting from scratch
    resume: bool = False            # continue from the last epoch checkpoint in checkpoint_dir
    checkpoint_dir: Path = DEFAULT_CHECKPOINTS
    export_pkl: Path | None = None  # also write a fastai learn.export() .pkl
    num_workers: int | None = None  # DataLoader workers (None: fastai's default)
    device: str | None = None       # None: CUDA when available
    mixed_precision: bool = True    # bf16 autocast (CUDA, or CPUs with native bf16)
    loss: str = "ce"                # "ce": cross-entropy; "ce+dice" / "ce+lovasz" / "focal+dice": see LOSSES
    swa: bool = False               # constant lr, and write the mean of every epoch's weights (WeightAveraging)
    swa_every: int | None = None    # with swa: average every this many training batches, not once an epoch
    no_geometry: tuple[str, ...] = ()  # name prefixes of images that get no rotation, zoom or warp (ItemGeometry)
    keep_aspect: bool = False       # square crops, so people keep their proportions (SquareCrop)
    colour: bool = False            # also vary saturation and hue (colour_transforms)

    def __post_init__(self):
        if self.swa_every is not None and not self.swa:
            raise InputError("--swa-every sets how often --swa averages: give --swa too")


class PixelPlusOverlapLoss:
    """A per-pixel loss (cross-entropy unless `pixel_loss` names another of fastai's flat losses) plus
    an overlap term (`overlap(logits, masks)`), for the losses below.

    Keeps the pixel loss's fastai `activation` and `decodes`, so predict and metrics work as with it alone.
    """

    def __init__(self, weight: float = 1.0, pixel_loss=None):
        self.weight = weight
        self.pixel_loss = pixel_loss if pixel_loss is not None else CrossEntropyLossFlat(axis=1)

    def __call__(self, pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        # Under mixed precision the logits may be bf16; sums and sorts over a whole image need fp32.
        return self.pixel_loss(pred, targ) + self.weight * self.overlap(pred.float(), targ)

    def overlap(self, pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return self.pixel_loss.activation(x)

    def decodes(self, x: torch.Tensor) -> torch.Tensor:
        return self.pixel_loss.decodes(x)


class CrossEntropyDiceLoss(PixelPlusOverlapLoss):
    """loss = CrossEntropyDiceLoss()(logits, masks): pixel cross-entropy plus the mean soft Dice loss.

    Cross-entropy weighs every pixel alike, so a 3-px error along a full-body outline costs little
    while it costs IoU a lot; the Dice term (1 - soft overlap, per image and class) scores the
    overlap that IoU measures.
    """

    def __init__(self, weight: float = 1.0, pixel_loss=None):
        super().__init__(weight, pixel_loss)
        self.dice = DiceLoss(axis=1, reduction="mean")

    def overlap(self, pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        return self.dice(pred, targ)


class CrossEntropyLovaszLoss(PixelPlusOverlapLoss):
    """loss = CrossEntropyLovaszLoss()(logits, masks): pixel cross-entropy plus the Lovász-softmax loss.

    The Lovász-softmax (Berman et al., 2018; kornia's implementation) is the tight convex surrogate
    of the Jaccard loss 1 - IoU, per image and class: where soft Dice rewards the overlap of soft
    probabilities, it sorts each image's pixel errors and weights each by how much it moves that
    image's IoU, the figure `blurvid evaluate` reports. Berman et al. fine-tuned networks trained with
    cross-entropy with it, which is how blurvid uses it (`--from`); cross-entropy stays in the sum.
    """

    def overlap(self, pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        # kornia wants plain tensors: fastai's TensorImage/TensorMask would carry their type dispatch in.
        return lovasz_softmax_loss(pred.as_subclass(torch.Tensor), targ.as_subclass(torch.Tensor).long())


class FocalDiceLoss(CrossEntropyDiceLoss):
    """loss = FocalDiceLoss()(logits, masks): the focal loss (gamma 2) plus the mean soft Dice loss.

    The focal loss (Lin et al., 2017; fastai's FocalLossFlat) is cross-entropy with each pixel's term
    scaled by (1 - p)^gamma, p the probability given to its true class: the pixels a fine-tuned model
    already gets right (most background, body interiors) fade out of the sum, and the ones it still
    gets confidently wrong (a building or a phone taken for the person) carry it, every step, where
    hard-example mining (`pipeline.hardmining`) re-weights whole images once.
    """

    def __init__(self, weight: float = 1.0, gamma: float = 2.0):
        super().__init__(weight, pixel_loss=FocalLossFlat(axis=1, gamma=gamma))


LOSSES = {"ce": lambda: CrossEntropyLossFlat(axis=1), "ce+dice": CrossEntropyDiceLoss,
          "ce+lovasz": CrossEntropyLovaszLoss, "focal+dice": FocalDiceLoss}


class MaskFromName:
    """get_y for the DataBlock: images/NAME.jpg -> masks/NAME.png as a 0/1 PILMask.

    A module-level class (not a notebook lambda) so exported learners unpickle anywhere.
    """

    def __init__(self, masks_dir: Path):
        self.masks_dir = Path(masks_dir)
        self.by_stem = {p.stem: p for p in self.masks_dir.iterdir() if p.is_file()}

    def __call__(self, img_path: Path) -> PILMask:
        msk = np.asarray(Image.open(self.by_stem[Path(img_path).stem]).convert("L"))
        threshold = 127 if msk.max() > 1 else 0   # 0/255 and 0/1 masks both work
        return PILMask.create((msk > threshold).astype(np.uint8))


class WebcamDegrade(RandTransform):
    """Blur, sensor noise and JPEG re-compression, as webcams and video codecs produce them.

    Runs on images only (masks pass through) before the crop, on the item in PIL form.
    """

    split_idx, order = 0, 2   # training set only; before RandomResizedCrop (order 1 runs first)

    def __init__(self, p: float = 0.5):
        super().__init__(p=p)

    def before_call(self, b, split_idx):
        super().before_call(b, split_idx)
        self.kind = random.choice(("blur", "noise", "jpeg"))
        self.amount = random.random()

    def encodes(self, img: PILImage) -> PILImage:
        arr = np.asarray(img)
        if self.kind == "blur":
            k = 3 + 2 * int(self.amount * 2)
            arr = cv2.GaussianBlur(arr, (k, k), 0)
        elif self.kind == "noise":
            noise = np.random.normal(0, 3 + 9 * self.amount, arr.shape)
            arr = np.clip(arr + noise, 0, 255).astype(np.uint8)
        else:
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="JPEG", quality=int(25 + 50 * self.amount))
            arr = np.asarray(Image.open(buf).convert("RGB"))
        return PILImage.create(arr)


class GeometryImage(PILImage):
    """An image that ItemGeometry rotates, zooms and warps (see OpenForGeometry)."""


class OpenForGeometry:
    """type_tfms for the image block: opens each image as a GeometryImage unless its file name starts
    with one of `no_geometry`; those stay plain PILImages, which ItemGeometry passes by.

    A module-level class (not a closure), like MaskFromName, so exported learners unpickle.
    """

    def __init__(self, no_geometry: tuple[str, ...]):
        self.no_geometry = tuple(no_geometry)

    def __call__(self, path) -> PILImage:
        plain = Path(path).name.startswith(self.no_geometry)
        return (PILImage if plain else GeometryImage).create(path)


class ItemGeometry(ItemTransform):
    """Rotation (±10°), zoom (1–1.1) and a keystone warp (±10 %), each with p 0.75, per item before the
    crop, on GeometryImages only: the kinds and ranges aug_transforms draws per batch, for chosen items.

    Used instead of the batch-level geometry when `--no-geometry` names items that must keep their
    straight, unzoomed view (stage 25: the CCP street photos; MODEL.md).
    """

    split_idx, order = 0, 0   # training set only; before WebcamDegrade and RandomResizedCrop

    def encodes(self, item):
        img, mask = item
        if not isinstance(img, GeometryImage):
            return item
        a, m = np.asarray(img), np.asarray(mask)
        h, w = m.shape[:2]
        angle = random.uniform(-10, 10) if random.random() < 0.75 else 0.0
        zoom = random.uniform(1.0, 1.1) if random.random() < 0.75 else 1.0
        cx, cy = w * random.uniform(0.4, 0.6), h * random.uniform(0.4, 0.6)
        affine = np.vstack([cv2.getRotationMatrix2D((cx, cy), angle, zoom), [0, 0, 1]])
        kx, ky = (random.uniform(-0.1, 0.1) for _ in range(2)) if random.random() < 0.75 else (0.0, 0.0)
        corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
        dx, dy = kx * w / 2, ky * h / 2
        moved = corners.copy()
        moved[[0, 1], 0] += [dx, -dx]   # keystone: the top edge narrows (kx > 0) ...
        moved[[3, 2], 0] += [-dx, dx]   # ... while the bottom widens
        moved[[0, 3], 1] += [dy, -dy]   # and the left edge against the right
        moved[[1, 2], 1] += [-dy, dy]
        matrix = cv2.getPerspectiveTransform(corners, moved) @ affine
        a = cv2.warpPerspective(a, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        m = cv2.warpPerspective(m, matrix, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101)
        return PILImage.create(a), PILMask.create(m)


class SquareCrop(RandomResizedCrop):
    """RandomResizedCrop whose training crops are (nearly) square, like the output, so that people
    keep their proportions: a 3:4 portrait is not widened by a third, nor a 16:9 frame narrowed.

        SquareCrop(128, min_scale=0.8)   # side: sqrt(0.8..1) of the image's shorter side

    RandomResizedCrop draws crops of any aspect in `ratio` and resizes them to a square; with
    `min_scale` near 1 a crop must nearly share its image's aspect to fit, so every portrait is seen
    stretched, while inference keeps the frame's aspect (segment.fit_work_size). Here `min_scale` is the smallest
    share of the largest square a crop covers, and the aspect varies by ±10 % only. Validation
    images are treated as RandomResizedCrop treats them.
    """

    def __init__(self, size: int, min_scale: float = 0.8, ratio: tuple[float, float] = (0.9, 1.1), **kwargs):
        super().__init__(size, min_scale=min_scale, ratio=ratio, **kwargs)

    def before_call(self, b, split_idx):
        super().before_call(b, split_idx)   # sets orig_sz and final_size, and the validation crop
        if split_idx:
            return
        w, h = self.orig_sz
        side = min(w, h) * math.sqrt(random.uniform(self.min_scale, 1.0))
        ratio = math.exp(random.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
        nw, nh = min(w, round(side * math.sqrt(ratio))), min(h, round(side / math.sqrt(ratio)))
        self.cp_size = (nw, nh)
        self.tl = (random.randint(0, w - nw), random.randint(0, h - nh))


def find_pairs(data: Path) -> list[Path]:
    """Images in DATA/images that have a mask in DATA/masks; InputError if there are none."""
    images, masks = data / "images", data / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise InputError(f"{data}: expected a folder with images/ and masks/ inside")
    mask_stems = {p.stem for p in masks.iterdir()}
    # By suffix, not fastai's get_image_files: that asks Python's mimetypes table, which lists .webp
    # only from Python 3.13 on, or where /etc/mime.types adds it (a bare GPU machine may have neither).
    pairs = [p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.stem in mask_stems]
    if not pairs:
        raise InputError(f"{data}: no image in images/ has a mask with the same name in masks/")
    return sorted(pairs)


def validation_share(images: int, valid_pct: float) -> float:
    """The share of `images` to validate on: `valid_pct`, but at least one image where there are two
    or more, so that a handful of a user's own frames still trains (10 % of 8 would be none)."""
    return max(valid_pct, 1 / images) if images > 1 else valid_pct


def colour_transforms() -> list:
    """Batch transforms for `--colour`: saturation from about 0.6 to 1.7 times (towards grey or more
    vivid) and hue turned by up to about 0.05 of the circle, each for half the images.

    aug_transforms varies brightness and contrast only, so without these every skin tone and white
    balance the model sees is one of its photos'; the hue turn stays small because skin's hue is
    itself a cue worth keeping."""
    return [Saturation(max_lighting=0.4, p=0.5), Hue(max_hue=0.05, p=0.5)]


def make_dataloaders(data: Path, opts: TrainOptions, device: torch.device, config: ModelConfig = ModelConfig()):
    """fastai DataLoaders over DATA's image/mask pairs with webcam-minded augmentation, normalised
    with `config`'s mean and std: the model must see in training exactly what the Segmenters feed it.

    (fastai's unet_learner adds a Normalize only for pretrained encoders; blurvid's is not pretrained,
    so the normalisation is added here, where it cannot silently go missing.)
    """
    pairs = find_pairs(data)
    if opts.valid_list is not None:
        valid_stems = set(Path(opts.valid_list).read_text().split())
        splitter = FuncSplitter(lambda p: Path(p).stem in valid_stems)
    else:
        splitter = RandomSplitter(valid_pct=validation_share(len(pairs), opts.valid_pct), seed=opts.seed)
    resized_crop = (SquareCrop(opts.size, min_scale=opts.min_scale) if opts.keep_aspect
                    else RandomResizedCrop(opts.size, min_scale=opts.min_scale, ratio=(0.6, 1.7)))
    crop = [WebcamDegrade(p=0.4), resized_crop]
    if opts.no_geometry:   # geometry per item, so that the named items can go without it
        images = TransformBlock(type_tfms=OpenForGeometry(opts.no_geometry), batch_tfms=IntToFloatTensor)
        item_tfms, geometry = [ItemGeometry(), *crop], dict(max_rotate=0, max_zoom=1.0, max_warp=0)
    else:
        images, item_tfms, geometry = ImageBlock, crop, dict(max_rotate=10, max_zoom=1.1, max_warp=0.1)
    block = DataBlock(
        blocks=(images, MaskBlock(codes=CODES)),
        get_items=lambda _: pairs,
        get_y=MaskFromName(data / "masks"),
        splitter=splitter,
        item_tfms=item_tfms,
        batch_tfms=[*aug_transforms(**geometry, max_lighting=0.4, p_lighting=0.8),
                    *(colour_transforms() if opts.colour else []),
                    Normalize.from_stats(config.mean, config.std)],
    )
    kwargs = {} if opts.num_workers is None else {"num_workers": opts.num_workers}
    return block.dataloaders(data, bs=opts.bs, device=device, seed=opts.seed, **kwargs)


@dataclass
class TrainResult:
    """What `train` wrote and how the loss went."""

    path: Path                # the .safetensors written (its .json is beside it)
    losses: list[float]       # training loss per batch, in order
    valid_iou: float


def train(data: Path, out: Path, opts: TrainOptions = TrainOptions(), *, log=print) -> TrainResult:
    """Train on DATA and write OUT (.safetensors + .json)."""
    data, out = Path(data), Path(out)
    device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    set_seed(opts.seed)   # torch's, numpy's and Python's generators: the augmentations draw from all three
    config = ModelConfig(work_size=opts.work_size)
    if opts.from_model is not None:
        _, base = load_model(opts.from_model)
        config = replace(base, work_size=opts.work_size or base.work_size, metrics={})
    dls = make_dataloaders(data, opts, device, config)
    if not len(dls.valid_ds) or not len(dls.train_ds):
        raise InputError(f"{data}: {len(dls.train_ds)} images to train on and {len(dls.valid_ds)} to "
                         "validate on; training needs at least one of each (--valid-list, --valid-pct)")
    learn = unet_learner(dls, resnet18, pretrained=False, n_out=len(CODES),
                         loss_func=LOSSES[opts.loss](), metrics=[JaccardCoeff()],
                         path=opts.checkpoint_dir, model_dir=".", **config.unet)
    if opts.from_model is not None:
        model, _ = load_model(opts.from_model)
        learn.model.load_state_dict(model.state_dict())
    learn.add_cb(HeadBeforeShuffle())
    if device.type == "cuda" and opts.mixed_precision:
        learn = learn.to_bf16()
    elif opts.mixed_precision and cpu_has_bf16():
        learn.add_cb(CpuBf16())

    start_epoch = 0
    checkpoint = opts.checkpoint_dir / "last.pth"
    if opts.resume:
        if not checkpoint.is_file():
            raise ModelError(f"{checkpoint}: no checkpoint to resume from")
        learn.load("last", device=device, with_opt=True)
        start_epoch = int((opts.checkpoint_dir / "last.epoch").read_text()) + 1
        log(f"resuming after epoch {start_epoch}")

    started = time.time()
    epochs = opts.epochs
    if opts.minutes is not None and not opts.resume:
        epochs = _epochs_within(learn, opts.minutes * 60, opts.lr, log=log)
    checkpoints = EpochCheckpoint(opts.checkpoint_dir)
    if opts.swa:
        averaging = WeightAveraging(opts.checkpoint_dir, resume=opts.resume, every=opts.swa_every)
        learn.fit(epochs, opts.lr, start_epoch=start_epoch, cbs=[checkpoints, averaging])
    else:
        learn.fit_one_cycle(epochs, opts.lr, start_epoch=start_epoch, cbs=[checkpoints])
    minutes = (time.time() - started) / 60
    losses = [float(v) for v in learn.recorder.losses]   # validate() below resets the recorder

    valid_loss, valid_iou = (float(v) for v in learn.validate())
    config = replace(config, training={
        **({"base": config.training} if config.training else {}),   # what the --from model was trained on
        "data": str(data), "images": len(dls.train_ds) + len(dls.valid_ds),
        "epochs": epochs, "size": opts.size, "min_scale": opts.min_scale, "bs": opts.bs, "lr": opts.lr,
        "loss": opts.loss, "keep_aspect": opts.keep_aspect, "colour": opts.colour, "seed": opts.seed,
        "schedule": "swa" if opts.swa else "one-cycle",
        **({"swa_every": opts.swa_every} if opts.swa_every else {}),   # TrainOptions ensures swa
        "no_geometry": list(opts.no_geometry),
        "from_model": str(opts.from_model) if opts.from_model else None,
        "minutes": round(minutes, 1), "device": _describe_device(device),
        "valid_loss": round(valid_loss, 4), "valid_iou": round(valid_iou, 4),
    })
    path = save_model(learn.model.float(), config, out)
    log(f"wrote {path} (valid IoU {valid_iou:.4f}, {minutes:.1f} min)")
    if opts.export_pkl is not None:
        learn.export(Path(opts.export_pkl).absolute())
    return TrainResult(path=path, losses=losses, valid_iou=valid_iou)


def _epochs_within(learn, seconds: float, lr: float, *, log=print) -> int:
    """Times one gentle warm-up epoch and returns how many one-cycle epochs fit in the rest of `seconds`."""
    started = time.time()
    learn.fit(1, lr / 10)
    per_epoch = time.time() - started
    epochs = max(1, int((seconds - per_epoch) / (per_epoch * 1.05)))
    log(f"one epoch takes {per_epoch:.1f} s: training {epochs} epochs in the time budget")
    return epochs


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively (avx512_bf16 / AMX), where bf16 autocast pays."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


class CpuBf16(Callback):
    """bf16 autocast plus channels_last for training on a CPU with native bf16.

    fastai's MixedPrecision only knows CUDA. On these AMD cores the pair cuts a U-Net-ResNet18
    training step from 1.07 s to 0.59 s (batch 16 at 112 px); weights and the optimiser stay fp32.
    """

    order = 10
    autocast = None

    def before_fit(self):
        self.learn.model.to(memory_format=torch.channels_last)

    def before_batch(self):
        self.learn.xb = tuple(x.contiguous(memory_format=torch.channels_last) for x in self.xb)
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        self.autocast.__enter__()

    def after_pred(self):
        self.learn.pred = self.pred.float()

    def after_loss(self):
        self._leave_autocast()

    def after_cancel_batch(self):
        self._leave_autocast()

    def _leave_autocast(self):
        if self.autocast is not None:
            self.autocast.__exit__(None, None, None)
            self.autocast = None

    def after_fit(self):
        self.learn.model.to(memory_format=torch.contiguous_format)


class ShuffledHead(nn.Module):
    """The U-Net's 1×1 head run before its last pixel shuffle, with the head's own parameters.

        learn.add_cb(HeadBeforeShuffle())   # what `train` does; the model's weights are unchanged

    fastai's U-Net ends in a 1×1 convolution from 96 channels to 2 at full size, after a pixel
    shuffle; oneDNN runs that thin convolution far below the speed of the others (in a profile at
    128 px, batch 16, 2 cores: 0.48 s of a 2.7 s step, forward and backward). The head mixes
    channels pixel by pixel, so it commutes with the shuffle: the same weight, repeated for each of
    the four sub-pixel channel groups (a Kronecker product with the identity), maps the 384 channels
    at half size to 8, which are then shuffled to 2 at full size. The logits and gradients are the
    same as the stock layers'; LeanUnet.fuse_head does the same for inference, with fixed weights.
    """

    def __init__(self, head: nn.Conv2d, factor: int):
        super().__init__()
        self.weight, self.bias = head.weight, head.bias   # the same Parameters: same names and optimiser state
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = self.factor ** 2
        identity = torch.eye(blocks, dtype=self.weight.dtype, device=self.weight.device)
        # PixelShuffle takes channel c*blocks + s to sub-pixel s of output channel c
        weight = torch.kron(self.weight.flatten(1), identity)
        # As a tensor contraction, not a convolution: oneDNN is slow for so few output channels
        # (0.08 s against 0.13-0.15 s forward and backward at 128 px, batch 16, on 2 cores).
        out = torch.einsum("oc,nchw->nohw", weight, x)
        if self.bias is not None:
            out = out + self.bias.repeat_interleave(blocks)[:, None, None]
        out = F.pixel_shuffle(out, self.factor)
        orig = getattr(x, "orig", None)   # the network's input, which fastai's SequentialEx hands every layer
        if orig is not None and orig.shape[-2:] != out.shape[-2:]:
            out = F.interpolate(out, orig.shape[-2:], mode="nearest")   # as the ResizeToOrig it stands in for
        return out


class HeadBeforeShuffle(Callback):
    """Trains fastai's U-Net with its head run before the last pixel shuffle (ShuffledHead), and puts
    the stock layers back after every fit, so that saving and exporting see the network unchanged.
    Any other network (one this layout does not match) trains as it is."""

    order = -5   # before the other callbacks see the model (WeightAveraging copies it)

    def before_fit(self):
        self.restore = _put_head_before_shuffle(self.learn.model)

    def after_fit(self):
        if self.restore is not None:
            self.restore()
            self.restore = None


def _put_head_before_shuffle(model: nn.Module):
    """Swaps ShuffledHead into a fastai DynamicUnet in place; returns a function that swaps it back,
    or None where the model does not end in shuffle, resize, 1×1 head (e.g. with last_cross)."""
    layers = getattr(model, "layers", None)
    if layers is None or len(layers) < 4:
        return None
    up, resize, head = layers[-4], layers[-3], layers[-2]
    if not (isinstance(up, nn.Sequential) and len(up) == 2 and isinstance(up[1], nn.PixelShuffle)
            and isinstance(resize, ResizeToOrig) and isinstance(head, nn.Sequential)
            and len(head) == 1 and isinstance(head[0], nn.Conv2d) and head[0].kernel_size == (1, 1)):
        return None
    shuffle, conv = up[1], head[0]
    up[1], layers[-3], head[0] = nn.Identity(), nn.Identity(), ShuffledHead(conv, shuffle.upscale_factor)

    def restore():
        up[1], layers[-3], head[0] = shuffle, resize, conv

    return restore


class EpochCheckpoint(SaveModelCallback):
    """Saves model and optimiser after every epoch as `last`, noting the epoch, so training resumes."""

    def __init__(self, folder: Path):
        super().__init__(fname="last", every_epoch=True, with_opt=True)
        self.folder = Path(folder)

    def after_epoch(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        self._save("last")
        (self.folder / "last.epoch").write_text(str(self.epoch))

    def after_fit(self, **kwargs):
        pass


class WeightAveraging(Callback):
    """Stochastic weight averaging (Izmailov et al., 2018): the model ends as the mean of its weights
    at every epoch's end (or, with `every`, after every `every`-th training batch of each epoch), with
    BatchNorm statistics recomputed for those mean weights.

        learn.fit(12, 1e-4, cbs=[WeightAveraging(checkpoint_dir)])
        learn.fit(2, 1e-4, cbs=[WeightAveraging(checkpoint_dir, every=50)])   # 8 snapshots an epoch of 441

    Meant for a constant learning rate after a model has converged: each epoch ends at a different
    point of the same low-loss basin, and their mean lies nearer its centre, which generalises better
    than any one of them (the uniform "soups" of blurvid's fine-tunes gained the same way). A short
    fine-tune visits few epoch ends (two epochs average two points), so `every` samples the same path
    more densely. The running mean is saved at each epoch's end, so a resumed run (`resume=True`)
    keeps averaging; batches are counted within each epoch, so a resumed run takes the same snapshots.
    """

    order = 60   # after the Recorder (50), as fastai's own trackers run; it needs no other callback

    def __init__(self, folder: Path, resume: bool = False, every: int | None = None):
        if every is not None and every < 1:
            raise ValueError(f"every must be at least 1 batch, not {every}")
        self.path = Path(folder) / "average.pth"
        self.resume = resume
        self.every = every

    def before_fit(self):
        self.average = AveragedModel(self.learn.model)
        if self.resume and self.path.is_file():
            self.average.load_state_dict(torch.load(self.path, map_location="cpu"))

    def before_epoch(self):
        self.cancelled = False

    def after_cancel_epoch(self):
        self.cancelled = True   # an epoch a resumed run skips (fastai still calls after_epoch for it)

    def after_batch(self):
        if self.every is not None and self.training and (self.iter + 1) % self.every == 0:
            self.average.update_parameters(self.learn.model)

    def after_epoch(self):
        if self.cancelled:
            return
        if self.every is None:
            self.average.update_parameters(self.learn.model)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.average.state_dict(), self.path)

    def after_fit(self):
        if int(self.average.n_averaged) == 0:
            return   # stopped before the first epoch ended: nothing to average
        self.learn.model.load_state_dict(self.average.module.state_dict())
        # The running means and variances belong to no epoch's weights; one pass over the training
        # data measures them for the averaged ones, as torch's SWA recipe prescribes.
        update_bn(self.dls.train, self.learn.model)


def checkpoint_to_model(checkpoint: Path, out: Path, config: ModelConfig = ModelConfig(), **training) -> Path:
    """Write a model file from an epoch checkpoint (fastai `learn.save`), e.g. of an unfinished run.

        checkpoint_to_model(DEFAULT_CHECKPOINTS / "last.pth", Path("models/wip.safetensors"))
    """
    from pipeline.segment import build_unet

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = build_unet(config)
    model.load_state_dict(state["model"] if "model" in state else state)
    config = replace(config, training={**config.training, "checkpoint": str(checkpoint), **training})
    return save_model(model, config, out)


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
