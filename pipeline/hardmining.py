"""Hard-example views: a training view in which the images a model segments worst appear more often.

    python -m pipeline.hardmining --model M --train DATA/train --base DATA/train-ccp-clip-weighted \\
        --out DATA/train-hard-weighted [--prefix eg1800_ --prefix ccp_ --prefix ccpcrop_] [--share 0.25] \\
        [--floor 0.8]

Each image of `--train` whose name starts with a `--prefix` is scored with the model the way
`blurvid process` predicts (pipeline.evaluate: IoU at p > 0.5 against its own mask); within each
prefix, the `--share` with the lowest IoU are the hard ones. The view is `--base` (itself a view of
`--train`: pipeline.dataprep's weighted views) with every link to a hard image doubled, so a hard
image keeps its base weight relative to the others of its kind and gains as much again. Only the
human-labelled sources are mined by default: where a label is another model's guess (the teacher's
video frames), a low score says as much about the label as about the network. Links only, no copies.

Even a human's label can be wrong: the worst-scored photos of EG1800 and CCP include masks that leave
out half a body or most of the hair. With `--floor F`, an image scoring below F is set aside as a
possibly wrong label: it is left out of the view altogether and listed, with its score, in the
view's suspects.txt. Look before relying on it: of the 24 shipped-model photos under 0.8, most were
the model's own mistakes (bags, bicycles, bystanders), the very examples mining is for (MODEL.md).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Collection, Iterable
from pathlib import Path

from tqdm import tqdm

from pipeline.errors import BlurvidError, InputError
from pipeline.evaluate import iou, load_pair, mask_pairs, predict_full
from pipeline.segment import Segmenter, load_segmenter

HUMAN_LABELLED_PREFIXES = ("eg1800_", "ccp_", "ccpcrop_")
HARD_SHARE = 0.25


def score_images(segmenter: Segmenter, train: Path, prefixes: Iterable[str]) -> dict[str, float]:
    """scores = score_images(load_segmenter(M), DATA / "train", ("ccp_",)): {stem: IoU} of `segmenter` on
    the images of `train` whose names start with one of `prefixes`. InputError if there are none."""
    prefixes = tuple(prefixes)
    pairs = [(img, msk) for img, msk in mask_pairs(train) if img.stem.startswith(prefixes)]
    if not pairs:
        raise InputError(f"{train}: no image whose name starts with {' or '.join(prefixes)}")
    scores = {}
    for img, msk in tqdm(pairs, desc="scoring", unit="image", leave=False):
        rgb, truth = load_pair(img, msk)
        scores[img.stem] = iou(predict_full(segmenter, rgb) > 0.5, truth)
    return scores


def hardest(scores: dict[str, float], prefixes: Iterable[str], share: float = HARD_SHARE) -> set[str]:
    """hard = hardest(scores, ("eg1800_", "ccp_")): the stems with the lowest scores, `share` of each
    prefix's images (rounded down), so that each kind of image contributes its own worst, however its
    scores compare with the other kinds'."""
    hard = set()
    for prefix in prefixes:
        ranked = sorted((score, stem) for stem, score in scores.items() if stem.startswith(prefix))
        hard.update(stem for _, stem in ranked[: int(len(ranked) * share)])
    return hard


def suspects(scores: dict[str, float], floor: float) -> set[str]:
    """left_out = suspects(scores, 0.8): the stems scoring below `floor`, whose masks may be wrong and
    are worth a look (module docstring)."""
    return {stem for stem, score in scores.items() if score < floor}


def build_hard_view(base: Path, dest: Path, hard: Collection[str], left_out: Collection[str] = ()) -> int:
    """n = build_hard_view(base_view, dest, hard_stems, suspect_stems): `base` again (links to the same
    files) with every entry whose target's stem is in `hard` doubled (the copy named NAME_hard) and
    every entry whose target's stem is in `left_out` dropped. A previous view in `dest` is removed
    first. Returns the number of images in the view."""
    shutil.rmtree(dest, ignore_errors=True)
    for sub in ("images", "masks"):
        (dest / sub).mkdir(parents=True)
        for entry in (base / sub).iterdir():
            target = entry.resolve()
            if target.stem in left_out:
                continue
            (dest / sub / entry.name).symlink_to(target)
            if target.stem in hard:
                (dest / sub / f"{entry.stem}_hard{entry.suffix}").symlink_to(target)
    return sum(1 for _ in (dest / "images").iterdir())


def main(argv: list[str] | None = None) -> int:
    """python -m pipeline.hardmining --model M --train DATA/train --base VIEW --out DEST (module docstring);
    returns the exit status (1 with one line on stderr for bad input: a missing folder or model, or
    no image with one of the prefixes)."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.hardmining", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="the model whose mistakes choose the hard images")
    ap.add_argument("--train", type=Path, required=True, help="the training set (images/ + masks/) to score")
    ap.add_argument("--base", type=Path, required=True, help="the view of --train to start from")
    ap.add_argument("--out", type=Path, required=True, help="where to write the new view")
    ap.add_argument("--prefix", action="append", dest="prefixes",
                    help=f"mine images whose names start with this (default: {' '.join(HUMAN_LABELLED_PREFIXES)})")
    ap.add_argument("--share", type=float, default=HARD_SHARE, help="share of each prefix's images that is hard")
    ap.add_argument("--floor", type=float, default=0.0,
                    help="leave out images scoring below this (masks to check), listed in suspects.txt (default: none)")
    ap.add_argument("--backend", default="auto", help="torch, onnx or auto (pipeline.segment.load_segmenter)")
    args = ap.parse_args(argv)
    prefixes = tuple(args.prefixes or HUMAN_LABELLED_PREFIXES)
    if not 0 < args.share < 1:
        ap.error("--share must be between 0 and 1")
    if not 0 <= args.floor < 1:
        ap.error("--floor must be at least 0 and below 1")
    try:
        mask_pairs(args.base)   # the base view must be images/ + masks/ too
        scores = score_images(load_segmenter(args.model, backend=args.backend), args.train, prefixes)
    except BlurvidError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    left_out = suspects(scores, args.floor)
    kept = {stem: score for stem, score in scores.items() if stem not in left_out}
    hard = hardest(kept, prefixes, args.share)
    n = build_hard_view(args.base, args.out, hard, left_out)
    summary = f"{len(hard)} hard of {len(scores)} scored, each link to them doubled"
    if args.floor:
        (args.out / "suspects.txt").write_text("".join(f"{stem}\t{scores[stem]:.3f}\n" for stem in sorted(left_out)))
        summary += f"; {len(left_out)} scoring under {args.floor} left out, listed in suspects.txt"
    print(f"{args.out}: {n} images ({summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
