"""Markdown from a GPU-session folder: the full summary.md and the README's compact benchmark table.

Reads whatever step files the folder holds (a stopped session gives a partial summary); the step
tables reuse the benchmarks' own markdown (bench.layers, bench.e2e, bench.onnx).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

STEP_FILES = ("env", "tests", "warmup", "layers", "e2e", "onnx")
README_RANK, README_ACT = 1, "inner"   # the CoLoR-GAN default task (LLoRA rank 1, inner act)


def load(folder: Path) -> Dict[str, dict]:
    """The step documents present in `folder`, by step name."""
    out = {}
    for step in STEP_FILES:
        f = Path(folder) / f"{step}.json"
        if f.is_file():
            try:
                out[step] = json.loads(f.read_text())
            except ValueError:
                continue
    return out


def _f(v: Optional[float], fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def _env(data: Dict[str, dict]) -> dict:
    return data.get("env", {}).get("environment") or {}


def _ours(by: Dict[str, dict]) -> Optional[dict]:
    for name in ("ours", "ours-heuristic"):
        if by.get(name, {}).get("median_ms"):
            return by[name]
    return None


def layer_table(records: List[dict], rank: int = README_RANK, act: str = README_ACT) -> str:
    """Per layer: forward at the largest batch (ours ms, speedup over published, merged/ours, the CUDA-graph
    replay) and forward+backward at the smallest (ours ms, speedup over published and peft)."""
    ranks = sorted({r["rank"] for r in records if r["act"] == act})
    if ranks and rank not in ranks:
        rank = ranks[0]
    recs = [r for r in records if r["rank"] == rank and r["act"] == act]
    if not recs:
        return f"(no layer records at act {act})\n"
    batches = sorted({r["batch"] for r in recs})
    hi, lo = batches[-1], batches[0]
    groups: Dict[tuple, Dict[str, dict]] = {}
    for r in recs:
        groups.setdefault((r["layer"], r["batch"], r["mode"]), {})[r["method"]] = r
    layers = list(dict.fromkeys(r["layer"] for r in recs))
    dtype = recs[0]["dtype"]
    lines = [f"| layer | fwd b{hi}: ours ms | ×published | merged/ours | CUDA graph ms | fwd+bwd b{lo}: ours ms "
             f"| ×published | ×peft |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for layer in layers:
        fwd, fb = groups.get((layer, hi, "forward"), {}), groups.get((layer, lo, "fwd+bwd"), {})
        of, ob = _ours(fwd) or {}, _ours(fb) or {}
        graph = fwd.get("ours-graph", {}).get("median_ms")
        lines.append(f"| {layer} | {_f(of.get('median_ms'), '.4g')} | {_f(of.get('speedup_vs_published'), '.2f')} | "
                     f"{_f(of.get('speedup_vs_merged'), '.2f')} | {_f(graph, '.4g')} | "
                     f"{_f(ob.get('median_ms'), '.4g')} | {_f(ob.get('speedup_vs_published'), '.2f')} | "
                     f"{_f(ob.get('speedup_vs_peft'), '.2f')} |")
    return (f"Layers (rank {rank}, act {act}, {dtype}; speedup = published ms / ours ms; merged/ours < 1: the "
            f"pre-merged weight is faster):\n\n" + "\n".join(lines) + "\n")


def e2e_table(data: Dict[str, dict]) -> str:
    rows = []
    e2e = data.get("e2e", {}).get("records") or []
    by = {(r["kind"], r["method"]): r for r in e2e}

    def cell(kind, method, key, fmt):
        r = by.get((kind, method))
        if r is None:
            return "—"
        if r.get("median_ms") is None:
            return "n/a"
        return format(r[key], fmt)

    if e2e:
        gb = next((r["batch"] for r in e2e if r["kind"] == "generate"), "?")
        tb = next((r["batch"] for r in e2e if r["kind"] == "train"), "?")
        size = e2e[0].get("size")
        rows.append(f"| generator {size} px, batch {gb}: images/s | {cell('generate', 'ours', 'images_per_s', '.1f')} "
                    f"| {cell('generate', 'ours-graph', 'images_per_s', '.1f')} | "
                    f"{cell('generate', 'published', 'images_per_s', '.1f')} | "
                    f"{_f((by.get(('generate', 'ours')) or {}).get('speedup_vs_published'), '.2f')} |")
        rows.append(f"| training iteration {size} px, batch {tb}: ms | {cell('train', 'ours', 'median_ms', '.1f')} | — | "
                    f"{cell('train', 'published', 'median_ms', '.1f')} | "
                    f"{_f((by.get(('train', 'ours')) or {}).get('speedup_vs_published'), '.2f')} |")
    onnx = data.get("onnx", {})
    if onnx.get("rows"):
        b = max(r["batch"] for r in onnx["rows"])
        ips = {r["path"]: r.get("images_per_s") for r in onnx["rows"] if r["batch"] == b}
        cpu = {r["batch"]: r.get("images_per_s") for r in onnx["rows"] if r["path"] == "ort-cpu"}
        ort = ("onnxruntime CUDA " + _f(ips.get("ort-cuda"), ".1f") if ips.get("ort-cuda") else
               "onnxruntime CUDA n/a, CPU " + ", ".join(f"{_f(v, '.2f')} (batch {k})" for k, v in sorted(cpu.items())))
        rows.append(f"| ONNX export, batch {b}: images/s ({ort}; parity rel {_f(onnx['parity']['rel'], '.1e')}) | "
                    f"{_f(ips.get('torch-fused'), '.1f')} | — | {_f(ips.get('torch-eager'), '.1f')} (torch eager), "
                    f"{_f(ips.get('torch-merged'), '.1f')} (merged) | — |")
    if not rows:
        return ""
    return ("| end to end | ours | ours (CUDA graph) | published / PyTorch | ×published |\n"
            "|---|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n")


def tests_line(data: Dict[str, dict]) -> str:
    t = data.get("tests")
    if not t or "counts" not in t:
        return "Correctness pass: not run.\n"
    c = t["counts"]
    parts = [f"{c.get(k, 0)} {k}" for k in ("passed", "failed", "error", "skipped", "not run") if c.get(k)]
    return f"Correctness pass ({t.get('selected', 0)} selected GPU tests): {', '.join(parts) or 'none'}.\n"


def header(data: Dict[str, dict], folder: Path) -> str:
    e = _env(data)
    dry = data.get("env", {}).get("dry_run")
    return (f"{e.get('device', '?')}, {e.get('date', '?')}{' (dry run)' if dry else ''}: torch {e.get('torch')}, "
            f"triton {e.get('triton')}, CUDA {e.get('cuda')}, driver {e.get('driver')}; "
            f"`python -m bench gpu-session` ({Path(folder).name}).\n")


def readme_table(folder: Path, link: Optional[str] = None) -> str:
    """The README's benchmark section body from one session folder."""
    data = load(folder)
    layers = data.get("layers", {}).get("records") or []
    parts = [header(data, folder)]
    if link:
        parts.append(f"Full results: [{link}]({link}).\n")
    parts.append(layer_table(layers))
    e2e = e2e_table(data)
    if e2e:
        parts.append(e2e)
    parts.append(tests_line(data))
    return "\n".join(parts)


def _steps(data: Dict[str, dict]) -> str:
    env = data.get("env", {})
    est = {} if env.get("dry_run") else env.get("estimate", {}).get("steps_s", {})
    lines = ["| step | status | started s | wall s | deadline s | estimate s |", "|---|---|---:|---:|---:|---:|"]
    for step in STEP_FILES:
        d = data.get(step)
        if d is None:
            lines.append(f"| {step} | not run | — | — | — | {_f(est.get(step), '.0f')} |")
            continue
        lines.append(f"| {step} | {d.get('status')} | {_f(d.get('started_s'), '.0f')} | {_f(d.get('wall_s'), '.0f')} "
                     f"| {_f(d.get('deadline_s'), '.0f')} | {_f(est.get(step), '.0f')} |")
    return "\n".join(lines) + "\n"


def _ceilings(data: Dict[str, dict]) -> str:
    c = data.get("env", {}).get("ceilings") or {}
    if "tflops" not in c:
        return f"Ceilings: {c.get('skipped', 'not measured')}.\n"
    t = c["tflops"]
    return (f"Ceilings (measured): bf16 {t.get('bf16')} TFLOP/s, tf32 {t.get('tf32')}, fp32 {t.get('fp32')}; "
            f"device copy {c.get('gbps')} GB/s.\n")


def _features(data: Dict[str, dict]) -> str:
    feats = data.get("env", {}).get("features") or {}
    if not feats:
        return ""
    lines = ["| feature | available | how |", "|---|---|---|"]
    lines += [f"| {k} | {'yes' if v['available'] else 'no'} | {v['how']} |" for k, v in feats.items()]
    return "\n".join(lines) + "\n"


def _tests_detail(data: Dict[str, dict]) -> str:
    t = data.get("tests")
    if not t or "tests" not in t:
        return ""
    bad = [x for x in t["tests"] if x["outcome"] in ("failed", "error")]
    out = [tests_line(data).rstrip(), f"pytest {t.get('result')} (return code {t.get('returncode')}), "
                                      f"{t.get('workers')} worker(s)."]
    for x in bad:
        msg = (x.get("message") or "").strip().splitlines()
        out.append(f"- FAILED `{x['nodeid']}`: {' / '.join(msg[-3:])[:400]}")
    for x in t.get("collect_errors") or []:
        out.append(f"- collection error `{x['nodeid']}`: {x['message'].strip().splitlines()[-1][:300]}")
    not_run = [x["nodeid"] for x in t["tests"] if x["outcome"] == "not run"]
    if not_run:
        out.append(f"- not run ({len(not_run)}): " + ", ".join(f"`{n}`" for n in not_run[:20])
                   + (" ..." if len(not_run) > 20 else ""))
    return "\n".join(out) + "\n"


def _warmup(data: Dict[str, dict]) -> str:
    w = data.get("warmup")
    if not w:
        return "Compile warm-up: not run.\n"
    if w.get("status") == "skipped":
        return f"Compile warm-up: skipped ({w.get('reason')}).\n"
    if "jobs" not in w:
        return f"Compile warm-up: {w.get('status')} ({w.get('error')}).\n"
    errs = [r for r in w.get("records", []) if r.get("error")]
    return (f"Compile warm-up: {w['jobs_done']}/{w['jobs']} fused calls in {w['workers']} processes, {w['wall_s']} s "
            f"wall; compile time summed over calls {_f(w.get('compile_s_sum'), '.0f')} s; new cubins in the cache "
            f"{_f(w.get('cached_cubins_new'), 'd')}; JIT specialisations loaded {_f(w.get('jit_specialisations_sum'), 'd')}"
            f"; worker start {_f(w.get('worker_startup_s'), '.1f')} s."
            + (f" Errors: {len(errs)} (first: {errs[0]['error'][:200]})" if errs else "") + "\n")


def summary(folder: Path, brief: bool = False) -> str:
    """summary.md of a session folder (`brief`: the parts worth printing at the end of a run)."""
    from bench import e2e as e2e_mod
    from bench import layers as layers_mod
    from bench import onnx as onnx_mod

    data = load(folder)
    parts = [f"# GPU session: {header(data, folder)}", _steps(data), _ceilings(data), tests_line(data)
             if brief else _tests_detail(data), _warmup(data)]
    lay = data.get("layers", {})
    if lay.get("records"):
        if lay["meta"].get("stopped_early"):
            parts.append(f"Layer step: {lay['meta']['stopped_early'][:300]}\n")
        parts.append(layer_table(lay["records"]))
    e2e = e2e_table(data)
    if e2e:
        parts.append(e2e)
    for step in ("tests", "warmup", "layers", "e2e", "onnx"):
        d = data.get(step, {})
        if d.get("status") == "error":
            parts.append(f"Step {step} failed: {d.get('error')}\n")
    if brief:
        return "\n".join(parts)
    parts += ["## Features\n", _features(data)]
    if data.get("e2e", {}).get("records"):
        parts.append(e2e_mod.markdown(data["e2e"]["records"], {**_env(data), **data["e2e"]["meta"]}))
    if data.get("onnx", {}).get("rows"):
        parts.append(onnx_mod.markdown(data["onnx"]))
    if lay.get("records"):
        parts.append(layers_mod.markdown(lay["records"], {**_env(data), "timing": lay["meta"].get("timing")}))
    plan = data.get("env", {}).get("plan") or {}
    if plan.get("notes"):
        parts.append("Notes:\n" + "\n".join(f"- {n}" for n in plan["notes"]) + "\n")
    return "\n".join(parts)
