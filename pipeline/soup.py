"""Average the weights of models fine-tuned from one parent: a uniform "model soup".

    blurvid soup PARENT.safetensors FT1.safetensors FT2.safetensors -o SOUP.safetensors
    average_models([parent, ft1, ft2], Path("soup.safetensors"))

Models fine-tuned from the same starting weights stay in one basin of the loss, so the mean of their
weights is itself a good model, and it usually generalises better than any one of them (Wortsman et
al., "Model soups", ICML 2022). It costs nothing at inference: the soup is one model of the same size.
Short fine-tunes of blurvid's small, from-scratch model each moved the three test scores up and down by
1-3 points; their soup beat the parent on all three (MODEL.md).

BatchNorm running statistics are averaged like the weights; integer buffers (BatchNorm's batch
counters) are taken from the first model.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

from pipeline.errors import ModelError
from pipeline.segment import load_model, save_model

# what must agree for two models' weights to be averaged meaningfully
_SAME = ("arch", "classes", "unet", "mean", "std")


def average_models(paths: Sequence[str | Path], output: str | Path) -> Path:
    """Write the mean of the models at `paths` to `output` (.safetensors + .json); returns its path.

    The soup takes the first model's config (working size, normalisation), with `training` noting
    the ingredients and `metrics` emptied: the first model's scores do not describe the soup."""
    if len(paths) < 2:
        raise ModelError("a soup needs at least two models")
    models = [load_model(p) for p in paths]
    first_model, first_config = models[0]
    for path, (_, other) in zip(paths[1:], models[1:]):
        differs = [key for key in _SAME if getattr(other, key) != getattr(first_config, key)]
        if differs:
            raise ModelError(f"{path}: cannot be averaged with {paths[0]}: its {', '.join(differs)} differ")
    states = [model.state_dict() for model, _ in models]
    mean = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            mean[key] = torch.stack([state[key].float() for state in states]).mean(0)
        else:
            mean[key] = value
    first_model.load_state_dict(mean)
    config = replace(first_config, metrics={},
                     training={"soup_of": [str(p) for p in paths],
                               "ingredients": shared_provenance([other.training for _, other in models])})
    return save_model(first_model, config, output)


def shared_provenance(records: Sequence[dict]) -> list:
    """The ingredients' training records, each part that repeats an earlier ingredient's whole record
    replaced by a reference to it ("ingredients[0]").

    A fine-tune records its parent's history as its `base`, so a soup of a parent and its fine-tune
    would otherwise hold the parent's history twice, and every soup of soups twice again: the
    default model's JSON doubled with each soup (v18: 247 kB) until this kept it growing by one
    record per stage."""
    def refer(value, earlier: list):
        if isinstance(value, dict):
            if value in earlier:
                return f"ingredients[{earlier.index(value)}]"
            return {key: refer(item, earlier) for key, item in value.items()}
        return value

    return [refer(record, list(records[:i])) for i, record in enumerate(records)]
