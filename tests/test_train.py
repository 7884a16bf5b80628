"""Training: losses against hand computations, augmentation, pretrain and continual runs of every
method on tiny models, no forgetting, frozen base, exact resume, clear errors, CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import fastlora
from colorgan import Discriminator, Generator, load_checkpoint, save_checkpoint
from colorgan.cli import main
from colorgan.train.augment import DiffAugment
from colorgan.train.continual import TrainConfig, parse_tasks, train
from colorgan.train.losses import (d_logistic_loss, g_nonsaturating_loss, lazy_adam_params, path_length_penalty,
                                   r1_penalty)
from colorgan.train.pretrain import PretrainConfig, RunOptions, pretrain
from colorgan.train.state import load_state

CH = {4: 16, 8: 16, 16: 8}
STYLE = 16
OPTS = RunOptions(progress=False, device="cpu")


def make_folder(path, n, seed, size=20):
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path / f"{i:02d}.png")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    torch.manual_seed(0)
    G = Generator(16, STYLE, 2, channels=CH)
    D = Discriminator(16, channels=CH)
    with torch.no_grad():  # non-trivial noise strengths and biases
        for name, p in G.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.1)
    ckpt = save_checkpoint(root / "base", G, D)
    return {"root": root, "ckpt": str(ckpt), "src": make_folder(root / "src", 12, 0),
            "a": make_folder(root / "a", 6, 1), "b": make_folder(root / "b", 5, 2)}


def small_cfg(setup, method="color", **kw):
    base = dict(ckpt=setup["ckpt"], tasks=f"a={setup['a']},b={setup['b']}", method=method, iter=5, batch=2,
                n_sample=4, sample_every=3, save_every=100, log_every=1, fisher_batches=2, d_reg_every=4,
                g_reg_every=2, subspace_freq=2, near_anchor=0, strength=1)  # the near check, the pick: own tests
    base.update(kw)
    return TrainConfig(**base)


def adapter_tensors(G, task):
    return {k: v.detach().clone() for k, v in fastlora.task_state_dict(G, task).items()}


# ----------------------------------------------------------------------------- losses

def test_logistic_losses_by_hand():
    real, fake = torch.tensor([[0.5], [-1.0]]), torch.tensor([[2.0], [0.0]])
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    expect_d = (sp(-0.5) + sp(1.0)) / 2 + (sp(2.0) + sp(0.0)) / 2
    assert d_logistic_loss(real, fake).item() == pytest.approx(expect_d, rel=1e-6)
    assert g_nonsaturating_loss(fake).item() == pytest.approx((sp(-2.0) + sp(0.0)) / 2, rel=1e-6)


def test_r1_by_hand():
    w = torch.randn(3, 4, 4, dtype=torch.float64)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    pred = (x * w).sum((1, 2, 3)) ** 2  # d pred_b / dx_b = 2 (x_b·w) w
    r1 = r1_penalty(pred, x)
    s = (x * w).sum((1, 2, 3)).detach()
    expect = ((2 * s) ** 2 * w.square().sum()).mean()
    assert r1.item() == pytest.approx(expect.item(), rel=1e-10)
    r1.backward()  # create_graph: the penalty is differentiable
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_path_length_by_hand():
    b, L, d, h = 3, 4, 5, 2
    W = torch.randn(d, h * h, dtype=torch.float64)
    latents = torch.randn(b, L, d, dtype=torch.float64, requires_grad=True)
    img = torch.einsum("bld,dp->bp", latents, W).reshape(b, 1, h, h)
    noise = torch.randn(b, 1, h, h, dtype=torch.float64)
    mean0 = torch.tensor(0.3, dtype=torch.float64)
    pen, mean, lengths = path_length_penalty(img, latents, mean0, noise)
    g = W @ (noise.reshape(b, -1) / h).T  # [d, b], the same for every latent l
    exp_len = g.square().sum(0).sqrt()
    assert torch.allclose(lengths, exp_len)
    exp_mean = mean0 + 0.01 * (exp_len.mean() - mean0)
    assert mean.item() == pytest.approx(exp_mean.item())
    assert pen.item() == pytest.approx((exp_len - exp_mean).square().mean().item())


def test_lazy_regularisation_scaling():
    lr, betas = lazy_adam_params(0.002, 16)
    assert lr == pytest.approx(0.002 * 16 / 17)
    assert betas == pytest.approx((0.0, 0.99 ** (16 / 17)))


def test_r1_and_path_length_through_the_models():
    torch.manual_seed(1)
    G, D = Generator(16, STYLE, 2, channels=CH), Discriminator(16, channels=CH, patch_heads=True)
    real = torch.randn(2, 3, 16, 16, requires_grad=True)
    for patch in (None, 0):
        pred = D(real, patch=patch)
        r1 = r1_penalty(pred.reshape(2, -1).mean(1), real)
        D.zero_grad()
        r1.backward()
        grads = [p.grad for p in D.parameters() if p.grad is not None]
        assert torch.isfinite(r1) and r1 > 0 and grads and all(torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0
    fake, latents = G(torch.randn(2, STYLE), return_latents=True, noise=G.make_noise(2))
    pen, _, lengths = path_length_penalty(fake, latents, torch.zeros(()), torch.randn_like(fake))
    pen.backward()
    assert torch.isfinite(pen) and pen > 0 and (lengths > 0).all()
    g = G.convs[0].conv.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_diffaugment_is_seeded_resumable_and_differentiable():
    x = (torch.rand(3, 3, 16, 16) * 2 - 1).requires_grad_(True)
    a1, a2 = DiffAugment(seed=5), DiffAugment(seed=5)
    assert torch.equal(a1(x), a2(x))
    saved = a1.state_dict()
    y1 = a1(x)
    a2.load_state_dict(saved)
    assert torch.equal(y1, a2(x))
    assert y1.shape == x.shape
    y1.sum().backward()
    assert torch.isfinite(x.grad).all()
    t = DiffAugment("translation", seed=0, translation=0.25)
    ones = torch.ones(8, 1, 8, 8)
    out = t(ones)  # shifted copies of a constant: zeros fill what came from outside
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="policy"):
        DiffAugment("blur")


# ----------------------------------------------------------------------------- pretrain

def test_pretrain_writes_run_and_resumes_exactly(setup, tmp_path):
    cfg = PretrainConfig(data=str(setup["src"]), size=16, iter=4, batch=2, style_dim=STYLE, n_mlp=2, channels=CH,
                         n_sample=4, sample_every=2, save_every=100, log_every=1, augment="on", d_reg_every=2,
                         g_reg_every=2)
    s = pretrain(cfg, tmp_path / "A", options=OPTS)
    A = tmp_path / "A"
    assert s["finished"] and s["step"] == 4
    for f in ("config.json", "log.jsonl", "train.log", "summary.json", "samples/0000002.png", "samples/0000004.png",
              "state/state.pt", "checkpoint/config.json"):
        assert (A / f).exists(), f
    assert len((A / "log.jsonl").read_text().splitlines()) == 4
    G, D, info = load_checkpoint(A / "checkpoint", load_g_train=True)
    assert D is not None and info["g"] is not None and not torch.isnan(G.w_avg).any()
    # resume: 1 + 1 + 2 iterations equal 4 straight, bit for bit
    pretrain(cfg, tmp_path / "B", options=RunOptions(progress=False, stop_at=1))
    pretrain(None, tmp_path / "B", options=RunOptions(progress=False, stop_at=2), resume=True)
    pretrain(None, tmp_path / "B", options=OPTS, resume=True)
    a, b = load_state(A / "state/state.pt"), load_state(tmp_path / "B/state/state.pt")
    for key in ("g_ema", "d", "g"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]) or (k == "w_avg"), (key, k)
    assert torch.equal(a["mean_path_length"], b["mean_path_length"])
    with pytest.raises(FileExistsError, match="--overwrite"):
        pretrain(cfg, A, options=OPTS)


def test_pretrain_init_and_channels_last(setup, tmp_path):
    kw = dict(data=str(setup["src"]), size=16, iter=2, batch=2, style_dim=STYLE, n_mlp=2, channels=CH, n_sample=4,
              sample_every=100, save_every=100, log_every=1, d_reg_every=2, g_reg_every=2)
    # init: the run starts from the checkpoint's G (EMA) and D; with lr 0 nothing moves, so the result is that base
    pretrain(PretrainConfig(**kw, lr=0.0, init=setup["ckpt"]), tmp_path / "init", options=OPTS)
    base, base_d, _ = load_checkpoint(setup["ckpt"])
    G, D, _ = load_checkpoint(tmp_path / "init" / "checkpoint")
    for a, b in ((G, base), (D, base_d)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sb if not k.endswith("w_avg"))
    with pytest.raises(ValueError, match="does not have this run's architecture"):
        pretrain(PretrainConfig(**{**kw, "style_dim": 8}, init=setup["ckpt"]), tmp_path / "bad", options=OPTS)
    # channels-last models and batches: the same run up to float rounding
    pretrain(PretrainConfig(**kw), tmp_path / "cf", options=OPTS)
    pretrain(PretrainConfig(**kw), tmp_path / "cl", options=RunOptions(progress=False, device="cpu", channels_last=True))
    a, b = load_state(tmp_path / "cf/state/state.pt"), load_state(tmp_path / "cl/state/state.pt")
    for k, v in a["g"].items():
        if v.is_floating_point() and not k.endswith("w_avg"):
            assert torch.allclose(v, b["g"][k], rtol=1e-3, atol=1e-5), k


# ----------------------------------------------------------------------------- continual

@pytest.mark.parametrize("method", ["color", "lfs"])
def test_adapter_methods_keep_base_and_earlier_tasks(setup, tmp_path, method):
    out = tmp_path / "run"
    base, base_d, _ = load_checkpoint(setup["ckpt"])
    base_sd = fastlora.base_state_dict(base)
    # stop at the task boundary: the checkpoint then holds task a only
    train(small_cfg(setup, method), out, options=RunOptions(progress=False, stop_at=5))
    G1, _, info1 = load_checkpoint(out / "checkpoint")
    assert info1["tasks"] == ["a"]
    a_after_1 = adapter_tensors(G1, "a")
    s = train(None, out, options=OPTS, resume=True)
    assert s["finished"]
    G2, D2, info2 = load_checkpoint(out / "checkpoint")
    assert info2["tasks"] == ["a", "b"]
    # no forgetting by construction: task a's adapters are bit-identical after task b
    a_after_2 = adapter_tensors(G2, "a")
    assert all(torch.equal(a_after_1[k], a_after_2[k]) for k in a_after_1)
    # the base generator and the stored base D never change
    assert all(torch.equal(base_sd[k], v) for k, v in fastlora.base_state_dict(G2).items() if k != "w_avg")
    assert all(torch.equal(base_d.state_dict()[k], v) for k, v in D2.state_dict().items())
    # the adapters trained (they start as the identity: the images must differ from the base's)
    z = torch.randn(2, STYLE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fastlora.set_task(G2, None)
        ref = G2(z)
        for t in ("a", "b"):
            fastlora.set_task(G2, t)
            assert (G2(z) - ref).abs().max() > 1e-6
    kind = fastlora.task_config(G2, "a").kind
    assert kind == ("left" if method == "lfs" else "left-linear")
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in log] == list(range(1, 11))
    if method == "lfs":
        assert any("mode_seeking" in r for r in log)
    for f in ("samples/after_a.png", "samples/after_b.png", "samples/b_0000003.png", "summary.json", "config.json"):
        assert (out / f).exists(), f
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["storage"]["per_task_params"]) == {"a", "b"}


@pytest.mark.parametrize("method", ["ewc", "distill"])
def test_full_finetuning_baselines(setup, tmp_path, method):
    out = tmp_path / "run"
    s = train(small_cfg(setup, method, iter=3), out, options=OPTS)
    assert s["finished"] and set(s["checkpoints"]) == {"a", "b"}
    base, _, _ = load_checkpoint(setup["ckpt"])
    n = sum(p.numel() for p in base.parameters())
    assert s["storage"]["total_params_stored"] == 2 * n
    Ga, _, _ = load_checkpoint(out / "checkpoints" / "a")
    Gb, _, _ = load_checkpoint(out / "checkpoints" / "b")
    assert not torch.equal(Ga.conv1.conv.weight, base.conv1.conv.weight)
    assert not torch.equal(Ga.conv1.conv.weight, Gb.conv1.conv.weight)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    term = "ewc" if method == "ewc" else "distill"
    assert all(term in r for r in log) and any(r[term] > 0 for r in log)


@pytest.mark.slow
@pytest.mark.parametrize("method,stops", [("color", [3, 5, 7]), ("distill", [2, 8])])
def test_resume_is_bit_identical(setup, tmp_path, method, stops):
    cfg = lambda: small_cfg(setup, method, augment=True, save_every=2)  # noqa: E731
    train(cfg(), tmp_path / "A", options=OPTS)
    train(cfg(), tmp_path / "B", options=RunOptions(progress=False, stop_at=stops[0]))
    for s in stops[1:] + [None]:
        train(None, tmp_path / "B", options=RunOptions(progress=False, stop_at=s), resume=True)
    if method == "color":
        Ga, _, _ = load_checkpoint(tmp_path / "A/checkpoint")
        Gb, _, _ = load_checkpoint(tmp_path / "B/checkpoint")
        sa, sb = Ga.state_dict(), Gb.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        a, b = load_state(tmp_path / "A/state/state.pt"), load_state(tmp_path / "B/state/state.pt")
        for key in ("adapters", "adapters_ema"):
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    else:
        for t in ("a", "b"):
            Ga, _, _ = load_checkpoint(tmp_path / "A/checkpoints" / t)
            Gb, _, _ = load_checkpoint(tmp_path / "B/checkpoints" / t)
            sa, sb = Ga.state_dict(), Gb.state_dict()
            assert all(torch.equal(sa[k], sb[k]) for k in sa), t


def test_parse_tasks_and_errors(setup, tmp_path):
    assert parse_tasks("x=/d1,y=/d2") == [["x", "/d1"], ["y", "/d2"]]
    for bad, msg in [("x", "name=DIR"), ("x=/a,x=/b", "twice"), ("all=/a", "reserved"), ("", "at least one")]:
        with pytest.raises(ValueError, match=msg):
            parse_tasks(bad)
    with pytest.raises(ValueError, match="method"):
        small_cfg(setup, "bogus")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(small_cfg(setup, tasks=f"a={tmp_path / 'missing'}"), tmp_path / "r1", options=OPTS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image"):
        train(small_cfg(setup, tasks=f"a={tmp_path / 'empty'}"), tmp_path / "r2", options=OPTS)
    (tmp_path / "r3").mkdir()
    (tmp_path / "r3" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        train(small_cfg(setup), tmp_path / "r3", options=OPTS)
    with pytest.raises(FileExistsError, match="not a colorgan run folder"):
        train(small_cfg(setup), tmp_path / "r3", options=OPTS, overwrite=True)
    with pytest.raises(FileNotFoundError, match="run folder"):
        train(None, tmp_path / "r3", options=OPTS, resume=True)
    G = Generator(16, STYLE, 2, channels=CH)
    save_checkpoint(tmp_path / "nod", G)
    with pytest.raises(ValueError, match="no discriminator"):
        train(small_cfg(setup, ckpt=str(tmp_path / "nod")), tmp_path / "r4", options=OPTS)


def test_default_adapter_kind_per_method(setup):
    # color: LeFT on linear layers + LLoRA on convs (validation round 16); --compat upstream: the published LoRA + LLoRA
    assert [small_cfg(setup, m).kind for m in ("color", "lfs", "ewc")] == ["left-linear", "left", None]
    assert small_cfg(setup, compat="upstream").kind == "llora"
    assert small_cfg(setup, kind="lora", compat="upstream").kind == "lora"
    assert small_cfg(setup, "lfs", compat="upstream").kind == "left"


def test_cli_train_and_upstream_flag_spellings(setup, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["train", "--ckpt", setup["ckpt"], "--tasks", f"a={setup['a']}", "--out", str(out), "--iter", "2",
               "--batch", "2", "--lora_alpha_conv", "0.5", "--lora_alpha_fc", "2", "--use_act", "--rank", "2",
               "--no-progress", "--device", "cpu"])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["alpha_conv"], cfg["alpha_linear"], cfg["act"], cfg["rank"]) == (0.5, 2.0, "both", 2)
    G, _, _ = load_checkpoint(out / "checkpoint")
    assert fastlora.task_config(G, "a").act == "both"
    rc = main(["train", "--ckpt", setup["ckpt"], "--tasks", f"a={setup['a']}", "--out", str(out), "--no-progress"])
    assert rc == 1 and "--overwrite" in capsys.readouterr().err
    rc = main(["pretrain", "--data", str(setup["src"]), "--size", "16", "--out", str(tmp_path / "pt"), "--iter", "1",
               "--batch", "2", "--style-dim", str(STYLE), "--n-mlp", "2", "--channels", "4:16,8:16,16:8",
               "--no-progress"])
    assert rc == 0 and (tmp_path / "pt" / "checkpoint" / "config.json").is_file()


def test_correspondence_loss_and_training(setup, tmp_path):
    from colorgan.train.losses import correspondence_loss

    torch.manual_seed(0)
    f = [torch.randn(4, 8, 3, 3), torch.randn(4, 5)]
    assert correspondence_loss(f, f).item() == pytest.approx(0.0, abs=1e-6)  # the same relations: no loss
    a = [t.clone().requires_grad_(True) for t in f]
    shuffled = [t[[1, 0, 3, 2]] for t in a]  # each sample now relates to the others as another one did
    loss = correspondence_loss(f, shuffled)
    loss.backward()
    assert loss.item() > 1e-3 and all(t.grad is not None and t.grad.abs().sum() > 0 for t in a)
    with pytest.raises(ValueError, match="at least 2 samples"):
        correspondence_loss([f[0][:1]], [f[0][:1]])
    with pytest.raises(ValueError, match="correspondence must be >= 0"):
        small_cfg(setup, correspondence=-1.0)
    # the generator form: zero for fresh (identity) adapters, positive once they move, gradient to adapters only
    from colorgan.train.baselines import adapter_correspondence

    G = load_checkpoint(setup["ckpt"])[0]
    fastlora.add_task(G, "t", fastlora.AdapterConfig(rank=2))
    fastlora.freeze_base(G)
    z, noise = torch.randn(4, STYLE), G.make_noise(4, generator=torch.Generator().manual_seed(1))
    assert adapter_correspondence(G, "t", z, noise, "torch").item() == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        for p in fastlora.task_parameters(G, "t"):
            p.add_(torch.randn_like(p))
    loss = adapter_correspondence(G, "t", z, noise, "torch")
    loss.backward()
    assert loss.item() > 1e-4 and fastlora.active_task(G) == "t"
    grads = [p.grad for p in fastlora.task_parameters(G, "t")]  # (ToRGB adapters do not change the features)
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > len(grads) // 2
    assert all(p.grad is None for p in fastlora.base_parameters(G))
    summary = train(small_cfg(setup, correspondence=10.0, tasks=f"a={setup['a']}", iter=3), tmp_path / "r",
                    options=OPTS)
    logged = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert summary["finished"] and all(rec["correspondence"] >= 0 for rec in logged if "g" in rec)


@pytest.mark.parametrize("role", ["style", "mapping"])
def test_anchor_keeps_the_role_adapters_near_the_base(setup, tmp_path, role):
    """--style-anchor / --mapping-anchor: the penalty is logged, and a heavy one leaves that role's adapters much
    nearer the base after a few iterations than no penalty does (Adam's steps are about ±lr whatever the loss's
    scale, so without it the role keeps moving, with it it turns back); the other role is left free."""
    key = f"{role}_anchor"
    other = "mapping" if role == "style" else "style"
    with pytest.raises(ValueError, match=f"{key}: expected a finite number >= 0"):
        small_cfg(setup, **{key: -1.0})

    def shifts(anchor: float) -> dict[str, float]:
        out = tmp_path / f"a{anchor:g}"
        summary = train(small_cfg(setup, tasks=f"a={setup['a']}", iter=8, **{key: anchor}), out, options=OPTS)
        assert summary["finished"]
        logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        assert all((rec.get(key, 0.0) > 0) == (anchor > 0) and f"{other}_anchor" not in rec
                   for rec in logged if "g" in rec and rec["step"] > 1), logged
        G = load_checkpoint(out / "checkpoint", tasks=["a"], load_d=False)[0]
        return {r: float(fastlora.relative_shift(G, "a", (r,)).detach()) for r in (role, other)}

    free, anchored = shifts(0.0), shifts(1e6)
    assert free[role] > 0 and anchored[role] < 0.5 * free[role], (free, anchored)
    assert anchored[other] > 0.5 * free[other], (free, anchored)
    flag = f"--{role}-anchor"
    rc = main(["train", "--ckpt", setup["ckpt"], "--tasks", f"a={setup['a']}", "--out", str(tmp_path / "cli"),
               "--iter", "1", "--batch", "2", flag, "3", "--no-progress", "--device", "cpu"])
    assert rc == 0 and json.loads((tmp_path / "cli/config.json").read_text())[key] == 3.0


def test_near_check_raises_the_anchors_of_near_tasks_only(setup, tmp_path, tiny_net_path, monkeypatch, capsys):
    """--near-anchor: each task's gap from the base is measured once (a real TorchScript feature network here, a
    small one), logged and kept in the state and summary; the tasks below the threshold train with both anchors at
    least --near-anchor, the others with the anchors as given; a resumed run keeps the gaps it measured."""
    from colorgan.metrics.features import FeatureNetwork
    from colorgan.train import near

    monkeypatch.setenv("COLORGAN_INCEPTION", str(tiny_net_path))
    net = FeatureNetwork(tiny_net_path)
    G = load_checkpoint(setup["ckpt"], load_d=False)[0]
    rng = torch.get_rng_state()
    base = near.base_features(G, net, fastlora.base_checksum(G))
    assert torch.equal(rng, torch.get_rng_state())  # sampling the base leaves the global RNG alone
    assert base.shape[0] == near.BASE_SAMPLES
    gaps = {t: near.shot_gap(setup[t], base, net, G.size) for t in ("a", "b")}
    assert gaps["a"] != gaps["b"]
    monkeypatch.setattr(near, "NEAR_GAP", (gaps["a"] + gaps["b"]) / 2)  # one task on each side
    close = min(gaps, key=gaps.get)

    out = tmp_path / "near"
    summary = train(small_cfg(setup, iter=3, near_anchor=1e3, mapping_anchor="b=5"), out, options=OPTS)
    assert summary["near"]["checked"] and summary["near"]["near_tasks"] == [close]
    assert summary["near"]["gaps"] == pytest.approx(gaps, rel=1e-9)
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    for rec in (r for r in logged if "g" in r and r["step"] > 1):
        assert ("style_anchor" in rec) == (rec["task"] == close), rec
        assert ("mapping_anchor" in rec) == (rec["task"] == close or rec["task"] == "b"), rec
    text = (out / "train.log").read_text()
    assert f"near check: task {close!r} gap" in text and "near: anchors at least 1000" in text
    assert load_state(out / "state/state.pt")["near_gaps"] == summary["near"]["gaps"]

    # a task of one image cannot be measured (the unbiased KID needs two): not near, and the log says why
    one = tmp_path / "one"
    single = train(small_cfg(setup, tasks=f"s={make_folder(tmp_path / 'single', 1, 3)}", iter=2, near_anchor=1e3),
                   one, options=OPTS)
    assert single["near"]["checked"] and single["near"]["gaps"] == {"s": None} and single["near"]["near_tasks"] == []
    assert "near check: task 's' has one image, too few to measure" in (one / "train.log").read_text()

    # resumed (here with no network at all): the gaps measured at the start are kept
    stopped = tmp_path / "stopped"
    train(small_cfg(setup, iter=3, near_anchor=1e3), stopped, options=RunOptions(progress=False, device="cpu",
                                                                                   stop_at=2))
    monkeypatch.delenv("COLORGAN_INCEPTION")
    monkeypatch.setattr("colorgan.metrics.features.installed_inception", lambda: None)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/colorgan/inception-fid.pt either
    resumed = train(None, stopped, options=OPTS, resume=True)
    assert resumed["finished"] and resumed["near"]["gaps"] == pytest.approx(gaps, rel=1e-9)

    # no network: the check is skipped, said in the log and the summary, and no anchor is raised
    off = tmp_path / "off"
    summary = train(small_cfg(setup, iter=2, near_anchor=1e3), off, options=OPTS)
    assert summary["near"] == {"checked": False, "threshold": near.NEAR_GAP, "anchor": 1e3, "gaps": {},
                               "near_tasks": []}
    assert "near check skipped: no Inception network installed" in (off / "train.log").read_text()
    assert not any("style_anchor" in json.loads(line) for line in (off / "log.jsonl").read_text().splitlines())
    # a network given for the run (`colorgan train --inception`, RunOptions.inception) is used without any installed
    given = train(small_cfg(setup, iter=2, near_anchor=1e3), tmp_path / "given",
                  options=RunOptions(progress=False, device="cpu", inception=str(tiny_net_path)))
    assert given["near"]["checked"] and given["near"]["gaps"] == pytest.approx(gaps, rel=1e-9)
    argv = ["train", "--ckpt", setup["ckpt"], "--tasks", f"a={setup['a']}", "--iter", "1", "--batch", "2",
            "--no-progress", "--device", "cpu", "--out", str(tmp_path / "cli")]
    assert main([*argv, "--inception", str(tmp_path / "missing.pt")]) == 1  # asked for, not there: one line
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no Inception network file at" in err[0] and "missing.pt" in err[0], err
    assert not (tmp_path / "cli").exists()  # refused before the run folder was made: the same --out works next
    assert main([*argv, "--inception", str(tiny_net_path)]) == 0
    out_lines = capsys.readouterr().out.strip().splitlines()
    verdict = "near" if close == "a" else "not near"
    assert out_lines[-1] == (f"near check (anchors at least 30 below gap {near.NEAR_GAP:g}): "
                             f"a {verdict} (gap {gaps['a']:.1f})"), out_lines
    assert main([*argv[:-1], str(tmp_path / "cli-skipped")]) == 0  # no network installed, none given
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("near check skipped: no Inception network")
    with pytest.raises(ValueError, match="near_anchor must be a finite number >= 0"):
        small_cfg(setup, near_anchor=-1)
    saved = json.loads((off / "config.json").read_text())
    assert saved["near_anchor"] == 1e3 and saved["run_id"]
    del saved["near_anchor"]  # runs saved before the check existed trained without it
    assert TrainConfig.from_dict(saved).near_anchor == 0


def _independent_shot_kids(ckpt, task, shots_dir, net_path, candidates, n):
    """KID against the shots at each strength, computed apart from the training code: the checkpoint reloaded,
    the strength set with fastlora, the samples drawn and featurised here."""
    from colorgan.evaluate import sample_batches
    from colorgan.metrics import kid
    from colorgan.metrics.features import FeatureNetwork, extract_features, folder_features

    net = FeatureNetwork(net_path)
    G = load_checkpoint(ckpt, tasks=[task], load_d=False)[0]
    shots = folder_features(shots_dir, net, G.size, use_cache=False, progress=False)
    out = {}
    for s in candidates:
        fastlora.set_strength(G, task, s)
        feats = extract_features(sample_batches(G, None if s == 0 else task, n, 50, 1.0), net, n=n,
                                 resolution=G.size, progress=False)
        out[s] = kid(feats, shots, n_subsets=100, subset_size=1000, seed=0)["mean"]
    return out


def test_strength_auto_keeps_the_fraction_nearest_the_shots(setup, tmp_path, tiny_net_path, monkeypatch, capsys):
    """--strength auto: once a task has trained, its samples at each candidate strength are scored by KID against
    its shots (a real TorchScript feature network here, a small one) and the lowest is kept, in both generators,
    the checkpoint, the state (a resumed run restores it) and the summary; what later tasks train is unchanged."""
    from colorgan.train import strength

    assert strength.pick({0.0: 2.0, 0.5: 1.0, 1.0: 1.0}) == 1.0  # ties: the larger strength
    assert strength.pick({0.0: 0.5, 0.5: 1.0, 1.0: 2.0}) == 0.0
    monkeypatch.setenv("COLORGAN_INCEPTION", str(tiny_net_path))
    monkeypatch.setattr(strength, "CANDIDATES", (0.0, 0.5))  # without 1: the pick must change the task
    out = tmp_path / "auto"
    summary = train(small_cfg(setup, iter=3, strength="auto"), out, options=OPTS)
    picked = summary["strength"]["tasks"]
    for task in ("a", "b"):
        want = _independent_shot_kids(out / "checkpoint", task, setup[task], tiny_net_path, (0.0, 0.5), 20)
        got = summary["strength"]["shot_kid"][task]
        assert {float(k): v for k, v in got.items()} == pytest.approx({k: 1e3 * v for k, v in want.items()}, rel=1e-5)
        assert picked[task] == min(sorted(want, reverse=True), key=want.get) in (0.0, 0.5)
        G = load_checkpoint(out / "checkpoint", tasks=[task], load_d=False)[0]
        assert fastlora.task_config(G, task).strength == picked[task]  # saved with the task
    text = (out / "train.log").read_text()
    assert "strength: task 'a' KID x 10^3 against its shots at strength 0: " in text and "keeps" in text
    assert load_state(out / "state/state.pt")["strengths"] == picked

    # the pick changes nothing the later task trains: the tensors equal a run kept at strength 1
    full = tmp_path / "full"
    assert train(small_cfg(setup, iter=3, strength=1), full, options=OPTS)["strength"]["tasks"] == {"a": 1, "b": 1}
    for task in ("a", "b"):
        ga = load_checkpoint(out / "checkpoint", tasks=[task], load_d=False)[0]
        gf = load_checkpoint(full / "checkpoint", tasks=[task], load_d=False)[0]
        assert all(torch.equal(x, y) for x, y in zip(adapter_tensors(ga, task).values(),
                                                       adapter_tensors(gf, task).values()))

    # stopped inside task b, resumed: task a keeps the strength picked before the stop (not re-picked)
    stopped = tmp_path / "stopped"
    train(small_cfg(setup, iter=3, strength="auto"), stopped,
          options=RunOptions(progress=False, device="cpu", stop_at=4))
    resumed = train(None, stopped, options=OPTS, resume=True)
    assert resumed["strength"]["tasks"] == picked
    G = load_checkpoint(stopped / "checkpoint", tasks=["a"], load_d=False)[0]
    assert fastlora.task_config(G, "a").strength == picked["a"]
    assert (stopped / "train.log").read_text().count("strength: task 'a' KID") == 1

    # a number, per task; the CLI prints what each task kept
    argv = ["train", "--ckpt", setup["ckpt"], "--tasks", f"a={setup['a']},b={setup['b']}", "--iter", "1",
            "--batch", "2", "--near-anchor", "0", "--no-progress", "--device", "cpu"]
    assert main([*argv, "--strength", "a=0.25,b=auto", "--out", str(tmp_path / "cli")]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("strength kept")]
    kept_b = _kept(tmp_path / "cli", "b")
    assert line == [f"strength kept (--strength a=0.25,b=auto): a 0.25, b {kept_b:g} (picked)"], line
    assert "strength: task 'a' keeps 0.25 of its effect (--strength)" in (tmp_path / "cli/train.log").read_text()

    # no network: every task keeps 1 and the log says why
    monkeypatch.delenv("COLORGAN_INCEPTION")
    monkeypatch.setattr("colorgan.metrics.features.installed_inception", lambda: None)
    monkeypatch.setenv("HOME", str(tmp_path))
    off = train(small_cfg(setup, iter=2, strength="auto"), tmp_path / "off", options=OPTS)
    assert off["strength"] == {"setting": "auto", "tasks": {"a": 1.0, "b": 1.0}, "shot_kid": {}}
    assert "strength pick skipped for task 'a': no Inception network installed" in \
        (tmp_path / "off/train.log").read_text()

    # refused where a task cannot keep less than all: one line through the CLI, no run folder
    assert main([*argv, "--method", "lfs", "--strength", "0.5", "--out", str(tmp_path / "lfs")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "strength below 1 (task 'a') needs adapters with an exact strength" in err[0], err
    assert not (tmp_path / "lfs").exists()
    for bad in ("2", "a=auto,c=0.5", "half"):
        with pytest.raises(ValueError, match="strength"):
            small_cfg(setup, strength=bad)
    saved = json.loads((out / "config.json").read_text())
    del saved["strength"]  # runs saved before the setting existed kept every task whole
    assert TrainConfig.from_dict(saved).strength == 1.0


def _kept(run, task):
    return json.loads((run / "summary.json").read_text())["strength"]["tasks"][task]


def test_summary_records_the_thread_counts(setup, tmp_path):
    """summary.json lists the CPU thread counts a run trained with, across resumes (results depend on them);
    a malformed list left by an earlier process is ignored."""
    out, n = tmp_path / "r", torch.get_num_threads()
    cfg = small_cfg(setup, tasks=f"a={setup['a']}", iter=4)
    threads = lambda: json.loads((out / "summary.json").read_text())["torch_threads"]  # noqa: E731
    try:
        torch.set_num_threads(1)
        train(cfg, out, options=RunOptions(progress=False, stop_at=1))
        assert threads() == [1]
        torch.set_num_threads(2)
        train(None, out, options=RunOptions(progress=False, stop_at=2), resume=True)
        assert threads() == [1, 2]
        summary = json.loads((out / "summary.json").read_text())
        (out / "summary.json").write_text(json.dumps({**summary, "torch_threads": [1, "x"]}))
        assert train(None, out, options=OPTS, resume=True)["finished"]
        assert threads() == [2]
    finally:
        torch.set_num_threads(n)


def test_ema_warmup(setup, tmp_path):
    from colorgan.train.ema import warmup_decay

    assert warmup_decay(0, 0.995) == pytest.approx(0.1) and warmup_decay(90, 0.995) == pytest.approx(0.91)
    assert warmup_decay(10 ** 6, 0.995) == 0.995
    assert all(warmup_decay(t, 0.995) <= warmup_decay(t + 1, 0.995) for t in range(3000))

    # with the warm-up the EMA adapters follow the trained ones closely after a few iterations; with a fixed
    # 0.995 they are still near their starting point (the identity)
    def lag(warmup: bool) -> float:
        out = tmp_path / f"w{int(warmup)}"
        train(small_cfg(setup, tasks=f"a={setup['a']}", iter=6, ema_warmup=warmup), out, options=OPTS)
        st = load_state(out / "state/state.pt")
        trained, ema = st["adapters"], st["adapters_ema"]
        num = sum((trained[k].double() - ema[k].double()).norm() ** 2 for k in trained if trained[k].is_floating_point())
        den = sum(trained[k].double().norm() ** 2 for k in trained if trained[k].is_floating_point())
        return float((num / den) ** 0.5)

    assert lag(True) < 0.5 * lag(False)
    # the CLI spelling, and runs saved before the option existed keep the fixed decay on resume
    rc = main(["train", "--ckpt", setup["ckpt"], "--tasks", f"a={setup['a']}", "--out", str(tmp_path / "cli"),
               "--iter", "1", "--batch", "2", "--no-ema-warmup", "--no-progress", "--device", "cpu"])
    assert rc == 0 and json.loads((tmp_path / "cli/config.json").read_text())["ema_warmup"] is False
    saved = json.loads((tmp_path / "w1/config.json").read_text())
    assert TrainConfig.from_dict(saved).ema_warmup is True
    del saved["ema_warmup"]
    assert TrainConfig.from_dict(saved).ema_warmup is False


@pytest.mark.parametrize("option, is_role", [
    ("mapping_lr_mul", lambda k: k.startswith("style.")),  # the mapping network is G.style
    ("style_lr_mul", lambda k: ".modulation." in k),  # the style affines
])
def test_lr_mul_speeds_up_its_role_adapters_only(setup, tmp_path, option, is_role):
    # one iteration from the same start: Adam's first step is about ±lr per element, so the role's adapters'
    # steps scale with the multiplier and every other adapter takes exactly the same step
    def trained(mul: float, iters: int = 1) -> dict[str, torch.Tensor]:
        out = tmp_path / f"m{mul:g}-{iters}"
        cfg = small_cfg(setup, tasks=f"a={setup['a']}", iter=iters, path_regularize=0, **{option: mul})
        train(cfg, out, options=OPTS)  # one G step (no path-length step)
        return {k: v.double() for k, v in load_state(out / "state/state.pt")["adapters"].items()
                if v.is_floating_point()}

    one, two, hundred = trained(1.0), trained(2.0), trained(100.0)
    role = [k for k in one if is_role(k)]
    others = [k for k in one if k not in role]
    assert role and others
    step = sum((two[k] - one[k]).norm() ** 2 for k in role) ** 0.5
    far = sum((hundred[k] - one[k]).norm() ** 2 for k in role) ** 0.5
    assert step > 0 and 90 < far / step < 100.5
    for k in others:
        torch.testing.assert_close(hundred[k], one[k], rtol=0, atol=1e-6, msg=lambda m: f"{k}: {m}")
    # 0: the role's adapters stay at their initial values (the identity) while the others train as with 1
    still, still2 = trained(0.0), trained(0.0, iters=2)
    assert all(torch.equal(still[k], still2[k]) for k in role)
    assert any(not torch.equal(still[k], one[k]) for k in role)
    for k in others:
        torch.testing.assert_close(still[k], one[k], rtol=0, atol=1e-6, msg=lambda m: f"{k}: {m}")
    assert any(not torch.equal(still2[k], still[k]) for k in others)
    with pytest.raises(ValueError, match=f"{option}: expected a finite number >= 0"):
        small_cfg(setup, **{option: -1})
    saved = json.loads((tmp_path / "m100-1/config.json").read_text())
    assert getattr(TrainConfig.from_dict(saved), option) == 100
    del saved[option]  # runs saved before the option existed trained with 1
    assert getattr(TrainConfig.from_dict(saved), option) == 1


def test_mapping_adapters_drop_trains_them_then_saves_the_identity(setup, tmp_path):
    # drop: the run trains exactly as keep (same steps for every adapter), then the saved task (and its samples)
    # have the base's mapping and the trained style and conv adapters
    def run(mode: str):
        out = tmp_path / mode
        train(small_cfg(setup, tasks=f"a={setup['a']}", iter=3, mapping_adapters=mode), out, options=OPTS)
        G = load_checkpoint(out / "checkpoint", tasks=["a"], load_d=False)[0]
        return out, G

    (_, keep), (out, drop) = run("keep"), run("drop")
    base = load_checkpoint(setup["ckpt"], load_d=False)[0]
    layers = dict(fastlora.adapted_layers(drop))
    kept_layers = dict(fastlora.adapted_layers(keep))
    roles = {name: m.role for name, m in layers.items()}
    assert {"mapping", "style", "conv"} <= set(roles.values())
    for name, m in layers.items():
        w, b = fastlora.merged_weights(m, "a")
        kw, kb = fastlora.merged_weights(kept_layers[name], "a")
        if roles[name] == "mapping":
            assert torch.equal(w, m.weight) and (b is None or torch.equal(b, m.bias)), name
            assert not torch.equal(kw, m.weight), name  # with keep they trained and are kept
        else:
            assert torch.equal(w, kw) and (b is None or torch.equal(b, kb)), name
    fastlora.set_task(drop, "a")
    fastlora.set_task(base, None)
    z = torch.randn(3, drop.style_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the mapping is the base's: same latents, same w
        torch.testing.assert_close(drop.style(z), base.style(z), rtol=0, atol=0)
    saved = json.loads((out / "config.json").read_text())
    assert TrainConfig.from_dict(saved).mapping_adapters == "drop"
    del saved["mapping_adapters"]  # runs saved before the option existed kept them
    assert TrainConfig.from_dict(saved).mapping_adapters == "keep"
    with pytest.raises(ValueError, match="mapping_adapters: expected keep, drop"):
        small_cfg(setup, mapping_adapters="off")


def test_mapping_adapters_per_task(setup, tmp_path):
    # one setting per task: a dropped, b kept; b's adapters are those of a run that keeps every task's (a task's
    # training does not depend on what the tasks before it chose)
    def run(spec: str):
        out = tmp_path / spec.replace("=", "-").replace(",", "_")
        train(small_cfg(setup, iter=3, mapping_adapters=spec), out, options=OPTS)
        return load_checkpoint(out / "checkpoint", tasks=["a", "b"], load_d=False)[0]

    mixed, kept = run("a=drop"), run("keep")
    mapping = [(n, m) for n, m in fastlora.adapted_layers(mixed) if m.role == "mapping"]
    assert mapping
    for name, m in mapping:
        assert torch.equal(fastlora.merged_weights(m, "a")[0], m.weight), name  # a: dropped
        assert not torch.equal(fastlora.merged_weights(m, "b")[0], m.weight), name  # b: kept
    for k, v in adapter_tensors(kept, "b").items():
        assert torch.equal(adapter_tensors(mixed, "b")[k], v), k


@pytest.mark.parametrize("option, role", [("style_lr_mul", "style"), ("mapping_lr_mul", "mapping")])
def test_per_task_lr_mul_applies_to_its_task_only(setup, tmp_path, option, role):
    # b=0: task b's adapters of that role stay at the identity; task a trains exactly as in a run with 1 everywhere
    # (a task's training depends only on its own settings)
    def run(spec):
        out = tmp_path / f"{option}-{spec}".replace("=", "-")
        train(small_cfg(setup, iter=3, **{option: spec}), out, options=OPTS)
        return load_checkpoint(out / "checkpoint", tasks=["a", "b"], load_d=False)[0]

    mixed, plain = run("b=0"), run(1.0)
    layers = [(n, m) for n, m in fastlora.adapted_layers(mixed) if m.role == role]
    assert layers
    for name, m in layers:
        assert torch.equal(fastlora.merged_weights(m, "b")[0], m.weight), name  # b: the role stayed at the identity
        assert not torch.equal(fastlora.merged_weights(m, "a")[0], m.weight), name  # a: trained
    for k, v in adapter_tensors(plain, "a").items():
        assert torch.equal(adapter_tensors(mixed, "a")[k], v), k
    assert any(not torch.equal(adapter_tensors(plain, "b")[k], v) for k, v in adapter_tensors(mixed, "b").items())


def test_per_task_settings():
    from colorgan.train.per_task import parse_per_task, weight_or_spec

    tasks = ["a", "b", "c"]

    def parse(spec, name="mapping_adapters"):
        return parse_per_task(name, spec, tasks, getattr(TrainConfig, name))

    assert parse("keep") == {"a": "keep", "b": "keep", "c": "keep"}
    assert parse("drop") == {"a": "drop", "b": "drop", "c": "drop"}
    assert parse("b=drop") == {"a": "keep", "b": "drop", "c": "keep"}
    assert parse("drop, a=keep") == {"a": "keep", "b": "drop", "c": "drop"}
    assert parse(30.0, "style_anchor") == {"a": 30.0, "b": 30.0, "c": 30.0}
    assert parse("b=30,c=1e1", "mapping_anchor") == {"a": 0.0, "b": 30.0, "c": 10.0}
    assert parse("5, a=0", "style_anchor") == {"a": 0.0, "b": 5.0, "c": 5.0}
    assert parse("b=0.3", "style_lr_mul") == {"a": 1.0, "b": 0.3, "c": 1.0}
    assert parse(0.0, "mapping_lr_mul") == {"a": 0.0, "b": 0.0, "c": 0.0}
    assert (weight_or_spec("3"), weight_or_spec(" a=3 ")) == (3.0, "a=3")
    for bad, name, msg in [("off", "mapping_adapters", "expected keep, drop, or TASK=VALUE"),
                           ("=drop", "mapping_adapters", "names no task"),
                           ("a=of", "mapping_adapters", "expected keep"),
                           ("d=drop", "mapping_adapters", "'d', which is not one of this run's tasks"),
                           ("a=drop,a=keep", "mapping_adapters", "'a' appears twice"),
                           ("keep,drop", "mapping_adapters", "more than one setting"),
                           ("a=-1", "style_anchor", "finite number >= 0"), ("nan", "mapping_anchor", ">= 0"),
                           ("a=x", "style_anchor", "expected a number"), ("d=3", "style_anchor", "'d', which is not")]:
        with pytest.raises(ValueError, match=msg):
            parse(bad, name)


def test_per_task_anchor_applies_to_its_task_only(setup, tmp_path):
    """--style-anchor TASK=W: the penalty is on while that task trains and off for the others."""
    with pytest.raises(ValueError, match="style_anchor names task 'zz'"):
        small_cfg(setup, style_anchor="zz=3")
    out = tmp_path / "r"
    summary = train(small_cfg(setup, iter=3, style_anchor="b=1e3"), out, options=OPTS)
    assert summary["finished"]
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    g_recs = [rec for rec in logged if "g" in rec and rec["step"] > 1]
    assert {rec["task"] for rec in g_recs} == {"a", "b"}, g_recs
    assert all(("style_anchor" in rec) == (rec["task"] == "b") for rec in g_recs), g_recs
    rc = main(["train", "--ckpt", setup["ckpt"], "--tasks", f"a={setup['a']}", "--out", str(tmp_path / "cli"),
               "--iter", "1", "--batch", "2", "--mapping-anchor", "a=3", "--no-progress", "--device", "cpu"])
    assert rc == 0 and json.loads((tmp_path / "cli/config.json").read_text())["mapping_anchor"] == "a=3"


def test_d_freeze_keeps_the_first_discriminator_layers(setup, tmp_path):
    from dataclasses import replace

    from colorgan.train.continual import trainable_d_params

    base_d = load_checkpoint(setup["ckpt"])[1]
    base = {k: v.clone() for k, v in base_d.state_dict().items()}
    n_layers = len(base_d.convs)
    for k in range(n_layers + 1):
        D = load_checkpoint(setup["ckpt"])[1]
        trained = {id(p) for p in trainable_d_params(D, k)}
        frozen = [n for n, p in D.named_parameters() if id(p) not in trained]
        assert all(n.startswith(tuple(f"convs.{i}." for i in range(k))) for n in frozen)
        assert all(not p.requires_grad for n, p in D.named_parameters() if n in frozen)
        assert (len(frozen) > 0) == (k > 0)
    with pytest.raises(ValueError, match="exceeds the discriminator"):
        trainable_d_params(base_d, n_layers + 1)
    with pytest.raises(ValueError, match="d_freeze must be >= 0"):
        small_cfg(setup, d_freeze=-1)
    # a run stopped mid-task: the frozen layers still hold the base's weights, the layers after them moved
    out = tmp_path / "fd"
    train(small_cfg(setup, tasks=f"a={setup['a']}", iter=6, d_freeze=2), out, options=replace(OPTS, stop_at=4))
    d = load_state(out / "state/state.pt")["d"]
    moved = {k: not torch.equal(d[k], base[k]) for k in base}
    assert not any(v for k, v in moved.items() if k.startswith(("convs.0.", "convs.1.")))
    assert any(v for k, v in moved.items() if k.startswith(("convs.2.", "final_")))
    rc = main(["train", "--ckpt", setup["ckpt"], "--tasks", f"a={setup['a']}", "--out", str(tmp_path / "cli"),
               "--iter", "1", "--batch", "2", "--d-freeze", str(n_layers + 1), "--no-progress", "--device", "cpu"])
    assert rc != 0 and not (tmp_path / "cli").exists()  # refused before the run folder is made


def test_conv_max_res_keeps_finer_conv_adapters_at_their_start(setup, tmp_path):
    # 16 px: conv_max_res 8 leaves the 16 px layers' conv adapters (convs 2-3, to_rgbs 1) untrained: two runs
    # at different learning rates end with them equal while coarse conv adapters differ (only some: after one
    # step a zero-initialised factor's partner is still at its start), and a run without the limit moves them
    def trained(tag: str, **kw) -> dict[str, torch.Tensor]:
        out = tmp_path / tag
        train(small_cfg(setup, tasks=f"a={setup['a']}", iter=1, path_regularize=0, **kw), out, options=OPTS)
        return {k: v.double() for k, v in load_state(out / "state/state.pt")["adapters"].items()
                if v.is_floating_point()}

    slow, fast, free = trained("s", conv_max_res=8), trained("f", conv_max_res=8, lr=0.004), trained("a")
    fine = [k for k in slow if k.startswith(("convs.2.conv.", "convs.3.conv.", "to_rgbs.1.conv."))
            and ".modulation." not in k]
    coarse = [k for k in slow if k.startswith(("conv1.conv.", "convs.0.conv.", "convs.1.conv.", "to_rgbs.0.conv."))
              and ".modulation." not in k]
    assert fine and coarse
    for k in fine:
        torch.testing.assert_close(fast[k], slow[k], rtol=0, atol=0, msg=lambda m: f"{k}: {m}")
    assert any(not torch.equal(fast[k], slow[k]) for k in coarse)
    assert any(not torch.equal(free[k], slow[k]) for k in fine)
    for bad in (2, 12):
        with pytest.raises(ValueError, match="conv_max_res must be 0 or a power of two"):
            small_cfg(setup, conv_max_res=bad)
