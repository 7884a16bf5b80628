"""colorgan convert: rosinality checkpoints and published CoLoR-GAN / LFS-GAN adapters give the
same outputs as the same weights run through an independent reference in the source layout."""
from __future__ import annotations

import argparse
import re

import pytest
import torch

import fastlora
from tests import ref_stylegan2 as ref
from colorgan import Discriminator, Generator, load_checkpoint
from colorgan.cli import main
from colorgan.convert import convert_adapters, convert_rosinality, infer_generator_config
from fastlora import ModulatedConv2d

CH = {4: 16, 8: 16, 16: 8, 32: 8}
STYLE = 16
TOL = dict(rtol=1e-4, atol=1e-4)
MODCONV = re.compile(r"(conv1|to_rgb1|convs\.\d+|to_rgbs\.\d+)\.conv\.weight")


def rosinality_g(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    G = Generator(32, STYLE, 2, channels=CH)
    sd = {}
    for k, v in G.state_dict().items():
        if k == "w_avg":
            continue
        v = v.clone()
        if k.endswith(("noise.weight", "activate.bias", "bias")) and not k.startswith("style."):
            v = torch.randn_like(v) * 0.3 + (1.0 if k.endswith("modulation.bias") else 0.0)
        if k.startswith("style.") and k.endswith("bias"):
            v = torch.randn_like(v)
        sd[k] = v.unsqueeze(0) if MODCONV.fullmatch(k) else v
    for j in range(3):
        sd[f"convs.{2 * j}.conv.blur.kernel"] = ref.fir_kernel(4)
        sd[f"to_rgbs.{j}.upsample.kernel"] = ref.fir_kernel(4)
    return sd


def rosinality_d(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    D = Discriminator(32, channels=CH)
    sd = {k: (torch.randn_like(v) * 0.2 if k.endswith("bias") else v.clone()) for k, v in D.state_dict().items()}
    for b in range(1, 4):
        sd[f"convs.{b}.conv2.0.kernel"] = ref.fir_kernel(1)
        sd[f"convs.{b}.skip.0.kernel"] = ref.fir_kernel(1)
    return sd


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    ckpt = {"g": rosinality_g(1), "g_ema": rosinality_g(2), "d": rosinality_d(3),
            "latent_avg": torch.randn(STYLE) * 0.1}
    torch.save(ckpt, d / "ffhq.pt")
    return d / "ffhq.pt", ckpt


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("conv") / "ckpt"
    convert_rosinality(source[0], out, with_g=True)
    return out


def test_inferred_architecture(source):
    cfg = infer_generator_config(source[1]["g_ema"])
    assert cfg["size"] == 32 and cfg["style_dim"] == STYLE and cfg["n_mlp"] == 2
    assert cfg["channels"] == CH


def test_converted_generator_matches_reference(source, converted):
    G, D, info = load_checkpoint(converted, load_g_train=True)
    ckpt = source[1]
    assert torch.equal(G.w_avg, ckpt["latent_avg"])
    z = torch.randn(4, STYLE)
    with torch.no_grad():
        for psi in (1.0, 0.7):
            want = ref.generator(ckpt["g_ema"], z, truncation=psi, latent_avg=ckpt["latent_avg"])
            torch.testing.assert_close(G(z, truncation=psi), want, **TOL)
        torch.testing.assert_close(info["g"](z), ref.generator(ckpt["g"], z), **TOL)
        x = torch.randn(4, 3, 32, 32)
        torch.testing.assert_close(D(x), ref.discriminator(ckpt["d"], x), **TOL)
    assert info["config"]["source"]["dropped_buffers"]


def test_base_g_option(source, tmp_path):
    convert_rosinality(source[0], tmp_path / "c", base="g", with_d=False, w_avg_samples=256)
    G, D, info = load_checkpoint(tmp_path / "c")
    assert D is None and info["config"]["source"]["generator_base"] == "g"
    z = torch.randn(2, STYLE)
    with torch.no_grad():
        torch.testing.assert_close(G(z), ref.generator(source[1]["g"], z), **TOL)
    assert not torch.isnan(G.w_avg).any()


def colorgan_adapters(G: Generator, rank: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rnd(*s):
        return torch.randn(*s, generator=g) * 0.3

    out = {}
    for i in range(1, G.n_mlp + 1):
        p = f"style.{i}.weight_modulation."
        out.update({p + "lora_A": rnd(STYLE, rank), p + "lora_B": rnd(STYLE, rank), p + "lora_bias": rnd(STYLE)})
    for name, m in G.named_modules():
        if isinstance(m, ModulatedConv2d):
            co, ci, k, _ = m.weight.shape
            p = f"{name}.modulation.weight_modulation."
            out.update({p + "lora_A": rnd(STYLE, rank), p + "lora_B": rnd(ci, rank), p + "lora_bias": rnd(ci)})
            p = f"{name}.weight_modulation."
            out.update({p + "lora_B": rnd(co, rank), p + "lora_B_inst": rnd(rank, rank, k * k),
                        p + "lora_A": rnd(ci, rank)})
    return out


def lfs_adapters(G: Generator, rank: int, seed: int, add: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rnd(*s, mean=0.0):
        return torch.randn(*s, generator=g) * 0.3 + mean

    out = {}
    linears = [f"style.{i}" for i in range(1, G.n_mlp + 1)]
    linears += [f"{n}.modulation" for n, m in G.named_modules() if isinstance(m, ModulatedConv2d)]
    for name in linears:
        lin = G.get_submodule(name)
        do, di = lin.weight.shape
        p = f"{name}.weight_modulation."
        out.update({p + "w_mul_in_dim": rnd(di, rank, mean=1), p + "w_mul_out_dim": rnd(do, rank, mean=1),
                    p + "b_mul": rnd(do, mean=1)})
        if add:
            out.update({p + "w_add_in_dim": rnd(di, rank), p + "w_add_out_dim": rnd(do, rank), p + "b_add": rnd(do)})
    for name, m in G.named_modules():
        if isinstance(m, ModulatedConv2d):
            co, ci, k, _ = m.weight.shape
            p = f"{name}.weight_modulation."
            out.update({p + "w_mul1_out_channel_wise": rnd(co, rank, mean=1),
                        p + "w_mul1_instance_wise": rnd(rank, rank, k * k, mean=1),
                        p + "w_mul2_in_channel_wise": rnd(ci, rank, mean=1)})
            if add:
                out.update({p + "w_add1_out_channel_bias": rnd(co, rank), p + "w_add1_instance_bias": rnd(k * k, rank),
                            p + "w_add2_in_channel_bias": rnd(ci, rank), p + "w_add2_instance_bias": rnd(k * k, rank)})
    return out


@pytest.mark.parametrize("compat,act", [("default", "both"), ("upstream", "both"), ("default", "none")])
def test_colorgan_adapters_reproduce_published_numerics(source, converted, tmp_path, compat, act):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(converted, ck)
    G0, _, _ = load_checkpoint(ck, load_d=False)
    tensors = colorgan_adapters(G0, rank=2, seed=5)
    torch.save({"g_ema": tensors}, tmp_path / "sketches_003000.pt")
    with pytest.warns(UserWarning, match="trained on") if compat == "default" else _nullcontext():
        convert_adapters(tmp_path / "sketches_003000.pt", ck, "sketches", act=act, compat=compat)
    G, _, info = load_checkpoint(ck, load_d=False)
    assert info["tasks"] == ["sketches"]
    cfg = fastlora.task_config(G, "sketches")
    assert (cfg.kind, cfg.rank, cfg.act, cfg.compat) == ("llora", 2, act, compat)
    fastlora.set_task(G, "sketches")
    z = torch.randn(3, STYLE)
    ad = ref.Adapters(tensors, "colorgan", alpha_conv=0.1, alpha_fc=4.0, act=act == "both")
    with torch.no_grad():
        torch.testing.assert_close(G(z), ref.generator(source[1]["g_ema"], z, ad), **TOL)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.mark.parametrize("add", [True, False])
def test_lfs_adapters_reproduce_published_numerics(source, converted, tmp_path, add):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(converted, ck)
    G0, _, _ = load_checkpoint(ck, load_d=False)
    tensors = lfs_adapters(G0, rank=2, seed=7, add=add)
    torch.save({"g_ema": tensors}, tmp_path / "babies.pt")
    with pytest.warns(UserWarning, match="trained on"):
        convert_adapters(tmp_path / "babies.pt", ck, "babies", act="inner")
    G, _, _ = load_checkpoint(ck, load_d=False)
    assert fastlora.task_config(G, "babies").kind == "left"
    fastlora.set_task(G, "babies")
    z = torch.randn(3, STYLE)
    with torch.no_grad():
        torch.testing.assert_close(G(z), ref.generator(source[1]["g_ema"], z, ref.Adapters(tensors, "lfs")), **TOL)


def test_adapters_that_do_not_fit_are_refused(converted, tmp_path):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(converted, ck)
    G0, _, _ = load_checkpoint(ck, load_d=False)
    tensors = colorgan_adapters(G0, rank=1, seed=1)
    tensors["convs.0.conv.weight_modulation.lora_A"] = torch.zeros(99, 1)
    del tensors["style.1.weight_modulation.lora_bias"]
    torch.save({"g_ema": tensors}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"(?s)missing.*style\.1\.bias.*wrong shape.*convs\.0\.conv\.A"), \
            pytest.warns(UserWarning):
        convert_adapters(tmp_path / "bad.pt", ck, "bad")
    G, _, _ = load_checkpoint(ck, load_d=False)
    with pytest.raises(KeyError):
        fastlora.set_task(G, "bad")


def test_mismatched_source_names_the_keys(source, tmp_path):
    ckpt = {k: dict(v) if isinstance(v, dict) else v for k, v in source[1].items()}
    del ckpt["g_ema"]["conv1.activate.bias"]
    ckpt["g_ema"]["extra.thing"] = torch.zeros(2)
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"(?s)missing.*conv1\.activate\.bias.*unexpected.*extra\.thing"):
        convert_rosinality(tmp_path / "bad.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    ckpt = dict(source[1])
    ckpt["g_ema"] = dict(ckpt["g_ema"], **{"to_rgbs.0.upsample.kernel": torch.ones(4, 4)})
    torch.save(ckpt, tmp_path / "blur.pt")
    with pytest.raises(ValueError, match="blur kernel"):
        convert_rosinality(tmp_path / "blur.pt", tmp_path / "out")


def test_pickled_objects_need_trust(source, tmp_path):
    ckpt = dict(source[1], args=argparse.Namespace(size=32))
    torch.save(ckpt, tmp_path / "with_args.pt")
    with pytest.raises(ValueError, match="trust"):
        convert_rosinality(tmp_path / "with_args.pt", tmp_path / "out")
    with pytest.warns(UserWarning, match="trusted source"):
        convert_rosinality(tmp_path / "with_args.pt", tmp_path / "out", trust_pickle=True, with_d=False)
    with pytest.raises(FileExistsError):
        convert_rosinality(tmp_path / "with_args.pt", tmp_path / "out", trust_pickle=True)


def test_cli_convert(source, tmp_path, capsys):
    assert main(["convert", "rosinality", str(source[0]), "--out", str(tmp_path / "c")]) == 0
    assert "32 px" in capsys.readouterr().out
    assert main(["convert", "rosinality", str(source[0]), "--out", str(tmp_path / "c")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", "rosinality", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "d")]) == 1
    assert "missing.pt" in capsys.readouterr().err
