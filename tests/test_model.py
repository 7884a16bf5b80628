"""colorgan.Generator / Discriminator: architecture, parameter counts (closed forms), adapters."""
from __future__ import annotations

import math

import pytest
import torch

import fastlora
from colorgan import Discriminator, Generator
from colorgan.checkpoint import parameter_report
from colorgan.layers import channel_table
from fastlora import AdapterConfig, ModulatedConv2d

CH = {4: 16, 8: 16, 16: 8, 32: 8}
D_STYLE = 16


def tiny(**kw) -> Generator:
    torch.manual_seed(0)
    return Generator(32, D_STYLE, 2, channels=CH, **kw)


def modconvs(size, ch):
    """(C_in, C_out, k) of every modulated conv, in the rosinality order."""
    out = [(ch[4], ch[4], 3), (ch[4], 3, 1)]
    c = ch[4]
    for i in range(3, int(math.log2(size)) + 1):
        o = ch[2 ** i]
        out += [(c, o, 3), (o, o, 3), (o, 3, 1)]
        c = o
    return out


def g_params(size, D, n_mlp, ch):
    """Closed form: mapping + const input + per modulated conv (kernel, affine, bias/noise)."""
    total = n_mlp * (D * D + D) + ch[4] * 16
    for ci, co, k in modconvs(size, ch):
        total += co * ci * k * k + D * ci + ci + (co + 1 if k == 3 else 3)
    return total


def d_params(size, ch):
    total = 3 * ch[size] + ch[size]
    res = size
    while res > 4:
        ci, co = ch[res], ch[res // 2]
        total += ci * ci * 9 + ci + co * ci * 9 + co + co * ci
        res //= 2
    c4 = ch[4]
    return total + c4 * (ch[4] + 1) * 9 + c4 + c4 * 16 * c4 + c4 + c4 + 1


def adapter_params(cfg: AdapterConfig, size, D, n_mlp, ch):
    """Closed form of one task's stored adapter values."""
    r = cfg.rank

    def linear(d_in, d_out):
        if cfg.form(conv=False) == "left":
            return 2 * r * (d_in + d_out) + 2 * d_out
        return r * (d_in + d_out) + (d_out if cfg.bias_offset else 0)

    def conv(ci, co, k):
        if cfg.form(conv=True) == "llora":
            return r * (ci + co) + r * r * k * k
        if cfg.form(conv=True) == "lora":
            return r * (ci * k * k + co)
        return 2 * r * co + r * r * k * k + 2 * r * ci + 2 * k * k * r

    total = n_mlp * linear(D, D)
    for ci, co, k in modconvs(size, ch):
        total += linear(D, ci) + conv(ci, co, k)
    return total


def test_channel_table_is_rosinalitys():
    assert channel_table(256, 2) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128}
    assert channel_table(1024, 1)[64] == 256 and channel_table(1024, 2)[1024] == 32


def test_parameter_counts_match_closed_forms():
    G, D = tiny(), Discriminator(32, channels=CH)
    assert sum(p.numel() for p in G.parameters()) == g_params(32, D_STYLE, 2, CH)
    assert sum(p.numel() for p in D.parameters()) == d_params(32, CH)
    # the published 256 px / cm 2 architecture (docs/upstream_notes.md: 30,034,338 and 28,864,129)
    G256 = Generator(256)
    ch = channel_table(256, 2)
    n = sum(p.numel() for p in G256.parameters())
    assert n == g_params(256, 512, 8, ch) == 30_034_338
    assert len(list(fastlora.adapted_layers(G256))) == 8 + 20 + 20
    fastlora.add_task(G256, "t", AdapterConfig.upstream())
    assert fastlora.count_parameters(G256, "t")["stored"] == 54_161  # published rank-1 CoLoR-GAN adapters
    del G256
    assert sum(p.numel() for p in Discriminator(256).parameters()) == d_params(256, ch) == 28_864_129


@pytest.mark.parametrize("cfg", [AdapterConfig(), AdapterConfig(rank=3, act="none"), AdapterConfig(kind="lora", rank=2),
                                 AdapterConfig(kind="left", rank=2), AdapterConfig(rank=2, bias_offset=False),
                                 AdapterConfig(kind="left-linear", rank=2), AdapterConfig(kind="left-conv", rank=2),
                                 AdapterConfig.upstream(rank=2)])
def test_adapter_counts_identity_and_training(cfg):
    G = tiny()
    with torch.no_grad():  # trained-looking biases (LeFT's b_mul gets gradient ∝ the base bias)
        for n, p in G.named_parameters():
            if n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    G.update_w_avg(256)
    z = torch.randn(2, D_STYLE)
    base = G(z, truncation=0.8)
    fastlora.add_task(G, "t", cfg)
    fastlora.freeze_base(G)
    rep = parameter_report(G)
    assert rep["tasks"]["t"]["stored"] == rep["tasks"]["t"]["trainable"] == adapter_params(cfg, 32, D_STYLE, 2, CH)
    assert rep["generator"] == g_params(32, D_STYLE, 2, CH)
    fastlora.set_task(G, "t")
    out = G(z, truncation=0.8)
    if cfg.compat == "upstream":
        assert (out - base).abs().max() > 1e-3  # published bias offset of 1: not the identity
        return
    torch.testing.assert_close(out, base, rtol=0, atol=1e-5)  # LeFT: products of 1/sqrt(r) round
    # every adapter tensor trains: after one SGD step all of them have a non-zero gradient
    # (LoRA's A, like LLoRA's B/B_inst in fastlora's default, only once the zero factor has moved)
    target = torch.randn_like(base)
    opt = torch.optim.SGD(fastlora.task_parameters(G, "t"), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        (G(z, truncation=0.8) - target).square().mean().backward()
        opt.step()
    dead = [n for n, p in fastlora.task_state_dict(G, "t").items()
            if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"adapter tensors without gradient: {dead[:5]}"
    assert all(p.grad is None for p in fastlora.base_parameters(G))


def test_llora_inner_relu_never_dead_on_torgb():
    """With C_out=3, k=1 a random-sign init could make relu(B·B_inst) zero on a whole ToRGB layer."""
    dead = 0
    for seed in range(20):
        torch.manual_seed(seed)
        G = Generator(32, D_STYLE, 2, channels=CH)
        fastlora.add_task(G, "t", AdapterConfig())
        for _, m in fastlora.adapted_layers(G):
            a = m.adapters["t"]
            if hasattr(a, "B_inst"):
                dead += int(not (torch.einsum("om,jmt->jot", a.B, a.B_inst) > 0).any())
    assert dead == 0


def test_alpha_routing():
    G = tiny()
    fastlora.add_task(G, "fix", AdapterConfig(alpha_conv=0.1, alpha_linear=4.0))
    fastlora.add_task(G, "pub", AdapterConfig.upstream())
    style = G.convs[0].conv.modulation
    assert style.adapters["fix"].alpha == 4.0 and style.adapters["pub"].alpha == 0.1
    assert G.style[1].adapters["pub"].alpha == 4.0 and G.convs[0].conv.adapters["fix"].alpha == 0.1


def test_mapping_synthesis_truncation_and_noise():
    G = tiny()
    z = torch.randn(3, D_STYLE)
    with torch.no_grad():
        w = G.mapping(z)
        torch.testing.assert_close(G(z), G.synthesis(w))
        wplus = w[:, None].repeat(1, G.n_latent, 1)
        torch.testing.assert_close(G(wplus, input_is_latent=True), G.synthesis(w))
        img, lat = G(z, return_latents=True)
        assert lat.shape == (3, G.n_latent, D_STYLE)
        with pytest.raises(ValueError, match="w_avg"):
            G(z, truncation=0.5)
        G.update_w_avg(512)
        center = G.w_avg.expand(3, -1)
        torch.testing.assert_close(G(z, truncation=0.0), G.synthesis(center))
        for m in G.modules():
            if hasattr(m, "noise") and hasattr(m.noise, "weight"):
                m.noise.weight.fill_(0.5)
        assert not torch.equal(G(z, noise_mode="random"), G(z, noise_mode="random"))
        assert not torch.equal(G(z, noise_mode="none"), G(z))
        mixed = G([z, z.flip(0)], inject_index=3)
        assert mixed.shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match=r"z must be \[N, 16\]"):
        G(torch.randn(2, 5))
    with pytest.raises(ValueError, match="image size"):
        Generator(48)


def test_per_sample_tasks_match_single_task_renders():
    G = tiny()
    for name, seed in (("a", 1), ("b", 2)):
        fastlora.add_task(G, name, AdapterConfig(kind="llora", rank=2))
        with torch.no_grad():
            for p in fastlora.task_parameters(G, name):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.2)
    z = torch.randn(3, D_STYLE)
    singles = []
    with torch.no_grad():
        for t in (None, "a", "b"):
            fastlora.set_task(G, t)
            singles.append(G(z))
        fastlora.set_task(G, [None, "a", "b"])
        ids = torch.tensor([0, 1, 2])
        mixed = G(z, task_ids=ids)
    for i in range(3):
        torch.testing.assert_close(mixed[i], singles[i][i], rtol=1e-5, atol=1e-5)
    assert (singles[1] - singles[0]).abs().max() > 1e-3


def test_discriminator_patch_heads_and_optional_adapters():
    D = Discriminator(32, channels=CH, patch_heads=True)
    x = torch.randn(4, 3, 32, 32)
    assert D(x).shape == (4, 1)
    assert [tuple(D(x, patch=i).shape) for i in range(D.num_patch_heads)] == [(4, 1, 32, 32), (4, 1, 16, 16),
                                                                              (4, 1, 16, 16)]
    assert D(torch.randn(6, 3, 32, 32)).shape == (6, 1)  # batch not divisible by 4
    with pytest.raises(ValueError, match="patch head index"):
        D(x, patch=5)
    with pytest.raises(ValueError, match="no adaptable"):
        fastlora.add_task(D, "t", AdapterConfig())
    # 256 px: the four published maps (32, 32, 16, 16) come from convs[3].conv2, convs[4].conv1/conv2, convs[5].conv1
    assert [(b, w) for b, w, _ in Discriminator(256).patch_sources] == [(3, "conv2"), (4, "conv1"), (4, "conv2"),
                                                                       (5, "conv1")]
    Da = Discriminator(32, channels=CH, adapters=True)
    before = Da(x)
    fastlora.add_task(Da, "t", AdapterConfig())
    fastlora.set_task(Da, "t")
    torch.testing.assert_close(Da(x), before)
    paths = [p for p, _ in fastlora.adapted_layers(Da)]
    assert paths and all(p.startswith(("convs.", "final_conv.")) for p in paths)
