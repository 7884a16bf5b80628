"""A task's strength (`fastlora.set_strength`): every adapted weight and bias is W + s·(Ŵ − W), exactly, on every
adapter form that supports it; saved with the task; refused where it cannot be realised."""
import dataclasses

import pytest
import torch

import fastlora as fl
from tests.helpers import rel_err
from tests.test_adapters_bank import CONFIGS, _tiny_with_tasks

SUPPORTED = ["llora", "llora-none", "llora-rank1", "lora", "left-linear"]


def _trained(name, *tasks):
    model, x, z, base = _tiny_with_tasks(CONFIGS[name], *tasks)
    model.double()
    with torch.no_grad():  # "trained" adapters: every tensor moved
        for task in tasks:
            for p in fl.task_parameters(model, task):
                p.add_(0.3 * torch.randn_like(p))
    return model, x.double(), z.double()


@pytest.mark.parametrize("name", SUPPORTED)
@pytest.mark.parametrize("s", [0.0, 0.3, 0.75])
def test_strength_keeps_that_fraction_of_every_layers_effect(name, s):
    model, x, z = _trained(name, "t", "u")
    layers = [m for _, m in fl.adapted_layers(model)]
    full = [fl.merged_weights(m, "t") for m in layers]
    other = [fl.merged_weights(m, "u") for m in layers]
    fl.set_strength(model, "t", s)
    assert fl.task_config(model, "t").strength == s
    for m, (w1, b1), (wu, bu) in zip(layers, full, other):
        w, b = fl.merged_weights(m, "t")
        assert rel_err(w, m.weight + s * (w1 - m.weight)) < 1e-12
        if b is not None:
            assert rel_err(b, m.bias + s * (b1 - m.bias)) < 1e-12
        assert torch.equal(fl.merged_weights(m, "u")[0], wu)  # the other task untouched
    fl.set_task(model, "t")
    with torch.no_grad():  # the forward through the adapters equals the one through the merged weights
        y = model(x, z)
        fl.merge_task(model, "t")
        y_merged = model(x, z)
        fl.unmerge(model)
    assert rel_err(y, y_merged) < 1e-10
    if s == 0.0:
        fl.set_task(model, None)
        with torch.no_grad():
            assert rel_err(y, model(x, z)) < 1e-12  # strength 0: the base


def test_strength_one_is_the_task_as_trained_and_strength_is_undone_exactly():
    model, x, z = _trained("left-linear", "t")
    fl.set_task(model, "t")
    with torch.no_grad():
        y = model(x, z)
        fl.set_strength(model, "t", 0.5)
        assert rel_err(model(x, z), y) > 1e-3
        fl.set_strength(model, "t", 1.0)
        assert torch.equal(model(x, z), y)


def test_strength_is_saved_with_the_task(tmp_path):
    model, x, z = _trained("left-linear", "t")
    fl.set_strength(model, "t", 0.25)
    fl.save_task(model, "t", tmp_path / "t")
    meta, config = fl.read_task_config(tmp_path / "t")
    assert meta["strength"] == 0.25 and config.strength == 0.25
    fl.set_task(model, "t")
    with torch.no_grad():
        y = model(x, z)
    fl.remove_task(model, "t")
    assert fl.load_task(model, tmp_path / "t") == "t"
    fl.set_task(model, "t")
    with torch.no_grad():
        assert torch.equal(model(x, z), y)


def test_a_config_without_strength_reads_as_one():
    d = fl.AdapterConfig(kind="left-linear").to_dict()
    del d["strength"]  # files written before strength existed
    assert fl.AdapterConfig.from_dict(d).strength == 1.0


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "half", True])
def test_strength_outside_zero_one_is_refused(bad):
    model, _, _ = _trained("llora", "t")
    with pytest.raises(ValueError, match="strength must be a number in"):
        fl.set_strength(model, "t", bad)
    assert fl.task_config(model, "t").strength == 1.0


@pytest.mark.parametrize("name", ["left", "left-conv"])
def test_strength_is_refused_for_left_convolutions(name):
    model, _, _ = _trained(name, "t")
    with pytest.raises(ValueError, match="not available for kind"):
        fl.set_strength(model, "t", 0.5)
    with pytest.raises(ValueError, match="not available for kind"):
        dataclasses.replace(CONFIGS[name], strength=0.5)
    fl.set_strength(model, "t", 1.0)  # 1 is the task as trained: allowed


def test_strength_of_a_merged_task_or_a_missing_one_is_refused():
    model, _, _ = _trained("llora", "t")
    fl.merge_task(model, "t")
    with pytest.raises(RuntimeError, match="unmerge before changing its strength"):
        fl.set_strength(model, "t", 0.5)
    fl.unmerge(model)
    with pytest.raises(KeyError, match="unknown task"):
        fl.set_strength(model, "nope", 0.5)
