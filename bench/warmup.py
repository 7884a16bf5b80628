"""Compile the Triton kernels the GPU session will use before it times anything, in parallel processes.

Triton compiles each kernel specialisation (constexprs, dtypes, divisibility of the integer arguments) on
first launch, on one CPU core, and keeps the result in its on-disk cache (TRITON_CACHE_DIR). The session
lists every fused call it will make (`jobs`), groups them so that calls likely to share specialisations
land in one process, and runs the groups in worker processes (`python -m bench.warmup --worker ...`),
each launching its calls once (compiling) and, on a GPU, a second time (already compiled): the
difference is that call's compile time. Later steps then load the compiled kernels from the disk cache.
Calls in different processes can compile the same specialisation at the same time (Triton has no
cross-process lock); the groups keep the calls most likely to share kernels in one process.
Run as a script, this module is the worker.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- the job list

def layer_job(layer: str, ladder: str, batch: int, rank: int, act: str, dtype: str, channels_last: bool) -> dict:
    return {"kind": "layer", "layer": layer, "ladder": ladder, "batch": batch, "rank": rank, "act": act,
            "dtype": dtype, "channels_last": channels_last}


def generator_job(size: int, quick: bool, batch: int, rank: int, act: str, amp: str, train: bool) -> dict:
    return {"kind": "generator", "size": size, "quick": quick, "batch": batch, "rank": rank, "act": act,
            "amp": amp, "train": train}


def group_key(job: dict) -> tuple:
    """Calls likely to share their costly kernel specialisations: one layer shape (layer, batch, dtype) at every
    rank and act (rank and act change only the small prologue and reduction kernels; the shape picks the conv
    tiles). Each generator call is its own group."""
    if job["kind"] == "layer":
        return ("layer", job["layer"], job["batch"], job["dtype"])
    return ("generator", job["size"], job["batch"], job["amp"], job["train"])


def weight(job: dict) -> float:
    if job["kind"] == "generator":
        return 8.0 if job["train"] else 4.0
    return 1.0


def assign(jobs: Sequence[dict], workers: int) -> List[List[int]]:
    """Job indices per worker: whole groups, in the order their first job appears in `jobs` (the order the
    session needs them), each to the least-loaded worker so far; within a worker, jobs keep that order."""
    groups: Dict[tuple, List[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(group_key(job), []).append(i)
    n = max(1, min(workers, len(groups)))
    load = [0.0] * n
    out: List[List[int]] = [[] for _ in range(n)]
    for idx in groups.values():
        w = min(range(n), key=lambda k: load[k])
        out[w].extend(idx)
        load[w] += sum(weight(jobs[i]) for i in idx)
    return [sorted(o) for o in out if o]


# ----------------------------------------------------------------------------- introspection

def jit_specialisations() -> Optional[int]:
    """Compiled specialisations held by the project's Triton kernels in this process (None under the
    interpreter, or if this Triton keeps its caches elsewhere)."""
    try:
        from triton.runtime.jit import JITFunction
    except ImportError:
        return None
    total, found = 0, False
    for name, mod in list(sys.modules.items()):
        if not (name == "kernels" or name.startswith("kernels.")) or mod is None:
            continue
        for obj in list(vars(mod).values()):
            fn = obj if isinstance(obj, JITFunction) else getattr(obj, "fn", None)
            caches = getattr(fn, "device_caches", None) if isinstance(fn, JITFunction) else None
            if caches is None:
                continue
            found = True
            for entry in caches.values():
                total += len(entry[0]) if isinstance(entry, tuple) else 0
    return total if found else None


def cache_dir() -> Optional[Path]:
    d = os.environ.get("TRITON_CACHE_DIR")
    return Path(d) if d else None


def cached_cubins() -> Optional[int]:
    """Compiled kernels (cubin files) in Triton's on-disk cache, when TRITON_CACHE_DIR is set."""
    d = cache_dir()
    if d is None:
        return None
    if not d.is_dir():
        return 0
    return sum(1 for _root, _dirs, files in os.walk(d) for f in files if f.endswith(".cubin"))


# ----------------------------------------------------------------------------- worker

def _run_job(job: dict, dev) -> None:
    import torch

    if job["kind"] == "layer":
        from bench.cases import ladder
        from bench.layers import _tf32
        from bench.methods import DTYPES, METHODS, make_inputs

        case = ladder(job["ladder"], [job["layer"]])[0]
        if dev.type == "cuda":
            _tf32(job["dtype"] == "tf32")
        gen = torch.Generator(device=dev).manual_seed(0)
        fmt = torch.channels_last if job["channels_last"] else None
        p = make_inputs(case, job["batch"], job["rank"], job["act"], gen, fmt).to(dev, DTYPES[job["dtype"]])
        fn = METHODS["ours-heuristic"].build(case, p, dev, allow_interpreter=True)
        with torch.no_grad():
            fn(p)
        p.requires_grad_("all")
        y = fn(p)
        torch.autograd.grad(y, p.grad_tensors("all"), torch.randn_like(y))
        return
    from bench.e2e import bench_train, build_models
    from colorgan.train.loop import autocast_ctx

    G, D = build_models(job["size"], job["quick"], job["rank"], job["act"], dev, 0)
    if job["train"]:
        bench_train(G, D, "ours", job["batch"], False, job["amp"], dev, 1, 0, 0)
        return
    z = torch.randn(job["batch"], G.style_dim, device=dev)
    with torch.inference_mode(), autocast_ctx(dev, job["amp"]):
        G(z, backend="triton", noise_mode="const")


def worker(jobs_file: str, results_file: str) -> None:
    t_start = time.monotonic()
    import torch

    spec = json.loads(Path(jobs_file).read_text())
    dev = torch.device(spec["device"])
    if dev.type == "cuda":
        torch.cuda.init()
    else:
        torch.set_num_threads(1)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def emit(rec: dict) -> None:
        with open(results_file, "a") as f:
            f.write(json.dumps(rec) + "\n")

    emit({"event": "start", "startup_s": round(time.monotonic() - t_start, 2), "pid": os.getpid()})
    for i in spec["jobs"]:
        job = spec["all"][i]
        rec: dict = {"event": "job", "job": i, "first_s": None, "second_s": None, "compile_s": None,
                     "kernels_new": None, "error": None}
        try:
            before = jit_specialisations()
            t0 = time.perf_counter()
            _run_job(job, dev)
            sync()
            rec["first_s"] = round(time.perf_counter() - t0, 3)
            after = jit_specialisations()
            rec["kernels_new"] = None if before is None or after is None else after - before
            if spec["second_call"]:
                t0 = time.perf_counter()
                _run_job(job, dev)
                sync()
                rec["second_s"] = round(time.perf_counter() - t0, 3)
                rec["compile_s"] = round(max(0.0, rec["first_s"] - rec["second_s"]), 3)
        except Exception as exc:  # record and go on: a failing call must not stop the warm-up
            rec["error"] = f"{type(exc).__name__}: {exc}"[:500]
        emit(rec)


# ----------------------------------------------------------------------------- driver

def run(jobs: List[dict], *, device: str, workers: int, second_call: bool, deadline: float,
        log: Callable[[str], None]) -> dict:
    """Run `jobs` in up to `workers` processes until `deadline` (a time.monotonic() value); the step's payload."""
    t0 = time.monotonic()
    cubins_before = cached_cubins()
    parts = assign(jobs, workers)
    procs = []
    with tempfile.TemporaryDirectory(prefix="colorgan-warmup-") as tmp:
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
        for w, idx in enumerate(parts):
            jf, rf = Path(tmp) / f"jobs{w}.json", Path(tmp) / f"results{w}.jsonl"
            jf.write_text(json.dumps({"device": device, "second_call": second_call, "jobs": idx, "all": jobs}))
            logf = open(Path(tmp) / f"worker{w}.log", "wb")
            procs.append((subprocess.Popen([sys.executable, "-m", "bench.warmup", "--worker", str(jf), str(rf)],
                                           cwd=REPO, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                           start_new_session=True), logf, rf, w))
        killed = []
        for proc, logf, _rf, w in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                killed.append(w)
            logf.close()
        results: Dict[int, dict] = {}
        startups, failures = [], []
        for (proc, _logf, rf, w), idx in zip(procs, parts):
            lines = [json.loads(x) for x in rf.read_text().splitlines() if x.strip()] if rf.exists() else []
            startups += [x["startup_s"] for x in lines if x.get("event") == "start"]
            for x in lines:
                if x.get("event") == "job":
                    results[x["job"]] = x
            if proc.returncode not in (0, None) and w not in killed:
                tail = (Path(tmp) / f"worker{w}.log").read_text(errors="replace")[-1500:]
                failures.append({"worker": w, "returncode": proc.returncode, "log_tail": tail})
                pending = [i for i in idx if i not in results]
                if pending:  # the call running when the process died, then the ones it never reached
                    results[pending[0]] = {"first_s": None, "second_s": None, "compile_s": None, "kernels_new": None,
                                           "error": f"crashed: the worker process exited with code {proc.returncode}"}
    wall = time.monotonic() - t0
    cubins_after = cached_cubins()
    records = []
    for i, job in enumerate(jobs):
        r = results.get(i)
        records.append({**job, **({k: v for k, v in r.items() if k not in ("event", "job")} if r else
                                  {"first_s": None, "second_s": None, "compile_s": None, "kernels_new": None,
                                   "error": "not run: the step's time ran out first" if killed else "not run"})})
    done = [r for r in records if r["first_s"] is not None and r["error"] is None]
    compile_s = sum(r["compile_s"] or 0.0 for r in done) if second_call else None
    kernels = sum(r["kernels_new"] or 0 for r in done) if any(r["kernels_new"] is not None for r in done) else None
    new_cubins = None if cubins_before is None or cubins_after is None else cubins_after - cubins_before
    payload = {"workers": len(parts), "jobs": len(jobs), "jobs_done": len(done), "killed_workers": killed,
               "wall_s": round(wall, 1), "compile_s_sum": None if compile_s is None else round(compile_s, 1),
               "jit_specialisations_sum": kernels, "cache_dir": str(cache_dir()) if cache_dir() else None,
               "cached_cubins_before": cubins_before, "cached_cubins_new": new_cubins,
               "worker_startup_s": max(startups) if startups else None, "worker_failures": failures,
               "records": records}
    unique = new_cubins if new_cubins else kernels
    if compile_s and unique and len(done) == len(jobs):
        payload["rates"] = {"kernels": unique, "compile_s_per_kernel": round(compile_s / unique, 2),
                            "worker_start_s": payload["worker_startup_s"]}
    log(f"  warm-up: {len(done)}/{len(jobs)} calls in {len(parts)} workers, {wall:.0f} s wall"
        + (f", compile {compile_s:.0f} s summed over calls" if compile_s is not None else "")
        + (f", {new_cubins} new cubins" if new_cubins is not None else ""))
    return payload


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.warmup", description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", nargs=2, metavar=("JOBS_JSON", "RESULTS_JSONL"), required=True)
    args = p.parse_args(argv)
    worker(*args.worker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
