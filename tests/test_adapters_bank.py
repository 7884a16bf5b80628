"""Adapter behaviour on real layers, per-task banks, files, merge/unmerge, backends."""
import json
import math
import os

import pytest
import torch
from torch import nn

import fastlora as fl
from fastlora import functional as FL
from fastlora.backend import resolve_backend
from fastlora.bank import ADAPTER_FILE, CONFIG_FILE
from tests.helpers import rel_err

CONFIGS = {
    "llora": fl.AdapterConfig(kind="llora", rank=2),
    "llora-none": fl.AdapterConfig(kind="llora", rank=2, act="none"),
    "llora-rank1": fl.AdapterConfig(kind="llora", rank=1),
    "lora": fl.AdapterConfig(kind="lora", rank=2),
    "left": fl.AdapterConfig(kind="left", rank=2),
    "left-inner": fl.AdapterConfig(kind="left", rank=2, act="inner"),
    "left-linear": fl.AdapterConfig(kind="left-linear", rank=2),
    "left-conv": fl.AdapterConfig(kind="left-conv", rank=2, act="none"),
}


class Tiny(nn.Module):
    """A miniature generator path: mapping linear → modulated 3×3 up conv → 1×1 ToRGB-like conv; plus a D conv."""

    def __init__(self):
        super().__init__()
        self.mapping = fl.AdaptedLinear(8, 8, lr_mul=0.01, activation="lrelu")
        self.conv = fl.ModulatedConv2d(4, 5, 3, 8, up=True)
        self.rgb = fl.ModulatedConv2d(5, 3, 1, 8, demodulate=False)
        self.disc = fl.AdaptedConv2d(3, 2, 3, down=True, activation="lrelu")
        with torch.no_grad():  # a trained base has non-zero biases (LeFT's b_mul needs them to train)
            for m in (self.mapping, self.disc):
                m.bias.normal_()

    def forward(self, x, z, task_ids=None, disc=True):
        w = self.mapping(z, task_ids=task_ids)
        rgb = self.rgb(self.conv(x, w, task_ids=task_ids, activation="lrelu"), w, task_ids=task_ids)
        return self.disc(rgb) if disc else rgb


def _inputs(seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 4, 4, generator=g), torch.randn(n, 8, generator=g)


def _tiny_with_tasks(config, *tasks):
    """A seeded Tiny, its inputs and its base output (before any task), then fresh adapters for `tasks`."""
    torch.manual_seed(0)
    model = Tiny()
    x, z = _inputs()
    base = model(x, z).detach()
    for task in tasks:
        fl.add_task(model, task, config)
    return model, x, z, base


@pytest.mark.parametrize("name", list(CONFIGS))
def test_default_config_is_identity_at_init_and_every_tensor_trains(name):
    model, x, z, base = _tiny_with_tasks(CONFIGS[name], "t")
    fl.set_task(model, "t")
    # LeFT's product U·T·V of r^(-2/3) values equals 1 up to one rounding; the others are exact.
    err = rel_err(model(x, z), base)
    assert err == 0 or (name.startswith("left") and err < 1e-6), f"not the identity at initialisation: {err}"
    fl.freeze_base(model)
    params = fl.task_parameters(model, "t")
    before = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=1e-2)
    target = torch.randn_like(base)
    for _ in range(4):
        opt.zero_grad()
        loss = (model(x, z) - target).square().mean()
        loss.backward()
        opt.step()
    names = [n for n, _ in fl.task_state_dict(model, "t").items()]
    unchanged = [n for n, p, b in zip(names, params, before) if torch.equal(p, b)]
    assert not unchanged, f"adapter tensors that never trained: {unchanged}"
    assert all(not p.requires_grad for p in fl.base_parameters(model))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_reset_task_returns_chosen_roles_to_the_identity(name):
    model, x, z, base = _tiny_with_tasks(CONFIGS[name], "t", "u")
    with torch.no_grad():  # "trained" adapters: every tensor moved
        for task in ("t", "u"):
            for p in fl.task_parameters(model, task):
                p.add_(0.3 * torch.randn_like(p))
    before = {k: v.clone() for k, v in fl.task_state_dict(model, "t").items()}
    other = {k: v.clone() for k, v in fl.task_state_dict(model, "u").items()}
    fl.reset_task(model, "t", roles=("mapping",))
    after = fl.task_state_dict(model, "t")
    for k, v in after.items():
        assert torch.equal(v, before[k]) != k.startswith("mapping."), k  # only the mapping's tensors changed
    w, b = fl.merged_weights(model.mapping, "t")
    assert rel_err(w, model.mapping.weight) < 1e-6 and rel_err(b, model.mapping.bias) < 1e-6
    fl.reset_task(model, "t")
    fl.set_task(model, "t")
    err = rel_err(model(x, z), base)
    assert err < 1e-6, f"not the identity after reset_task: {err}"
    assert all(torch.equal(v, other[k]) for k, v in fl.task_state_dict(model, "u").items())  # other task untouched
    with pytest.raises(KeyError, match="unknown task"):
        fl.reset_task(model, "nope")


@pytest.mark.parametrize("name", ["lora", "left-linear", "llora"])
def test_relative_shift_measures_how_far_a_role_moved(name):
    """relative_shift: 0 at the identity; once adapters move, the mean over the role's layers of the relative
    squared change of weight and bias (checked against merged_weights), with gradient to that role's adapters
    only."""
    model, *_ = _tiny_with_tasks(CONFIGS[name], "t")
    assert fl.relative_shift(model, "t", ("style",)).item() == pytest.approx(0.0, abs=1e-12)  # (round-off)
    with torch.no_grad():
        for p in fl.task_parameters(model, "t"):
            p.add_(0.3 * torch.randn_like(p))
    style = [m for _, m in fl.adapted_layers(model) if m.role == "style"]
    assert len(style) == 2  # the conv's and the ToRGB's modulation affines

    def rel(new, old):
        new, old = new.detach().double(), old.detach().double()
        return float((new - old).pow(2).sum() / old.pow(2).sum())

    want = sum(rel(w, m.weight) + rel(b, m.bias) for m in style for w, b in [fl.merged_weights(m, "t")]) / 2
    shift = fl.relative_shift(model, "t", ("style",))
    assert shift.item() > 0 and shift.item() == pytest.approx(want, rel=1e-5)
    shift.backward()
    moved = {k for k, p in zip(fl.task_state_dict(model, "t"), fl.task_parameters(model, "t"))
             if p.grad is not None and p.grad.abs().sum() > 0}
    assert moved and all(".modulation." in k for k in moved), moved
    assert all(p.grad is None for p in fl.base_parameters(model))
    with pytest.raises(ValueError, match="no adapted layers"):
        fl.relative_shift(model, "t", ("nothing",))
    with pytest.raises(KeyError, match="unknown task"):
        fl.relative_shift(model, "nope", ("style",))


def test_published_configuration_has_dead_llora_gradients():
    """Documents the published defect 1 (docs/design.md §3.2): act="both" with B_inst = 0 gives exactly zero LLoRA gradients."""
    torch.manual_seed(1)
    model = Tiny()
    fl.add_task(model, "up", fl.AdapterConfig.upstream(rank=2))
    fl.set_task(model, "up")
    x, z = _inputs()
    model(x, z).square().mean().backward()
    for path, layer in fl.adapted_layers(model):
        p = layer.adapters["up"]
        if isinstance(p, fl.modules.LLoRAParams):
            for t in (p.A, p.B, p.B_inst):
                assert t.grad is not None and torch.count_nonzero(t.grad) == 0, path
    # ...and its linear bias offset (initialised to 1) changes the model before any training (defect 2).
    fl.set_task(model, None)
    base = model(x, z)
    fl.set_task(model, "up")
    assert not torch.allclose(model(x, z), base)


def test_outer_relu_passes_gradient_at_zero_but_keeps_values():
    torch.manual_seed(9)
    A = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    B, Bi = torch.randn(4, 2, dtype=torch.float64).abs(), torch.randn(2, 2, 9, dtype=torch.float64).abs()
    d = FL.llora_delta(A, B, Bi, 0.5, "both")
    assert torch.count_nonzero(d) == 0
    (d * torch.randn_like(d)).sum().backward()
    assert torch.count_nonzero(A.grad) == A.numel()
    A2 = torch.randn(3, 2, dtype=torch.float64)
    assert torch.equal(FL.llora_delta(A2, B, Bi, 0.5, "both"), FL.llora_delta(A2, B, Bi, 0.5, "none").clamp_min(0))


def test_alpha_routing_default_vs_upstream():
    cfg = fl.AdapterConfig(alpha_conv=0.1, alpha_linear=4.0)
    assert cfg.alpha_for("style") == 4.0 and cfg.alpha_for("conv") == 0.1 and cfg.alpha_for("mapping") == 4.0
    assert fl.AdapterConfig.upstream().alpha_for("style") == 0.1
    m = fl.ModulatedConv2d(4, 5, 3, 8)
    fl.add_task(m, "t", cfg)
    assert m.modulation.adapters["t"].alpha == 4.0 and m.adapters["t"].alpha == 0.1


def test_parameter_counts_match_closed_forms():
    r = 3
    for kind, conv_count, lin_count in [
        ("llora", r * (4 + 5) + r * r * 9, r * (8 + 4) + 4),
        ("lora", r * (4 * 9 + 5), r * (8 + 4) + 4),
        ("left", 5 * r + r * r * 9 + 5 * r + 9 * r + 4 * r + 4 * r + 9 * r, 2 * r * (8 + 4) + 2 * 4),
        ("left-linear", r * (4 + 5) + r * r * 9, 2 * r * (8 + 4) + 2 * 4),
        ("left-conv", 5 * r + r * r * 9 + 5 * r + 9 * r + 4 * r + 4 * r + 9 * r, r * (8 + 4) + 4),
    ]:
        m = fl.ModulatedConv2d(4, 5, 3, 8)
        fl.add_task(m, "t", fl.AdapterConfig(kind=kind, rank=r))
        assert m.adapters["t"].adapter().num_params() == conv_count, kind
        assert m.modulation.adapters["t"].adapter().num_params() == lin_count, kind
        counts = fl.count_parameters(m, "t")
        assert counts == {"base": 5 * 4 * 9 + 4 * 8 + 4, "stored": conv_count + lin_count,
                          "trainable": conv_count + lin_count}


def test_mixed_kinds_put_each_form_on_its_layers():
    """left-linear: LeFT on linear layers, LLoRA on convs; left-conv: LoRA on linear layers, LeFT on convs; the
    conv form decides which activations are allowed."""
    m = fl.ModulatedConv2d(4, 5, 3, 8)
    fl.add_task(m, "a", fl.AdapterConfig(kind="left-linear", act="both"))
    fl.add_task(m, "b", fl.AdapterConfig(kind="left-conv"))
    assert type(m.adapters["a"].adapter()) is fl.LLoRA and type(m.modulation.adapters["a"].adapter()) is fl.LeFT
    assert type(m.adapters["b"].adapter()) is fl.LeFT and type(m.modulation.adapters["b"].adapter()) is fl.LoRA
    assert m.adapters["a"].adapter().act == "both" and m.modulation.adapters["b"].alpha == 4.0
    with pytest.raises(ValueError, match="act for kind 'left-conv' must be one of"):
        fl.AdapterConfig(kind="left-conv", act="both")
    with pytest.raises(ValueError, match="adapter kind must be one of"):
        fl.AdapterConfig(kind="left-both")


def _trained(model, task, cfg, seed):
    fl.add_task(model, task, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in fl.task_parameters(model, task):
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


def test_task_ids_mix_tasks_in_one_batch():
    torch.manual_seed(2)
    model = Tiny()
    _trained(model, "a", CONFIGS["llora"], 1)
    _trained(model, "b", CONFIGS["left"], 2)
    x, z = _inputs(n=4)
    ids = torch.tensor([1, 0, 2, 1])
    fl.set_task(model, ["a", "b", None])
    mixed = model(x, z, task_ids=ids, disc=False)
    for i, t in enumerate(["b", "a", None, "b"]):
        fl.set_task(model, t)
        assert rel_err(mixed[i:i + 1], model(x[i:i + 1], z[i:i + 1], disc=False)) < 1e-5


def test_save_load_merge_round_trip(tmp_path):
    torch.manual_seed(3)
    model = Tiny()
    _trained(model, "sketch", CONFIGS["llora"], 5)
    _trained(model, "baby", CONFIGS["left"], 6)
    x, z = _inputs()
    outs = {}
    for t in ("sketch", "baby"):
        fl.set_task(model, t)
        outs[t] = model(x, z).detach()
        fl.save_task(model, t, tmp_path / t)
    assert {p.name for p in (tmp_path / "sketch").iterdir()} == {ADAPTER_FILE, CONFIG_FILE}
    meta = json.loads((tmp_path / "sketch" / CONFIG_FILE).read_text())
    assert meta["task"] == "sketch" and meta["kind"] == "llora" and meta["rank"] == 2
    assert meta["base_checksum"] == fl.base_checksum(model)

    fresh = Tiny()
    fresh.load_state_dict(fl.base_state_dict(model), strict=False)
    assert fl.load_task(fresh, tmp_path / "sketch") == "sketch"
    assert fl.load_task(fresh, tmp_path / "baby") == "baby"
    assert fl.task_names(fresh) == ["sketch", "baby"]
    for t in ("sketch", "baby"):
        fl.set_task(fresh, t)
        assert torch.equal(fresh(x, z), outs[t])
        fl.merge_task(fresh, t)
        assert all(m.merged == t for _, m in fl.adapted_layers(fresh))
        assert rel_err(fresh(x, z), outs[t]) < 1e-5
        fl.unmerge(fresh)
    fl.set_task(fresh, None)
    fl.set_task(model, None)
    assert torch.equal(fresh(x, z), model(x, z))
    # merged_state_dict does not touch the model and equals merge_task's weights
    st = fl.merged_state_dict(fresh, "baby")
    plain = Tiny()
    plain.load_state_dict(st, strict=False)
    assert rel_err(plain(x, z), outs["baby"]) < 1e-5


def test_merge_guards_and_unknown_tasks(tmp_path):
    model = Tiny()
    fl.add_task(model, "a", CONFIGS["lora"])
    with pytest.raises(KeyError, match=r"unknown task 'zzz'; the model has tasks \['a'\]"):
        fl.set_task(model, "zzz")
    with pytest.raises(ValueError, match="already exists"):
        fl.add_task(model, "a", CONFIGS["lora"])
    fl.merge_task(model, "a")
    with pytest.raises(RuntimeError, match="merged"):
        fl.base_checksum(model)
    fl.unmerge(model)
    fl.save_task(model, "a", tmp_path / "a")
    with pytest.raises(FileExistsError, match="overwrite"):
        fl.save_task(model, "a", tmp_path / "a")
    fl.save_task(model, "a", tmp_path / "a", overwrite=True)


def test_corrupt_and_mismatched_files_are_refused(tmp_path):
    torch.manual_seed(4)
    model = Tiny()
    _trained(model, "a", CONFIGS["llora"], 1)
    d = fl.save_task(model, "a", tmp_path / "a")
    fresh = Tiny()
    fresh.load_state_dict(fl.base_state_dict(model), strict=False)

    # different base
    with pytest.raises(ValueError, match="different base model"):
        fl.load_task(Tiny(), d)
    # corrupt tensor file
    data = (d / ADAPTER_FILE).read_bytes()
    (d / ADAPTER_FILE).write_bytes(data[:-7] + b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        fl.load_task(fresh, d)
    (d / ADAPTER_FILE).write_bytes(data)
    # truncated JSON
    cfg = (d / CONFIG_FILE).read_text()
    (d / CONFIG_FILE).write_text(cfg[: len(cfg) // 2])
    with pytest.raises(ValueError, match="not valid JSON"):
        fl.load_task(fresh, d)
    (d / CONFIG_FILE).write_text(cfg)
    # adapters of another architecture: readable key diff
    other = Tiny()
    other.rgb = fl.ModulatedConv2d(5, 4, 1, 8, demodulate=False)
    with pytest.raises(ValueError, match=r"(?s)do not fit this model.*wrong shape.*rgb\.B: expected \[4, 2\], file has \[3, 2\]"):
        fl.load_task(other, d, check_base=False)
    assert fl.task_names(other) == []  # a failed load leaves nothing behind
    # and the good file still loads
    assert fl.load_task(fresh, d) == "a"


def test_failed_save_leaves_no_partial_folder(tmp_path):
    model = Tiny()
    fl.add_task(model, "a", CONFIGS["lora"])
    target = tmp_path / "a"
    with pytest.raises(KeyError):
        fl.save_task(model, "missing", target)
    assert not target.exists()
    assert [p for p in tmp_path.iterdir()] == []


def test_backend_resolution(monkeypatch):
    x = torch.randn(1)
    assert resolve_backend("auto", x) == "torch"
    assert resolve_backend("torch", x) == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="backend='triton' cannot run: the tensors are on the CPU"):
        resolve_backend("triton", x)
    monkeypatch.setattr("fastlora.backend.triton_installed", lambda: False)
    with pytest.raises(RuntimeError, match="pip install triton==3.7.1"):
        resolve_backend("triton", x)
    assert resolve_backend("auto", x) == "torch"


def test_bf16_layers_merge_in_fp32():
    torch.manual_seed(5)
    w = torch.randn(6, 5, 3, 3)
    a = fl.LLoRA(torch.randn(5, 2), torch.randn(6, 2), torch.randn(2, 2, 9), 0.01, "none")
    exact = (w.double() + FL.llora_delta(a.A.double(), a.B.double(), a.B_inst.double(), 0.01, "none")).bfloat16()
    got = FL.adapted_weight(w.bfloat16(), fl.LLoRA(a.A.bfloat16(), a.B.bfloat16(), a.B_inst.bfloat16(), 0.01, "none"))
    assert got.dtype == torch.bfloat16
    # one bf16 rounding of the fp32 result (adapter tensors themselves rounded to bf16 first)
    assert rel_err(got, exact) < 2e-2
    assert math.isfinite(rel_err(got, exact))


def test_cli_runs_as_module():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "colorgan", "--help"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0 and "usage: colorgan" in out.stdout
