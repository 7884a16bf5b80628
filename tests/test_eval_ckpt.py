"""colorgan eval --ckpt: generate fixed-seed samples per task and score them against the real sets."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import fastlora
from colorgan import Generator, save_checkpoint
from colorgan.cli import main
from colorgan.evaluate import evaluate_checkpoint, real_folders
from colorgan.generate import generate
from fastlora import AdapterConfig

CH = {4: 16, 8: 16, 16: 8}


class _Feat(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 3, stride=4, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.c(x)).mean((2, 3))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ev")
    torch.manual_seed(0)
    net = root / "feat.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_Feat().eval()).save(str(net))
    G = Generator(16, 16, 2, channels=CH)
    G.update_w_avg(64)
    fastlora.add_task(G, "a", AdapterConfig(rank=2))
    fastlora.add_task(G, "b", AdapterConfig(kind="lora", rank=1))
    with torch.no_grad():
        for t in ("a", "b"):
            for p in fastlora.task_parameters(G, t):
                p.add_(torch.randn_like(p) * 0.5)
    ckpt = root / "ck"
    save_checkpoint(ckpt, G)
    rng = np.random.default_rng(0)
    data = root / "data"
    for folder, n in (("source", 12), ("a/full", 12), ("a/train", 3), ("b/full", 12), ("b/train", 3)):
        (data / folder).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(data / folder / f"{i:03d}.png")
    return ckpt, data, net


def test_eval_ckpt_all_tasks_writes_json_and_matches_generate(setup, tmp_path):
    ckpt, data, net = setup
    out = tmp_path / "e.json"
    assert main(["eval", "--ckpt", str(ckpt), "--task", "base,all", "--real", str(data), "--inception", str(net),
                 "--n", "10", "--kid-subsets", "5", "--batch-size", "4", "--no-cache", "--no-progress",
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert sorted(res["tasks"]) == ["a", "b", "base"]
    for name, r in res["tasks"].items():
        assert r["n_fake"] == 10 and r["n_real"] == 12 and np.isfinite(r["fid"]) and np.isfinite(r["kid_mean"])
    assert res["tasks"]["a"]["fid"] != res["tasks"]["b"]["fid"]
    # the streamed samples are exactly the images `colorgan generate` writes for seeds 0..9
    gen = generate(ckpt, "a", "0-9", tmp_path / "g", progress=False)
    folder = evaluate_checkpoint(ckpt, "a", data, n=10, inception=net, kid_subsets=5, use_cache=False,
                                 progress=False, batch_size=4)
    from colorgan.metrics import evaluate_images

    ref = evaluate_images(tmp_path / "g" / "a", data / "a" / "full", inception=net, kid_subsets=5, use_cache=False,
                          progress=False)
    assert len(gen["files"]) == 10
    assert folder["tasks"]["a"]["fid"] == pytest.approx(ref["fid"], rel=1e-6, abs=1e-9)


def test_eval_ckpt_is_deterministic_and_errors_are_clear(setup, tmp_path):
    ckpt, data, net = setup
    kw = dict(n=6, inception=net, kid_subsets=3, use_cache=False, progress=False, batch_size=3)
    r1 = evaluate_checkpoint(ckpt, "b", data, **kw)
    r2 = evaluate_checkpoint(ckpt, "b", data, **kw)
    assert r1["tasks"]["b"]["fid"] == r2["tasks"]["b"]["fid"]
    with pytest.raises(KeyError, match="zzz"):
        evaluate_checkpoint(ckpt, "zzz", data, **kw)
    with pytest.raises(FileNotFoundError, match="no zzz/full"):
        real_folders(tmp_path, "zzz", None)
    assert real_folders(data, "base", None) == (data / "source", None)
    assert real_folders(data, "a", None) == (data / "a" / "full", data / "a" / "train")


def test_eval_ckpt_at_another_strength(setup, tmp_path, capsys):
    """--strength scores a task at another strength: at 0 its scores are the base's (the same images), at 1 the
    saved task's; the JSON records it; it is refused without --ckpt."""
    ckpt, data, net = setup
    out = tmp_path / "e.json"
    run = ["eval", "--ckpt", str(ckpt), "--real", str(data), "--inception", str(net), "--n", "8", "--kid-subsets", "3",
           "--batch-size", "4", "--no-cache", "--no-progress", "--out", str(out)]
    assert main(run + ["--task", "a,b", "--strength", "a=0,b=1"]) == 0
    assert "[a] at strength 0" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["strengths"] == {"a": 0.0, "b": 1.0}
    kw = dict(n=8, inception=net, kid_subsets=3, use_cache=False, progress=False, batch_size=4)
    base = evaluate_checkpoint(ckpt, "base", data / "a" / "full", **kw)["tasks"]["base"]
    saved = evaluate_checkpoint(ckpt, "b", data, **kw)["tasks"]["b"]
    assert res["tasks"]["a"]["fid"] == pytest.approx(base["fid"], rel=1e-6)
    assert res["tasks"]["b"]["fid"] == pytest.approx(saved["fid"], rel=1e-6)
    half = evaluate_checkpoint(ckpt, "a", data, strengths={"a": 0.5}, **kw)
    assert half["strengths"] == {"a": 0.5} and half["tasks"]["a"]["fid"] != pytest.approx(base["fid"], rel=1e-6)
    assert main(["eval", "--fake", str(data / "a" / "full"), "--real", str(data / "a" / "full"), "--inception",
                 str(net), "--strength", "0.5", "--no-cache", "--no-progress"]) == 1
    assert "--strength applies to --ckpt" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["color", "ewc"])
def test_forgetting_table_of_a_train_run(setup, tmp_path, method):
    from colorgan import Discriminator
    from colorgan.evaluate import evaluate_run, format_forgetting
    from colorgan.train.continual import TrainConfig, train
    from colorgan.train.pretrain import RunOptions

    ckpt, data, net = setup
    torch.manual_seed(1)
    G, D = Generator(16, 16, 2, channels=CH), Discriminator(16, channels=CH)
    base = save_checkpoint(tmp_path / "base", G, D)
    train(TrainConfig(ckpt=str(base), tasks=f"a={data / 'a' / 'train'},b={data / 'b' / 'train'}", method=method,
                      iter=2, batch=2, n_sample=2, sample_every=100, save_every=100, log_every=1,
                      fisher_batches=1, d_reg_every=4, g_reg_every=2, subspace_freq=2, n_anchors=2),
          tmp_path / "run", options=RunOptions(progress=False, device="cpu"))
    res = evaluate_run(tmp_path / "run", data, n=6, inception=net, kid_subsets=3, use_cache=False, progress=False,
                       batch_size=3)
    assert res["tasks"] == ["a", "b"] and list(res["after"]) == ["a", "b"]
    assert list(res["after"]["a"]) == ["a"] and list(res["after"]["b"]) == ["a", "b"]
    fid_a = [res["after"][t]["a"]["fid"] for t in ("a", "b")]
    if method == "color":  # one bank, frozen earlier adapters: task a is unchanged after task b
        assert fid_a[0] == fid_a[1]
    else:  # full fine-tuning: task a is rendered by the generator after b (a different network)
        assert fid_a[0] != fid_a[1]
    table = format_forgetting(res)
    assert table.splitlines()[1].split() == ["after", "\\", "task", "a", "b"]
    assert len(table.splitlines()[2].split()) == 2 and len(table.splitlines()[3].split()) == 3
