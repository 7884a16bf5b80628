"""The static compile report (`python -m bench compile`): kernels compiled offline for sm_90a with Triton's
bundled ptxas, SASS statistics per kernel launch, and the issue's targets checked over the records.

Always on (`make test`): a reduced report, a few representative layers of the StyleGAN2-256 ladder, compiled in a
fresh subprocess (compiling needs TRITON_INTERPRET unset, which the test process cannot undo). Opt-in
(FASTLORA_COMPILE_REPORT=1, about 30-60 min on 2 cores, or FASTLORA_COMPILE_REPORT=DIR to check an existing
DIR/compile.json): the whole ladder, batch 4 and 16, bf16 and fp32, forward and backward.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("kernel", "pass", "layer", "batch", "dtype", "config", "grid_ctas", "regs", "spill_bytes", "smem_bytes",
          "mma", "ldgsts128", "ldg128", "ldg_scalar16", "fp32_intermediate_bytes", "cubin")


def _run_report(out: Path, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "bench", "compile", "--out", str(out), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "compile.json").read_text())


def _check_records(rep: dict, out: Path) -> None:
    assert rep["target"] == "sm_90a" and rep["records"]
    for r in rep["records"]:
        missing = [f for f in FIELDS if f not in r]
        assert not missing, f"record lacks {missing}: {r}"
        assert (out / r["cubin"]).is_file() and (out / r["cubin"]).read_bytes()[:4] == b"\x7fELF"
        assert r["regs"] and r["regs"] <= 255 and r["grid_ctas"] >= 1
        assert r["mma"] in ("HGMMA", "HMMA", "FFMA", "none")


@pytest.mark.slow
def test_reduced_compile_report(tmp_path):
    """Representative cases: a plain 3x3 and an up layer at 32 px (forward, bf16, batch 16)."""
    rep = _run_report(tmp_path, "--layers", "conv512@32,up512@32", "--batch", "16", "--dtype", "bf16",
                      "--pass", "forward")
    _check_records(rep, tmp_path)
    kernels = {r["kernel"] for r in rep["records"]}
    assert any("conv" in k for k in kernels), kernels
    assert (tmp_path / "compile.md").read_text().startswith("| kernel |")
