"""Training end to end on tiny data, and evaluate / label / frames on known masks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import make_tiny_dataset, make_tiny_model
from pipeline.errors import InputError
from pipeline.evaluate import boundary_f, evaluate_masks, iou, paired_difference
from pipeline.label import draft_masks, extract_frames
from pipeline.segment import load_segmenter


class Oracle:
    """Returns a fixed answer for every frame: 'perfect' reads the red disc, 'empty' says no person."""

    work_size = (64, 48)

    def __init__(self, kind: str):
        self.kind = kind

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        if self.kind == "empty":
            return np.zeros(frames.shape[:3], np.float32)
        r, g, b = (frames[..., i].astype(int) for i in range(3))
        return ((r > 150) & (g < 110) & (b < 110)).astype(np.float32)


@pytest.fixture
def tiny(tmp_path) -> Path:
    return make_tiny_dataset(tmp_path / "tiny", n=12, size=(64, 48))


@pytest.mark.parametrize("loss", ["ce", "ce+dice", "ce+lovasz", "focal+dice"])
def test_training_lowers_the_loss_and_writes_a_working_model(tiny, tmp_path, loss):
    from pipeline.segment import load_model
    from pipeline.train import TrainOptions, train

    opts = TrainOptions(epochs=3, size=32, bs=4, lr=1e-3, num_workers=0, work_size=(64, 48), loss=loss,
                        checkpoint_dir=tmp_path / "ck", export_pkl=tmp_path / "export.pkl")
    result = train(tiny, tmp_path / "m.safetensors", opts, log=lambda msg: None)
    first, last = np.mean(result.losses[:3]), np.mean(result.losses[-3:])
    assert last < first
    assert load_model(result.path)[1].training["loss"] == loss
    assert (tmp_path / "ck" / "last.pth").is_file()          # a checkpoint every epoch, to resume
    for model in (result.path, tmp_path / "export.pkl"):
        seg = load_segmenter(model)
        prob = seg(np.zeros((1, 48, 64, 3), np.uint8))
        assert prob.shape == (1, 48, 64) and np.isfinite(prob).all()


def _prefix_half(data: Path, prefix: str) -> set[str]:
    """Renames the first half of DATA's image/mask pairs to PREFIX + name; returns the new stems."""
    renamed = set()
    for img in sorted((data / "images").iterdir())[: len(list((data / "images").iterdir())) // 2]:
        msk = data / "masks" / f"{img.stem}.png"
        img.rename(img.with_name(prefix + img.name))
        msk.rename(msk.with_name(prefix + msk.name))
        renamed.add(prefix + img.stem)
    return renamed


def test_no_geometry_opens_only_the_other_images_for_item_geometry(tiny):
    import torch

    from pipeline.train import GeometryImage, TrainOptions, make_dataloaders

    plain = _prefix_half(tiny, "street_")
    opts = TrainOptions(size=32, bs=4, num_workers=0, valid_pct=0.25, no_geometry=("street_",))
    dls = make_dataloaders(tiny, opts, torch.device("cpu"))
    items = list(dls.train.items) + list(dls.valid.items)
    assert len(items) == 12
    for path in items:
        img = dls.train.dataset.tfms[0](path)   # the image pipeline: how the DataBlock opens it
        assert isinstance(img, GeometryImage) == (Path(path).stem not in plain), path


@pytest.mark.parametrize("min_scale", [1.0, 0.3])
def test_min_scale_sets_how_much_of_each_image_a_training_crop_keeps(tiny, min_scale):
    """At --min-scale 1 every crop is the whole image (the person keeps its share of the frame, as at
    inference); at 0.3 crops cut into the disc or zoom onto it, so the shares spread."""
    import torch

    from pipeline.train import TrainOptions, make_dataloaders

    whole = np.mean([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).mean() / 255 for p in (tiny / "masks").iterdir()])
    opts = TrainOptions(size=32, bs=3, num_workers=0, valid_pct=0.25, min_scale=min_scale,
                        no_geometry=("",))   # every item: no rotation, zoom or warp to move the shares
    dls = make_dataloaders(tiny, opts, torch.device("cpu"))
    shares = np.concatenate([masks.float().mean(dim=(1, 2)).numpy() for _ in range(3) for _, masks in dls.train])
    spread = np.abs(shares - whole).max()
    if min_scale == 1.0:
        assert spread < 0.02, (whole, shares)
    else:
        assert spread > 0.05, (whole, shares)


@pytest.mark.parametrize("keep_aspect", [False, True])
def test_keep_aspect_crops_keep_a_round_person_round(tiny, keep_aspect):
    """The tiny images are 4:3 with a disc in them. RandomResizedCrop squeezes each into a square
    (--min-scale 1: the whole image), so the disc comes out 3/4 as wide as it is tall; SquareCrop
    crops a square and the disc stays round, as inference (which keeps the aspect) shows it."""
    import torch

    from pipeline.train import TrainOptions, make_dataloaders

    opts = TrainOptions(size=32, bs=3, num_workers=0, valid_pct=0.25, min_scale=1.0,
                        keep_aspect=keep_aspect, no_geometry=("",))
    dls = make_dataloaders(tiny, opts, torch.device("cpu"))
    aspects = []
    for _ in range(3):
        for _, masks in dls.train:
            for mask in masks.numpy().astype(bool):
                ys, xs = np.nonzero(mask)
                inside = len(xs) and xs.min() > 0 and ys.min() > 0 and xs.max() < 31 and ys.max() < 31
                if inside:   # a disc the crop cut through has no aspect to speak of
                    aspects.append((np.ptp(xs) + 1) / (np.ptp(ys) + 1))
    assert len(aspects) >= 6
    expected = 1.0 if keep_aspect else 0.75
    assert abs(np.median(aspects) - expected) < 0.08, aspects


def test_colour_transforms_turn_saturation_and_hue_of_images_only():
    """--colour: half the images come out greyer or more vivid (0.6–1.7 times the saturation) and half
    with their hue turned by at most about 0.05 of the circle; masks pass through untouched."""
    import torch
    from fastai.torch_core import TensorImage, TensorMask
    from fastai.vision.augment import rgb2hsv

    from pipeline.train import colour_transforms

    torch.manual_seed(0)
    skin = torch.tensor([0.80, 0.55, 0.45])
    images = TensorImage(skin[None, :, None, None].expand(256, 3, 4, 4).clone())
    masks = TensorMask(torch.randint(0, 2, (256, 4, 4)))
    out, out_masks = images, masks.clone()
    for tfm in colour_transforms():
        out, out_masks = tfm((out, out_masks), split_idx=0)

    assert out_masks.equal(masks)
    before, after = rgb2hsv(images)[:, :, 0, 0], rgb2hsv(out)[:, :, 0, 0]
    ratio = after[:, 1] / before[:, 1]
    turn = (after[:, 0] - before[:, 0] + 0.5) % 1 - 0.5
    assert (ratio < 0.9).any() and (ratio > 1.1).any() and (ratio > 0.55).all() and (ratio < 1.8).all()
    assert 0.3 < float(((ratio - 1).abs() > 1e-3).float().mean()) < 0.7     # about half the images
    assert (turn.abs() > 0.01).any() and (turn.abs() < 0.06).all()
    assert 0.3 < float((turn.abs() > 1e-3).float().mean()) < 0.7


def test_item_geometry_moves_image_and_mask_together_and_passes_plain_images_by():
    import random

    from fastai.vision.core import PILImage, PILMask

    from pipeline.train import GeometryImage, ItemGeometry

    msk = np.zeros((96, 128), np.uint8)
    cv2.rectangle(msk, (40, 20), (80, 90), 255, -1)
    rgb = np.zeros((96, 128, 3), np.uint8)
    rgb[msk > 0] = (220, 60, 60)
    geometry = ItemGeometry()
    moved = 0
    for seed in range(8):
        random.seed(seed)
        img, out = geometry((GeometryImage.create(rgb), PILMask.create(msk)), split_idx=0)
        img, out = np.asarray(img), np.asarray(out) > 0
        moved += (out != (msk > 0)).mean() > 0.005
        assert iou(img[..., 0] > 110, out) > 0.95          # the person in the image is the mask's person
    assert moved >= 6                                       # p 0.75 each for rotation, zoom and warp
    for seed in range(8):                                   # the same draws leave a plain PILImage alone
        random.seed(seed)
        img, out = geometry((PILImage.create(rgb), PILMask.create(msk)), split_idx=0)
        assert (np.asarray(img) == rgb).all() and (np.asarray(out) == msk).all()


def test_training_without_geometry_for_some_images_exports(tiny, tmp_path):
    """--no-geometry takes the per-item path; the learner it trains still exports and loads."""
    from pipeline.segment import load_model
    from pipeline.train import TrainOptions, train

    _prefix_half(tiny, "street_")
    opts = TrainOptions(epochs=1, size=32, bs=4, lr=1e-3, num_workers=0, work_size=(64, 48),
                        no_geometry=("street_",), min_scale=0.7, checkpoint_dir=tmp_path / "ck",
                        export_pkl=tmp_path / "export.pkl")
    result = train(tiny, tmp_path / "m.safetensors", opts, log=lambda msg: None)
    training = load_model(result.path)[1].training   # the card says how it was made
    assert training["no_geometry"] == ["street_"] and training["min_scale"] == 0.7
    assert training["keep_aspect"] is False
    for model in (result.path, tmp_path / "export.pkl"):
        prob = load_segmenter(model)(np.zeros((1, 48, 64, 3), np.uint8))
        assert prob.shape == (1, 48, 64) and np.isfinite(prob).all()


def test_seed_chooses_the_split_and_the_batches_and_repeats_them(tiny):
    """The same seed gives the same validation images and the same first batch; other seeds, other ones."""
    import torch
    from fastai.torch_core import set_seed

    from pipeline.train import TrainOptions, make_dataloaders

    def run(seed: int):
        set_seed(seed)   # as train() does before it builds the loaders
        opts = TrainOptions(size=32, bs=4, num_workers=0, valid_pct=0.25, seed=seed)
        dls = make_dataloaders(tiny, opts, torch.device("cpu"))
        images, _ = dls.train.one_batch()
        return sorted(Path(p).stem for p in dls.valid.items), images

    split, batch = run(7)
    again_split, again_batch = run(7)
    assert split == again_split and torch.equal(batch, again_batch)
    others = [run(seed) for seed in (8, 9, 10)]
    assert any(other_split != split for other_split, _ in others)
    assert all(not torch.equal(other_batch, batch) for _, other_batch in others)


def test_train_cli_seed_is_recorded_in_the_card(tiny, tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main
    from pipeline.segment import load_model

    out = tmp_path / "m.safetensors"
    result = CliRunner().invoke(main, ["train", str(tiny), "-o", str(out), "--epochs", "1", "--size", "32",
                                       "--bs", "4", "--work-size", "64x48", "--workers", "0", "--seed", "7",
                                       "--checkpoint-dir", str(tmp_path / "ck")])
    assert result.exit_code == 0, result.output
    assert load_model(out)[1].training["seed"] == 7


def test_train_cli_offers_exactly_the_losses_train_knows():
    """cli.py spells out LOSSES' names (so --help need not import fastai); they must not drift apart."""
    from pipeline.cli import train as train_command
    from pipeline.train import LOSSES

    loss_option = next(p for p in train_command.params if p.name == "loss")
    assert sorted(loss_option.type.choices) == sorted(LOSSES)


def _fastai_unet(size: int, **options):
    from fastai.vision.learner import create_unet_model
    from fastai.vision.models import resnet18

    unet = dict(last_cross=False, self_attention=False, bottle=False, blur=False) | options
    return create_unet_model(resnet18, 2, (size, size), pretrained=False, **unet)


@pytest.mark.parametrize("height, width", [(64, 96), (72, 88)])   # 72x88: the resize to the input's size
def test_head_before_shuffle_trains_the_same_network(height, width):
    """The training speed-up (ShuffledHead) gives fastai's logits and gradients, keeps the parameter
    names, and its restore puts the stock layers back."""
    import torch
    from pipeline.train import _put_head_before_shuffle

    torch.manual_seed(0)
    model = _fastai_unet(height).eval()
    x = torch.rand(2, 3, height, width)
    stock = model(x)
    stock.square().mean().backward()
    stock_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    stock_layers, names = list(model.layers.modules()), list(model.state_dict())

    restore = _put_head_before_shuffle(model)
    assert restore is not None and list(model.state_dict()) == names
    fused = model(x)
    fused.square().mean().backward()
    assert fused.shape == stock.shape == (2, 2, height, width)
    assert torch.allclose(fused, stock, atol=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, stock_grads[name], rtol=1e-4, atol=1e-7), name
    restore()
    assert list(model.layers.modules()) == stock_layers


def test_head_before_shuffle_leaves_other_networks_alone():
    from pipeline.train import _put_head_before_shuffle

    model = _fastai_unet(64, last_cross=True)   # ends in a residual block, not shuffle then head
    layers = list(model.modules())
    assert _put_head_before_shuffle(model) is None
    assert list(model.modules()) == layers


def test_weight_averaging_writes_the_mean_of_each_epochs_weights_across_a_resume(tiny, tmp_path):
    """--swa: epoch 1 ends, the run is resumed for epoch 2, and the model written is the mean of the
    two epochs' weights, with BatchNorm statistics measured anew rather than taken from either; resuming
    once more with nothing left to train writes that mean again."""
    import torch

    from pipeline.segment import load_model
    from pipeline.train import TrainOptions, train

    opts = TrainOptions(epochs=1, size=32, bs=4, lr=1e-2, num_workers=0, work_size=(64, 48), swa=True,
                        checkpoint_dir=tmp_path / "ck", mixed_precision=False)
    train(tiny, tmp_path / "one.safetensors", opts, log=lambda msg: None)
    first = torch.load(tmp_path / "ck" / "last.pth", weights_only=False)["model"]
    result = train(tiny, tmp_path / "two.safetensors", replace(opts, epochs=2, resume=True),
                   log=lambda msg: None)
    second = torch.load(tmp_path / "ck" / "last.pth", weights_only=False)["model"]
    assert torch.load(tmp_path / "ck" / "average.pth")["n_averaged"] == 2

    model, config = load_model(result.path)
    written = model.state_dict()
    weights = [k for k, v in first.items() if v.is_floating_point() and "running" not in k]
    bn_means = [k for k in first if k.endswith("running_mean")]
    assert weights and bn_means

    def squared_distance(a, b):
        return sum(float(((a[k].float() - b[k].float()) ** 2).sum()) for k in weights)

    mean = {k: (first[k] + second[k]) / 2 for k in weights}
    half_step = squared_distance(first, mean)   # how far either epoch's weights lie from their mean
    assert half_step > 0
    assert squared_distance(written, mean) < 0.01 * half_step   # fp16 storage costs far less than this
    assert not all(torch.allclose(written[k].float(), second[k], atol=1e-3) for k in bn_means)
    assert config.training["schedule"] == "swa"

    # A run stopped after its 2nd epoch is finished by resuming it with --epochs 2: no epoch is left
    # to train, and the mean written is the same one, not averaged again.
    again = train(tiny, tmp_path / "again.safetensors", replace(opts, epochs=2, resume=True),
                  log=lambda msg: None)
    assert torch.load(tmp_path / "ck" / "average.pth")["n_averaged"] == 2
    assert squared_distance(load_model(again.path)[0].state_dict(), written) < 0.01 * half_step


def test_weight_averaging_every_n_batches_is_the_mean_of_those_batches_weights(tmp_path):
    """--swa-every 2: the weights written are the mean of the weights after batches 2, 4, ... of each
    epoch (counted within the epoch), not of the epoch ends; the running mean is saved at each end."""
    import torch
    from fastai.callback.core import Callback
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    from fastai.optimizer import SGD

    from pipeline.train import WeightAveraging

    class Snapshots(Callback):
        order = WeightAveraging.order + 1   # sees the weights WeightAveraging has just seen

        def before_fit(self):
            self.taken = []

        def after_batch(self):
            if self.training:
                self.taken.append((self.iter, self.learn.model.weight.detach().clone()))

    torch.manual_seed(0)
    x = torch.randn(20, 3)
    items = list(zip(x, x @ torch.tensor([[1.0], [-2.0], [0.5]])))
    dls = DataLoaders(DataLoader(items, bs=4), DataLoader(items[:4], bs=4))   # 5 batches an epoch
    learn = Learner(dls, torch.nn.Linear(3, 1, bias=False), loss_func=torch.nn.MSELoss(), opt_func=SGD, lr=0.05)
    snapshots = Snapshots()
    learn.fit(2, cbs=[WeightAveraging(tmp_path, every=2), snapshots])

    chosen = [w for i, w in snapshots.taken if (i + 1) % 2 == 0]
    assert len(snapshots.taken) == 10 and len(chosen) == 4   # batches 2 and 4 of each epoch
    assert torch.allclose(learn.model.weight, torch.stack(chosen).mean(0), atol=1e-6)
    assert not torch.allclose(learn.model.weight, snapshots.taken[-1][1], atol=1e-4)   # not the last weights
    assert torch.load(tmp_path / "average.pth")["n_averaged"] == 4
    with pytest.raises(ValueError, match="every"):
        WeightAveraging(tmp_path, every=0)


def test_swa_every_needs_swa(tiny, tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main

    result = CliRunner().invoke(main, ["train", str(tiny), "-o", str(tmp_path / "m.safetensors"), "--swa-every", "5"])
    assert result.exit_code != 0 and "--swa-every" in result.stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_dice_term_scores_overlap_per_image():
    """CE + Dice equals cross-entropy plus 1 - soft Dice averaged over images and classes, so a
    missed small person costs as much Dice as a missed large one, where cross-entropy barely notices."""
    import torch
    import torch.nn.functional as F

    from pipeline.train import CrossEntropyDiceLoss

    target = torch.zeros(2, 16, 16, dtype=torch.long)
    target[0, 4:12, 4:12] = 1          # a large person (64 px)
    target[1, 7:9, 7:9] = 1            # a small one (4 px)
    logits = torch.zeros(2, 2, 16, 16)
    logits[:, 0] = 4.0                 # the network sees nobody in either image

    loss = CrossEntropyDiceLoss()(logits, target)
    probs = logits.softmax(1)
    one_hot = F.one_hot(target, 2).permute(0, 3, 1, 2).float()
    dice = 2 * (probs * one_hot).sum((2, 3)) / (probs + one_hot).sum((2, 3))
    expected = F.cross_entropy(logits, target) + (1 - dice).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    person_dice_loss = 1 - dice[:, 1]
    assert float(person_dice_loss[1]) > 0.95 and float(person_dice_loss[0]) > 0.95
    small_ce = F.cross_entropy(logits[1:], target[1:])
    assert float(small_ce) < 0.1 * float(person_dice_loss[1])
    assert CrossEntropyDiceLoss().decodes(logits).equal(torch.zeros(2, 16, 16, dtype=torch.long))


def test_focal_term_fades_the_pixels_the_model_already_gets_right():
    """The pixel term of focal+dice is cross-entropy times (1 - p)^2, p the probability of the true
    class: a pixel right at p = 0.95 keeps 1/400 of its cross-entropy, one wrong at p = 0.1 keeps 81 %,
    so confident mistakes carry the sum. The Dice term is the same as in ce+dice."""
    import torch
    from fastai.losses import DiceLoss

    from pipeline.train import FocalDiceLoss

    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6] = 1

    def logits_giving_the_truth(p: float) -> torch.Tensor:
        margin = float(np.log(p / (1 - p)))          # softmax over two logits [0, margin] gives p
        person = torch.where(target == 1, margin, -margin).float()
        return torch.stack([torch.zeros_like(person), person], 1)

    for p in (0.95, 0.1):
        logits = logits_giving_the_truth(p)
        dice = float(DiceLoss(axis=1, reduction="mean")(logits, target))
        focal = float(FocalDiceLoss()(logits, target)) - dice
        assert focal == pytest.approx((1 - p) ** 2 * -np.log(p), rel=1e-4)
    assert FocalDiceLoss().decodes(logits_giving_the_truth(0.95)).equal(target)


def test_lovasz_term_is_one_minus_iou_per_image_and_class():
    """With confident logits the Lovász-softmax term is exactly the mean of 1 - IoU over images and
    classes, the figure `blurvid evaluate` reports, so an image's small person weighs as much as
    another image's large one; the cross-entropy term is added on top."""
    import torch
    import torch.nn.functional as F

    from pipeline.evaluate import iou
    from pipeline.train import CrossEntropyLovaszLoss

    target = torch.zeros(2, 16, 16, dtype=torch.long)
    target[0, 4:12, 4:12] = 1          # a large person (64 px)
    target[1, 6:10, 6:10] = 1          # a small one (16 px)
    predicted = torch.zeros_like(target)
    predicted[0, 4:12, 4:10] = 1       # 48 of the 64 px: person IoU 0.75
    predicted[1, 6:10, 6:12] = 1       # 16 px right and 8 px beside it: person IoU 16 / 24
    logits = torch.stack([1 - predicted, predicted], 1).float() * 40 - 20   # p is 0 or 1 to fp32

    ious = np.array([[iou((p == cls).numpy(), (t == cls).numpy()) for p, t in zip(predicted, target)]
                     for cls in (0, 1)])
    assert ious[1, 0] == pytest.approx(0.75) and ious[1, 1] == pytest.approx(16 / 24)
    expected = F.cross_entropy(logits, target).item() + (1 - ious).mean()
    assert float(CrossEntropyLovaszLoss()(logits, target)) == pytest.approx(float(expected), rel=1e-5)
    perfect = torch.stack([1 - target, target], 1).float() * 40 - 20
    assert float(CrossEntropyLovaszLoss()(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    assert CrossEntropyLovaszLoss().decodes(logits).equal(predicted)


@pytest.mark.parametrize("mean, std", [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),   # a fresh model
                                       ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))])             # the shipped one
def test_training_feeds_the_network_what_the_segmenter_feeds_it(tmp_path, mean, std):
    """The batches a model learns from are normalised with the stats its config tells Segmenters to use."""
    import torch
    from torch import nn

    from pipeline.segment import ModelConfig, UnetSegmenter
    from pipeline.train import TrainOptions, make_dataloaders

    rgb = np.empty((32, 32, 3), np.uint8)
    rgb[...] = (30, 140, 220)   # one colour, so fastai's crop-and-resize of the item leaves it as it is
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), np.full((32, 32), 255, np.uint8))
    config = ModelConfig(mean=mean, std=std, work_size=(32, 32))
    dls = make_dataloaders(tmp_path, TrainOptions(size=32, bs=1, num_workers=0, valid_pct=0.5),
                           torch.device("cpu"), config)
    learnt_from = dls.test_dl([tmp_path / "images" / "a.png"]).one_batch()[0]

    fed = []
    network = nn.Conv2d(3, 2, 1)
    network.register_forward_pre_hook(lambda module, args: fed.append(args[0].float()))
    UnetSegmenter(network, config, precision="fp32")(rgb[None])
    assert torch.allclose(torch.as_tensor(learnt_from).float(), fed[0], atol=1e-4)


def test_a_handful_of_images_still_trains_with_one_to_validate_on(tmp_path):
    from pipeline.train import TrainOptions, train, validation_share

    few = make_tiny_dataset(tmp_path / "few", n=5, size=(64, 48))
    opts = TrainOptions(epochs=1, size=32, bs=2, lr=1e-3, num_workers=0, work_size=(64, 48),
                        checkpoint_dir=tmp_path / "ck")
    result = train(few, tmp_path / "m.safetensors", opts, log=lambda msg: None)
    assert 0 <= result.valid_iou <= 1                       # 10 % of 5 images would validate on none
    assert validation_share(5, 0.1) == pytest.approx(0.2)
    assert validation_share(100, 0.1) == pytest.approx(0.1)
    one = make_tiny_dataset(tmp_path / "one", n=1, size=(64, 48))
    with pytest.raises(InputError, match="at least one of each"):
        train(one, tmp_path / "m1.safetensors", opts, log=lambda msg: None)


def test_training_and_scoring_images_need_no_video_library(tiny):
    """A bare GPU machine may have torch and fastai but not PyAV: train and score images there."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['av'] = None\n"           # any `import av` now fails
            "from pathlib import Path\n"
            "import pipeline.train\n"
            "from pipeline.evaluate import evaluate_masks\n"
            "from pipeline.segment import load_segmenter\n"
            f"print(evaluate_masks(load_segmenter(backend='torch'), Path({str(tiny)!r})).images)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-1] == "12"


def test_training_data_must_have_masks(tmp_path):
    from pipeline.train import find_pairs

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(InputError, match="no image"):
        find_pairs(tmp_path)


def test_evaluate_perfect_and_empty(tiny):
    perfect = evaluate_masks(Oracle("perfect"), tiny)
    empty = evaluate_masks(Oracle("empty"), tiny)
    assert perfect.images == empty.images == 12
    assert perfect.iou > 0.9 and perfect.mad < 0.05
    assert empty.iou == 0.0 and empty.boundary_f == 0.0


def test_evaluate_names_the_worst_images_lowest_first(tiny):
    for stem in ("003", "007"):   # masks drawn in a corner no disc reaches: the oracle's answer misses them
        wrong = np.zeros((48, 64), np.uint8)
        cv2.circle(wrong, (5, 5), 5, 255, -1)
        cv2.imwrite(str(tiny / "masks" / f"{stem}.png"), wrong)
    scores = evaluate_masks(Oracle("perfect"), tiny)
    assert [stem for stem, _ in scores.lowest(3)[:2]] == ["003", "007"]
    ious = [score for _, score in scores.lowest(3)]
    assert ious == sorted(ious) and ious[1] == 0.0 and ious[2] > 0.9
    assert scores.lowest(0) == []


def test_paired_difference_is_the_mean_gain_per_image_with_its_spread():
    base = {"a": 0.5, "b": 0.6, "c": 0.7, "d": 0.8}
    better = paired_difference(base, {stem: score + 0.1 for stem, score in base.items()})
    assert better.images == 4 and better.mean == pytest.approx(0.1)
    assert better.low == pytest.approx(0.1) and better.high == pytest.approx(0.1) and better.resolved
    mixed = paired_difference(base, {"a": 0.6, "b": 0.5, "c": 0.7, "d": 0.8})   # +0.1, -0.1, 0, 0
    assert mixed.mean == pytest.approx(0.0) and mixed.low < 0 < mixed.high and not mixed.resolved
    with pytest.raises(InputError):
        paired_difference(base, {"a": 0.5})


def test_metric_edge_cases():
    a = np.zeros((20, 20), bool)
    b = a.copy()
    b[5:15, 5:15] = True
    assert iou(a, a) == 1.0 and iou(b, b) == 1.0 and iou(a, b) == 0.0
    assert boundary_f(b, b) == 1.0 and boundary_f(a, b) == 0.0


def test_frames_then_label(make_video, tmp_path):
    src = make_video(tmp_path / "me.mp4", size=(64, 48), frames=12)
    assert extract_frames(src, tmp_path / "images", every=4) == 3
    assert draft_masks(Oracle("perfect"), tmp_path / "images", tmp_path / "masks") == 3
    masks = sorted((tmp_path / "masks").glob("*.png"))
    assert len(masks) == 3 and len(list((tmp_path / "masks" / "overlays").glob("*.jpg"))) == 3
    msk = cv2.imread(str(masks[0]), cv2.IMREAD_GRAYSCALE)
    assert set(np.unique(msk)) <= {0, 255} and (msk == 255).any()


def test_evaluate_cli_work_size_worst_images_comparison_and_smoothed_flicker(tiny, tiny_model, make_video, tmp_path):
    import json

    from click.testing import CliRunner

    from pipeline.cli import main

    clip = make_video(tmp_path / "still.mp4", size=(96, 64), frames=10)

    def run(*args) -> dict:
        res = CliRunner().invoke(main, ["evaluate", str(tiny_model), *args, "--json"])
        assert res.exit_code == 0, res.output
        return json.loads(res.output)

    scores = run(str(tiny), "--work-size", "32x32", "--worst", "2")
    assert scores["work_size"] == "32x32" and scores["images"] == 12 and 0 <= scores["iou"] <= 1
    assert len(scores["worst"]) == 2 and scores["worst"][0][1] <= scores["worst"][1][1] <= scores["iou"]
    table = CliRunner().invoke(main, ["evaluate", str(tiny_model), str(tiny), "--work-size", "32x32",
                                      "--worst", "2"]).output
    assert [line.split()[-1] for line in table.splitlines() if line.startswith("worst")] == \
        [stem for stem, _ in scores["worst"]]
    other = make_tiny_model(tmp_path, "other")
    compared = run(str(tiny), "--work-size", "32x32", "--against", str(other))["against"]
    assert compared["model"] == str(other)
    assert compared["difference"] == pytest.approx(scores["iou"] - compared["iou"])
    assert compared["low"] <= compared["difference"] <= compared["high"]
    itself = run(str(tiny), "--work-size", "32x32", "--against", str(tiny_model))["against"]
    assert itself["difference"] == itself["low"] == itself["high"] == 0 and not itself["resolved"]
    table = CliRunner().invoke(main, ["evaluate", str(tiny_model), str(tiny), "--against", str(other)]).output
    assert "points (95 % interval" in table
    assert CliRunner().invoke(main, ["evaluate", str(tiny_model), "--video", str(clip),
                                     "--against", str(other)]).exit_code == 2
    missing = CliRunner().invoke(main, ["evaluate", str(tiny_model), str(tiny), "--against", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "images" not in missing.stdout   # fails before scoring anything
    raw = run("--video", str(clip))
    smoothed = run("--video", str(clip), "--smooth", "0.9")
    assert raw["smooth"] == 0 and smoothed["smooth"] == 0.9
    assert smoothed["flicker"] < raw["flicker"]
