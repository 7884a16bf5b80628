"""Per-task ONNX export: parity with the unmerged PyTorch generator in onnxruntime (CPU provider),
graph form, file handling (one file per task, atomic writes, clean failures) and rendering."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import fastlora
from colorgan import Generator, save_checkpoint
from colorgan.cli import main as cli
from export import (TOLERANCES, ExportError, ExportGenerator, export_checkpoint, export_generator, make_session,
                    reference_forward, run_session)
from export.api import errors

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

KINDS = ("lora", "llora", "left", "left-linear", "left-conv")
CHANNELS = {4: 16, 8: 16, 16: 8}
# (input, psi, noise): every pair of option values appears for every adapter kind
COMBOS = [("z", False, "const"), ("z", True, "input"), ("w", False, "input"), ("w", True, "const")]



@pytest.fixture(scope="module")
def G() -> Generator:
    """A 16 px generator with non-zero noise strengths and biases and one randomised task per adapter kind."""
    torch.manual_seed(0)
    g = Generator(16, style_dim=16, n_mlp=2, channels=CHANNELS).eval()
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.4)
            elif name.endswith("activate.bias") or (name.startswith("to_rgb") and name.endswith(".bias")):
                p.normal_(0, 0.2)
    g.update_w_avg(n=512)
    for kind in KINDS:
        fastlora.add_task(g, kind, fastlora.AdapterConfig(kind=kind, rank=2))
        with torch.no_grad():
            for p in fastlora.task_parameters(g, kind):
                p.add_(torch.randn_like(p) * 0.3)
    return g


@pytest.fixture(scope="module")
def ckpt(G, tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "ck", G)


def _inputs(E: ExportGenerator, batch: int, seed: int):
    return E.example_inputs(batch, torch.Generator().manual_seed(seed), psi=0.6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("input,psi,noise", COMBOS)
def test_parity_per_kind_and_option(G, tmp_path, kind, input, psi, noise):
    path = tmp_path / f"{kind}.onnx"
    res = export_generator(G, kind, path, input=input, psi=psi, noise=noise, batches=(1, 5))
    assert path.is_file() and res.size_bytes == path.stat().st_size
    assert res.rel <= TOLERANCES["fp32"].rel and res.providers[0] == "CPUExecutionProvider"
    # independently of the export's own check: batch 1 and batch 5 from the same file
    session = make_session(path, "cpu")
    E = ExportGenerator(G, kind, input=input, psi_input=psi, noise=noise)
    for batch in (1, 5):
        x = _inputs(E, batch, seed=100 + batch)
        ref = reference_forward(G, kind, x, input=input, psi_input=psi, noise=noise)
        out = run_session(session, x)
        assert out.shape == (batch, 3, 16, 16)
        max_abs, rel = errors(out, ref)
        assert rel < 1e-5 and max_abs < 1e-4, (batch, max_abs, rel)
        # the task really changes the image (the merge is not a no-op)
        base = reference_forward(G, None, x, input=input, psi_input=psi, noise=noise)
        assert errors(out, base)[1] > 1e-2


@pytest.mark.parametrize("kind", ("lora", "llora", "left-linear"))
def test_a_task_kept_at_half_strength_exports_at_that_strength(G, tmp_path, kind):
    """A task keeping half its effect (`colorgan train --strength`, `fastlora.set_strength`) is exported with that
    strength merged in: the file matches the unmerged generator at 0.5 and differs from the full task and the base."""
    import copy

    g = copy.deepcopy(G)
    fastlora.set_strength(g, kind, 0.5)
    path = tmp_path / f"{kind}-half.onnx"
    export_generator(g, kind, path, input="z", psi=False, noise="const", batches=(2,))
    x = _inputs(ExportGenerator(g, kind, input="z", psi_input=False, noise="const"), 2, seed=7)
    out = run_session(make_session(path, "cpu"), x)
    half, full, base = (reference_forward(m, t, x, input="z", psi_input=False, noise="const")
                        for m, t in ((g, kind), (G, kind), (G, None)))
    max_abs, rel = errors(out, half)
    assert rel < 1e-5 and max_abs < 1e-4, (max_abs, rel)
    assert errors(out, full)[1] > 1e-3 and errors(out, base)[1] > 1e-3


def test_cli_export_at_another_strength(G, ckpt, tmp_path, capsys):
    """`colorgan export --strength`: the task merged at that strength (0: the base's output, ½: the unmerged
    generator at ½), recorded in the file's metadata; the checkpoint's saved strength unchanged."""
    import copy

    saved = (ckpt / "tasks" / "llora" / fastlora.bank.CONFIG_FILE).read_bytes()
    out = tmp_path / "o"
    assert cli(["export", "--ckpt", str(ckpt), "--task", "llora,lora", "--out", str(out),
                "--strength", "llora=0,lora=0.5"]) == 0
    assert cli(["export", "--ckpt", str(ckpt), "--task", "lora", "--out", str(tmp_path / "full.onnx")]) == 0
    capsys.readouterr()
    meta = {f: {p.key: p.value for p in onnx.load(str(f)).metadata_props}
            for f in (out / "llora.onnx", out / "lora.onnx", tmp_path / "full.onnx")}
    assert [m["colorgan.strength"] for m in meta.values()] == ["0", "0.5", "1"]
    half = copy.deepcopy(G)
    fastlora.set_strength(half, "lora", 0.5)
    x = _inputs(ExportGenerator(G, "lora", input="z", psi_input=False, noise="const"), 2, seed=3)
    for file, model, task in ((out / "llora.onnx", G, None), (out / "lora.onnx", half, "lora")):
        ref = reference_forward(model, task, x, input="z", psi_input=False, noise="const")
        max_abs, rel = errors(run_session(make_session(file, "cpu"), x), ref)
        assert rel < 1e-5 and max_abs < 1e-4, (file, max_abs, rel)
    full = reference_forward(G, "lora", x, input="z", psi_input=False, noise="const")
    assert errors(run_session(make_session(out / "lora.onnx", "cpu"), x), full)[1] > 1e-3
    assert (ckpt / "tasks" / "llora" / fastlora.bank.CONFIG_FILE).read_bytes() == saved
    assert cli(["export", "--ckpt", str(ckpt), "--task", "left", "--out", str(tmp_path / "l.onnx"),
                "--strength", "0.5"]) == 1
    assert "not available for kind 'left'" in capsys.readouterr().err and not (tmp_path / "l.onnx").exists()


def test_wplus_input_and_shared_noise(G, tmp_path):
    """w+ input; a single noise map [1, 1, r, r] broadcasts over the batch."""
    path = tmp_path / "wplus.onnx"
    export_generator(G, "llora", path, input="wplus", noise="input", batches=(2,))
    E = ExportGenerator(G, "llora", input="wplus", noise="input")
    x = list(_inputs(E, 3, seed=5))
    x[1:] = [t[:1] for t in x[1:]]
    ref = reference_forward(G, "llora", [x[0]] + [t.expand(3, -1, -1, -1) for t in x[1:]], input="wplus",
                            psi_input=False, noise="input")
    assert errors(run_session(make_session(path), x), ref)[1] < 1e-5


def test_fp16_parity(G, tmp_path):
    path = tmp_path / "half.onnx"
    res = export_generator(G, "left", path, psi=True, dtype="fp16", batches=(1, 5))
    assert res.dtype == "fp16" and res.rel <= TOLERANCES["fp16"].rel
    init = onnx.load(str(path)).graph.initializer
    assert {onnx.TensorProto.FLOAT16} == {t.data_type for t in init if len(t.dims) >= 2}
    fp32 = export_generator(G, "left", tmp_path / "full.onnx", psi=True, batches=(1,))
    assert res.size_bytes < fp32.size_bytes


def _producers(graph):
    const = {t.name for t in graph.initializer}
    const |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    changed = True
    while changed:  # Identity / Cast / Transpose of constants are constants too
        changed = False
        for n in graph.node:
            if n.op_type in ("Identity", "Cast", "Transpose") and n.input[0] in const and n.output[0] not in const:
                const.add(n.output[0])
                changed = True
    return const


def test_graph_is_plain(G, tmp_path):
    path = tmp_path / "g.onnx"
    export_generator(G, "lora", path, psi=True, noise="input", batches=(1,))
    model = onnx.load(str(path))
    g = model.graph
    ops = {n.op_type for n in g.node}
    assert not {o for o in ops if o.startswith("Random")} and not ops & {"Loop", "If", "Scan"}
    const = _producers(g)
    convs = [n for n in g.node if n.op_type in ("Conv", "ConvTranspose")]
    assert convs and all(n.input[1] in const for n in convs), "every conv kernel must be a constant"
    for n in convs:  # groups are 1 or a fixed channel count (depthwise FIR), never the batch
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        assert group in (1, 3) + tuple(CHANNELS.values())
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in g.input}
    assert shapes["z"] == ["batch", 16] and shapes["psi"] == [1] and shapes["noise_0"][0] == "noise_batch"
    out = [d.dim_param or d.dim_value for d in g.output[0].type.tensor_type.shape.dim]
    assert g.output[0].name == "image" and out == ["batch", 3, 16, 16]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["colorgan.task"] == "lora" and meta["colorgan.noise"] == "input"


def test_task_all_writes_one_distinct_file_per_task(ckpt, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert cli(["export", "--ckpt", str(ckpt), "--task", "all", "--out", str(out), "--psi"]) == 0
    files = sorted(out.iterdir())
    assert [f.name for f in files] == sorted(f"{k}.onnx" for k in KINDS)
    blobs = [f.read_bytes() for f in files]
    assert len(set(blobs)) == len(blobs)
    z = {"z": np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32), "psi": np.array([1.0], np.float32)}
    images = [make_session(f).run(["image"], z)[0] for f in files]
    assert all(np.abs(a - b).max() > 1e-3 for i, a in enumerate(images) for b in images[i + 1:])
    text = capsys.readouterr().out
    assert "CPUExecutionProvider" in text and "rel" in text and "task adapters" in text and "MB ONNX" in text
    # the base, as a single file path
    res = export_checkpoint(ckpt, "base", tmp_path / "base.onnx", batches=(1,))
    assert res[0].task == "base" and (tmp_path / "base.onnx").is_file()


def _leftovers(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_unknown_task_fails_cleanly(G, ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(KeyError, match="lora.*llora.*left"):
        export_checkpoint(ckpt, "nope", out / "x.onnx")
    assert cli(["export", "--ckpt", str(ckpt), "--task", "nope", "--out", str(out / "x.onnx")]) == 1
    assert "unknown task 'nope'" in capsys.readouterr().err
    with pytest.raises(KeyError, match="nope"):
        export_generator(G, "nope", out / "y.onnx")
    assert _leftovers(tmp_path) == []


def test_unwritable_path_and_existing_file(G, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError, match="cannot write"):
        export_generator(G, "lora", blocker / "sub" / "x.onnx", batches=(1,))
    assert _leftovers(tmp_path) == ["file.txt"] and blocker.read_text() == "not a folder"
    existing = tmp_path / "x.onnx"
    existing.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_generator(G, "lora", existing, batches=(1,))
    assert existing.read_bytes() == b"keep"
    with pytest.raises(FileExistsError, match="colorgan did not write it"):  # --overwrite replaces only its own files
        export_generator(G, "lora", existing, batches=(1,), overwrite=True)
    assert existing.read_bytes() == b"keep"
    existing.unlink()
    export_generator(G, "lora", existing, batches=(1,))
    first = existing.read_bytes()
    export_generator(G, "llora", existing, batches=(1,), overwrite=True)  # an earlier export is replaced
    assert existing.read_bytes() != first
    assert _leftovers(tmp_path) == ["file.txt", "x.onnx"]


def test_failed_parity_leaves_nothing(G, tmp_path, monkeypatch):
    from export import api

    monkeypatch.setitem(api.TOLERANCES, "fp16", api.Tolerance(rel=1e-9, max_abs=1e-9))
    target = tmp_path / "new" / "deep" / "x.onnx"
    with pytest.raises(ExportError, match="beyond the fp16 limits"):
        export_generator(G, "llora", target, dtype="fp16", batches=(1,))
    assert _leftovers(tmp_path) == []  # no temp file, no file, not even the folders it created


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on a machine without a GPU")
def test_cuda_request_without_gpu_is_an_error(G, tmp_path):
    path = tmp_path / "c.onnx"
    with pytest.raises(ExportError, match="CUDA was requested but onnxruntime fell back"):
        export_generator(G, "lora", path, device="cuda", batches=(1,))
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("noise", ["const", "input"])
def test_onnx_generate_matches_colorgan_generate(ckpt, tmp_path, noise):
    f = tmp_path / "llora.onnx"
    export_checkpoint(ckpt, "llora", f, psi=True, noise=noise, batches=(1,))
    assert cli(["onnx-generate", "--onnx", str(f), "--seeds", "0-2", "--outdir", str(tmp_path / "a"), "--grid",
                "--trunc", "0.7", "--noise", "random"]) == 0
    assert cli(["generate", "--ckpt", str(ckpt), "--task", "llora", "--seeds", "0-2", "--outdir",
                str(tmp_path / "b"), "--trunc", "0.7", "--noise", "random" if noise == "input" else "const",
                "--no-progress"]) == 0
    from PIL import Image

    for s in range(3):
        a = np.asarray(Image.open(tmp_path / "a" / "llora" / f"seed{s:04d}.png"), dtype=int)
        b = np.asarray(Image.open(tmp_path / "b" / "llora" / f"seed{s:04d}.png"), dtype=int)
        assert np.abs(a - b).max() <= 1
    assert Image.open(tmp_path / "a" / "grid.png").size == (3 * 16, 16)
