# One-command set-up and test. Everything goes into .venv next to this file.
PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
# Pinned versions CI and the reference numbers use; `make setup CONSTRAINTS=` installs the ranges.
CONSTRAINTS ?= constraints.txt
CFLAG       := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
# The pip CI uses (a newer one works too: make setup PIP_VERSION=...).
PIP_VERSION ?= 26.3
# sam2's optional CUDA extension only fills small mask holes; 0 keeps the build portable.
SAM2_BUILD_CUDA ?= 0

# setup installs the project with its `app` extra (gradio: run_pipeline.py app).
.PHONY: setup test test-fast lint format bench clean

# The set-up, in order: PyTorch first (sam2 builds against it), sam2, the rest, this project.
define SETUP
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade "pip==$(PIP_VERSION)"
	$(PIP) install $(CFLAG) torch torchvision
	SAM2_BUILD_CUDA=$(SAM2_BUILD_CUDA) $(PIP) install $(CFLAG) --no-build-isolation sam2==1.1.0
	$(PIP) install $(CFLAG) -r requirements.txt -r requirements-dev.txt
	$(PIP) install $(CFLAG) --no-build-isolation -e ".[app]"
endef

setup:
	$(SETUP)

# A fresh clone: `make test` (or lint, bench) sets up .venv first.
$(PY):
	$(SETUP)

test: lint
	$(PY) -m pytest -q

# Unit tests only (no model runs, no end-to-end command lines): seconds.
test-fast: $(PY)
	$(PY) -m pytest -q -m "not slow"

lint: $(PY)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format:
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: $(PY)
	$(PY) benchmarks/bench_stage1_backbone_reuse.py
	$(PY) benchmarks/bench_stage1_backbone_reuse.py --backbone swin_B_384_22k
	$(PY) benchmarks/bench_stage2_feature_reuse.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
