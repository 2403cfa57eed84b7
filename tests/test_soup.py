"""`blurvid soup`: averaging the weights of fine-tuned models.

    .venv/bin/python -m pytest tests/test_soup.py -q
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import make_tiny_model

from pipeline.cli import main
from pipeline.errors import ModelError
from pipeline.segment import load_config, load_model, load_segmenter, save_model
from pipeline.soup import average_models


def _with_running_mean(path: Path, value: float) -> Path:
    """Give every BatchNorm of the model at `path` a running mean of `value` (fresh ones are all 0)."""
    model, config = load_model(path)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.fill_(value)
    return save_model(model, config, path)


def test_the_soup_is_the_mean_of_its_ingredients(tmp_path: Path) -> None:
    a = _with_running_mean(make_tiny_model(tmp_path, "a"), 0.25)
    b = _with_running_mean(make_tiny_model(tmp_path, "b"), 0.75)
    soup = average_models([a, b], tmp_path / "soup.safetensors")
    state_a, state_b = load_model(a)[0].state_dict(), load_model(b)[0].state_dict()
    state_soup = load_model(soup)[0].state_dict()
    assert state_soup.keys() == state_a.keys()
    float_keys = [k for k, v in state_a.items() if v.is_floating_point()]
    assert any(not torch.equal(state_a[k], state_b[k]) for k in float_keys), "the two models are the same"
    for key in float_keys:
        # stored as fp16, so equal to fp16 rounding of the mean
        torch.testing.assert_close(state_soup[key], (state_a[key] + state_b[key]) / 2, atol=2e-3, rtol=2e-3)
    running_means = [v for k, v in state_soup.items() if k.endswith("running_mean")]
    assert running_means and all(torch.allclose(v, torch.full_like(v, 0.5)) for v in running_means)
    config = load_config(soup)
    assert config.work_size == load_config(a).work_size and config.metrics == {}
    assert config.training["soup_of"] == [str(a), str(b)]
    # and it is a working model
    prob = load_segmenter(soup, backend="torch")(np.zeros((1, 48, 64, 3), np.uint8))
    assert prob.shape == (1, 48, 64) and np.isfinite(prob).all()


def test_a_soup_of_a_parent_and_its_fine_tune_records_the_parents_history_once(tmp_path: Path) -> None:
    parent_history = {"soup_of": ["x", "y"], "ingredients": [{"epochs": 3}, {"epochs": 4, "base": {"epochs": 3}}]}
    model, config = load_model(make_tiny_model(tmp_path, "p"))
    parent = save_model(model, replace(config, training=parent_history), tmp_path / "parent.safetensors")
    tuned = save_model(model, replace(config, training={"epochs": 6, "base": parent_history}),
                       tmp_path / "tuned.safetensors")
    training = load_config(average_models([parent, tuned], tmp_path / "soup.safetensors")).training
    assert training["ingredients"] == [parent_history, {"epochs": 6, "base": "ingredients[0]"}]


def test_models_of_different_networks_are_refused(tmp_path: Path) -> None:
    a = make_tiny_model(tmp_path, "a")
    model, config = load_model(make_tiny_model(tmp_path, "b"))
    b = save_model(model, replace(config, mean=(0.5, 0.5, 0.5)), tmp_path / "b.safetensors")
    with pytest.raises(ModelError, match="mean differ"):
        average_models([a, b], tmp_path / "soup.safetensors")
    with pytest.raises(ModelError, match="at least two"):
        average_models([a], tmp_path / "soup.safetensors")


def test_cli_soup_and_its_errors(tmp_path: Path) -> None:
    a, b = make_tiny_model(tmp_path, "a"), make_tiny_model(tmp_path, "b")
    result = CliRunner().invoke(main, ["soup", str(a), str(b), "-o", str(tmp_path / "s.safetensors")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.safetensors").is_file() and (tmp_path / "s.json").is_file()

    model, config = load_model(b)
    save_model(model, replace(config, std=(0.5, 0.5, 0.5)), tmp_path / "c.safetensors")
    result = CliRunner().invoke(main, ["soup", str(a), str(tmp_path / "c.safetensors"),
                                       "-o", str(tmp_path / "bad.safetensors")])
    assert result.exit_code == 1
    assert "cannot be averaged" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "bad.safetensors").exists()
