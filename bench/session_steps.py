"""The steps of the GPU session (bench.session), each `step_<name>(ctx, deadline) -> payload` reusing the
benchmark modules: bench.common (environment, ceilings, timing), bench.layers / bench.methods (the layer
harness), bench.e2e (models, training iteration, generation), bench.onnx (export and onnxruntime rows),
bench.warmup and bench.session_tests. A payload may carry "status" ("partial", "skipped"); deadlines are
time.monotonic() values.
"""
from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from bench import common
from bench.session_runner import FILES, PLOT, Session, log


@dataclass
class Context:
    session: Session
    channels_last: str = "auto"
    features: Dict[str, Any] = field(default_factory=dict)

    @property
    def plan(self):
        return self.session.plan

    @property
    def dev(self) -> torch.device:
        return self.session.dev

    def feature(self, name: str):
        if not self.features:
            from bench import features

            self.features = features.detect(self.dev)
        return self.features[name]

    def use_channels_last(self) -> bool:
        return self.channels_last == "on" or (self.channels_last == "auto" and self.feature("channels_last").available)


def environment(session: Session) -> dict:
    return common.environment(session.dev, session.command)


def _workers(wanted: int) -> int:
    """Parallel processes for compiling: as many as wanted, leaving two cores to the session itself."""
    return min(wanted, max(1, (os.cpu_count() or 2) - 2))


def _left(deadline: float) -> float:
    return deadline - time.monotonic()


def _free(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- env

def step_env(ctx: Context, deadline: float) -> dict:
    from bench import features, session_plan

    dev, plan = ctx.dev, ctx.plan
    if dev.type == "cuda":
        ceilings = common.measure_ceilings(dev)
    else:
        ceilings = {"skipped": "ceilings are measured on CUDA only (8192^3 matmuls, 1 GiB copy)"}
    feats = features.detect(dev)
    if dev.type == "cuda":
        units, source = session_plan.calibration(common.RESULTS_DIR, common.device_slug(dev))
        est = session_plan.estimate(plan, units, _workers(plan.warmup_workers),
                                    _workers(plan.test_workers) if feats["xdist"].available else 1)
    else:  # the dry run itself is not estimated: show what the GPU plan should take on an H200 machine
        units, source = dict(session_plan.ASSUMED), "assumed"
        est = session_plan.estimate(session_plan.GPU, units, 12, 12)
        est["note"] = ("the GPU plan (not this dry run) on an H200 machine with 16 cores (12 compile workers, "
                       "12 test workers), assumed unit costs")
    est["units_source"] = source
    est["unit_notes"] = session_plan.ASSUMED_SOURCE
    log(f"  {ctx.session.env['device']}; {'GPU plan ' if dev.type != 'cuda' else ''}estimate {est['total_s']:.0f} s "
        f"of {ctx.session.budget_s:.0f} ({', '.join(f'{k} {v:.0f}' for k, v in est['steps_s'].items())})")
    return {"environment": ctx.session.env, "ceilings": ceilings, "features": features.as_json(feats),
            "declared_capabilities": list(features.declared_capabilities()),
            "plan": plan.to_dict(), "estimate": est, "budget_s": ctx.session.budget_s,
            "steps": ctx.session.steps, "deadlines_s": {k: round(v, 1) for k, v in ctx.session.deadlines.items()},
            "triton_cache_dir": os.environ.get("TRITON_CACHE_DIR"),
            "triton_interpret": os.environ.get("TRITON_INTERPRET")}


def warmup_failures(ctx: Context) -> Dict[tuple, str]:
    """Fused calls whose warm-up failed (an exception, or the worker process died), by job key: the main
    process leaves them out, since a fault on the device (an illegal address) would end every later
    measurement of the session."""
    import json

    f = ctx.session.folder / FILES["warmup"]
    if not f.is_file():
        return {}
    out = {}
    for r in json.loads(f.read_text()).get("records") or []:
        err = r.get("error")
        if err and not err.startswith("not run"):
            out[job_key(r)] = err
    return out


def job_key(job: dict) -> tuple:
    if job["kind"] == "layer":
        return ("layer", job["layer"], job["batch"], job["rank"], job["act"], job["dtype"])
    return ("generator", job["size"], job["batch"], job["amp"], job["train"])


def _ceilings(ctx: Context) -> Optional[dict]:
    """The ceilings env.json measured (None on the CPU or when env did not run)."""
    import json

    f = ctx.session.folder / FILES["env"]
    if not f.is_file():
        return None
    c = json.loads(f.read_text()).get("ceilings") or {}
    return c if "tflops" in c else None


# ----------------------------------------------------------------------------- tests

def step_tests(ctx: Context, deadline: float) -> dict:
    from bench import session_tests

    plan = ctx.plan
    workers = _workers(plan.test_workers) if ctx.feature("xdist").available else 1
    per_test = plan.test_timeout_s if ctx.feature("pytest_timeout").available else None
    patterns = list(plan.tests)
    if workers > 1:  # the longest tests (whole generator, many kernels to compile) first, while workers are free
        patterns.sort(key=lambda p: "generator" not in p)
    return session_tests.run(patterns, plan.tests_marker, list(plan.tests_extra), deadline=deadline,
                             workers=workers, per_test_timeout=per_test, log=log)


# ----------------------------------------------------------------------------- warm-up

def warmup_jobs(ctx: Context) -> List[dict]:
    """Every fused call the later steps make: each layer case, and the generator at the e2e and ONNX shapes."""
    from bench import session_plan, warmup

    plan, cl = ctx.plan, ctx.use_channels_last()
    jobs = [warmup.layer_job(c.layer, plan.ladder, c.batch, c.rank, c.act, c.dtype, cl)
            for c in session_plan.layer_cases(plan)]
    if ctx.dev.type == "cuda":  # the e2e and ONNX steps run the fused generator on CUDA only
        size, q, r, a = plan.e2e_size, plan.e2e_quick, plan.e2e_rank, plan.e2e_act
        jobs.append(warmup.generator_job(size, q, plan.e2e_train_batch, r, a, "bf16", True))
        jobs.append(warmup.generator_job(size, q, plan.e2e_gen_batch, r, a, "bf16", False))
        jobs += [warmup.generator_job(plan.onnx_size, plan.onnx_quick, b, r, a, "off", False)
                 for b in plan.onnx_batches]
    return jobs


def step_warmup(ctx: Context, deadline: float) -> dict:
    from bench import warmup

    fused = ctx.feature("fused")
    if not fused.available:
        return {"status": "skipped", "reason": f"no fused path to compile: {fused.how}"}
    plan = ctx.plan
    payload = warmup.run(warmup_jobs(ctx), device=str(ctx.dev), workers=_workers(plan.warmup_workers),
                         second_call=plan.warmup_second_call, deadline=deadline, log=log)
    if payload["jobs_done"] < payload["jobs"]:
        payload["status"] = "partial"
    return payload


# ----------------------------------------------------------------------------- layers

WRITE_EVERY_S = 10.0  # the layer step rewrites layers.json (status "running") at most this often


def step_layers(ctx: Context, deadline: float) -> dict:
    from bench import session_plan
    from bench.cases import ladder
    from bench.layers import add_derived, failed_case, plot, run_case

    plan, dev, session = ctx.plan, ctx.dev, ctx.session
    cuda = dev.type == "cuda"
    if not cuda:
        torch.set_num_threads(1)
    cases = session_plan.layer_cases(plan)
    by_name = {c.name: c for c in ladder(plan.ladder, plan.layers)}
    cl = ctx.use_channels_last()
    build_kw = {} if cuda else {"ours-heuristic": {"allow_interpreter": True}}
    ceilings = _ceilings(ctx)
    failed = warmup_failures(ctx)
    env = session.env
    meta = {"timing": ("CUDA events, warm-up first, L2 flushed (256 MB) before each rep, inputs rotated over >=2 "
                       "sets; " + ", ".join(f"{k} {v:g}" for k, v in plan.layer_timing.items())) if cuda else
            f"CPU wall clock, {plan.cpu_reps} rep after {plan.cpu_warmup} warm-up; the fused path in Triton's "
            "interpreter (no timing meaning)",
            "ceilings": ceilings, "layout": "channels_last" if cl else "nchw", "methods": list(plan.layer_methods),
            "modes": list(plan.modes), "cases_planned": len(cases), "cases_run": 0, "stopped_early": None,
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark), "case_wall_s": []}
    records: List[dict] = []
    base = {"device": env["device"], "torch": env["torch"], "triton": env["triton"]}
    t_start = last_write = time.monotonic()
    for i, c in enumerate(cases):
        if _left(deadline) <= 0:
            meta["stopped_early"] = (f"time ran out: {i} of {len(cases)} cases measured; not run: "
                                     + ", ".join(f"{x.layer} b{x.batch} r{x.rank} {x.act}" for x in cases[i:]))
            log(f"  {meta['stopped_early'][:200]}")
            break
        t_case = time.monotonic()
        case = by_name[c.layer]
        methods, recs = list(plan.layer_methods), []
        why = failed.get(("layer", c.layer, c.batch, c.rank, c.act, c.dtype))
        if why:
            fused = [m for m in methods if m.startswith("ours")]
            methods = [m for m in methods if m not in fused]
            recs = failed_case(case, c.batch, c.rank, c.act, c.dtype, plan.modes, fused,
                               f"left out: its warm-up call failed ({why[:300]})", skipped=True)
        try:
            recs = run_case(case, c.batch, c.rank, c.act, c.dtype, plan.modes, methods, dev, compile_reason=None,
                            seed=i, cpu_reps=plan.cpu_reps, cpu_warmup=plan.cpu_warmup, log=lambda s: None,
                            timing_kw=plan.layer_timing if cuda else {}, build_kw=build_kw,
                            inputs_on_device=cuda, channels_last=cl) + recs
        except Exception as exc:  # e.g. out of memory building the inputs or the float64 reference
            recs = failed_case(case, c.batch, c.rank, c.act, c.dtype, plan.modes, methods,
                               f"case failed: {type(exc).__name__}: {exc}"[:500]) + recs
        _free(dev)
        records.extend({**base, **r} for r in recs)
        meta["cases_run"] = i + 1
        meta["case_wall_s"].append(round(time.monotonic() - t_case, 2))
        timed = {r["method"]: r["median_ms"] for r in recs if r["mode"] == plan.modes[0] and r["median_ms"]}
        errors = [f"{r['method']} {r['mode']}: {r['error'][:120]}" for r in recs if r["error"]]
        log(f"  {c.layer} b{c.batch} r{c.rank} {c.act} {c.dtype}: "
            + " ".join(f"{m} {t:.3g}" for m, t in timed.items()) + f" ms ({meta['case_wall_s'][-1]:.1f} s)"
            + ("".join(f"\n    ERROR {e}" for e in errors)))
        if time.monotonic() - last_write > WRITE_EVERY_S:  # a session stopped from outside keeps these
            add_derived(records, ceilings)
            common.write_json(session.folder / FILES["layers"],
                              {"step": "layers", "status": "running", **session.header(), "meta": meta,
                               "records": records})
            last_write = time.monotonic()
    add_derived(records, ceilings)
    wall = time.monotonic() - t_start
    n_meas = sum(r["median_ms"] is not None for r in records)
    out: Dict[str, Any] = {"meta": meta, "records": records}
    if cuda and n_meas:
        out["rates"] = {"layer_s_per_measurement": round(wall / n_meas, 4), "layer_s_per_case": 0.0}
    if records:
        why = plot(records, session.folder / PLOT, f"{env['device']} {env['date']}"
                   + (" (dry run)" if session.dry else ""))
        meta["plot"] = PLOT if why is None else f"not written: {why}"
    if meta["stopped_early"]:
        out["status"] = "partial"
    return out


# ----------------------------------------------------------------------------- e2e

def step_e2e(ctx: Context, deadline: float) -> dict:
    from bench import session_plan
    from bench.e2e import add_speedups, build_models, job_line, measure_job, reference_images
    from colorgan.train.loop import resolve_amp

    plan, dev, env = ctx.plan, ctx.dev, ctx.session.env
    if dev.type != "cuda":
        torch.set_num_threads(1)
    t0 = time.monotonic()
    amp = resolve_amp("auto", dev)
    G, D = build_models(plan.e2e_size, plan.e2e_quick, plan.e2e_rank, plan.e2e_act, dev, 0)
    z = torch.randn(plan.e2e_gen_batch, G.style_dim, generator=torch.Generator().manual_seed(1)).to(dev)
    ref = reference_images(G, z, dev)
    setup_s = time.monotonic() - t0
    base = dict(device=env["device"], torch=env["torch"], triton=env["triton"], size=plan.e2e_size,
                rank=plan.e2e_rank, act=plan.e2e_act, amp=amp, dtype="bf16-amp" if amp == "bf16" else "fp32")
    jobs = [("generate", None, m, plan.e2e_gen_batch) for m in session_plan.E2E_METHODS]
    jobs += [("train", False, m, plan.e2e_train_batch) for m in session_plan.E2E_METHODS if m != "ours-graph"]
    failed = warmup_failures(ctx)
    records, not_run = [], []
    t_jobs = time.monotonic()
    for kind, reg, method, batch in jobs:
        if _left(deadline) <= 0:
            not_run.append(f"{kind} {method} b{batch}")
            continue
        why = failed.get(("generator", plan.e2e_size, batch, amp, kind == "train")) if method != "published" else None
        rec = measure_job(G, D, kind, reg, method, batch, amp, dev, plan.e2e_iters, plan.e2e_warmup, 0,
                          ref if kind == "generate" else None, z, base,
                          skip=f"left out: its warm-up call failed ({why[:300]})" if why else None)
        records.append(rec)
        log(f"  {job_line(rec)}")
    add_speedups(records)
    meta = {**{k: env[k] for k in ("device", "date", "torch", "triton", "cuda", "driver")},
            "command": ctx.session.command, "size": plan.e2e_size, "quick": plan.e2e_quick, "amp": amp,
            "iters": plan.e2e_iters, "warmup": plan.e2e_warmup, "not_run": not_run,
            "timing": "training: host wall clock per iteration, device synchronised around each step; generation: "
                      "CUDA events (CPU: wall clock); median and p20/p80"}
    out: Dict[str, Any] = {"meta": meta, "records": records}
    done = [r for r in records if r["median_ms"] is not None]
    if dev.type == "cuda" and done:
        out["rates"] = {"e2e_setup_s": round(setup_s, 1),
                        "e2e_s_per_job": round((time.monotonic() - t_jobs) / len(records), 1)}
    if not_run:
        out["status"] = "partial"
    del G, D
    _free(dev)
    return out


# ----------------------------------------------------------------------------- onnx

ONNX_MIN_S = {"cuda": 15.0, "cpu": 1.0}


def step_onnx(ctx: Context, deadline: float) -> dict:
    from bench.e2e import build_models
    from bench.onnx import bench_generator

    plan, dev = ctx.plan, ctx.dev
    if _left(deadline) < ONNX_MIN_S[dev.type]:
        return {"status": "skipped", "reason": f"{_left(deadline):.0f} s left, the export alone needs ~"
                                               f"{ONNX_MIN_S[dev.type]:.0f} s"}
    feat = ctx.feature("ort_cuda")
    failed = warmup_failures(ctx)
    why = next((failed[k] for k in failed if k[0] == "generator" and k[1] == plan.onnx_size and k[3] == "off"), None)
    G, _ = build_models(plan.onnx_size, plan.onnx_quick, plan.e2e_rank, plan.e2e_act, torch.device("cpu"), 0)
    saved = torch.get_num_threads()
    try:
        report = bench_generator(G, "task", plan.onnx_batches, cpu_batches=plan.onnx_cpu_batches,
                                 warmup=plan.onnx_warmup, iters=plan.onnx_iters,
                                 threads=None if dev.type == "cuda" else 1,
                                 fused_skip=f"left out: its warm-up call failed ({why[:300]})" if why else None,
                                 log=lambda s: log(f"  {s}"))
    finally:
        torch.set_num_threads(saved)
    report["ort_cuda"] = feat.to_dict()
    return report
