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
# The project is built with setuptools without build isolation: 77 or newer reads its SPDX license.
SETUPTOOLS_VERSION ?= 84.2.1
# sam2's optional CUDA extension only fills small mask holes; 0 keeps the build portable.
SAM2_BUILD_CUDA ?= 0
# make wheelhouse: wheels for an offline GPU machine's Python (see benchmarks/wheelhouse.py).
WHEELHOUSE     ?= wheelhouse
PYTHON_VERSION ?= 3.12
# make gpu-check: this project's .venv if there is one, else the machine's own Python (with its
# PyTorch; the rest, pytest included, comes from $(WHEELHOUSE)). The results go to a junit file;
# the sizes can be changed with GPU_CHECK_ARGS (see benchmarks/gpu_check.py) and tests left out
# with pytest's -k, e.g. make gpu-check GPU_CHECK_ARGS="--frames 30 --work-dir work/gpu-check"
# GPU_CHECK_PYTEST_ARGS='-k "not demo and not gids"'.
GPU_CHECK_PYTHON      ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_CHECK_REPORT      ?= work/gpu-check.xml
GPU_CHECK_PYTEST_ARGS ?=

# setup installs the project with its `app` extra (gradio: run_pipeline.py app).
.PHONY: setup try test test-fast lint format bench bench-long wheelhouse gpu-check screenshot clean

# The set-up, in order: PyTorch first (sam2 builds against it), sam2, the rest, this project.
define SETUP
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade "pip==$(PIP_VERSION)" "setuptools==$(SETUPTOOLS_VERSION)"
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

# make try: the demo, offline, on the tiny random-weight models in tests/fixtures/ (their masks are
# meaningless: this shows the commands and the output format, nothing about accuracy).
TINY        := tests/fixtures
TINY_MODELS := stage1.model=$(TINY)/referdino_tiny/model.yaml \
               stage1.checkpoint=$(TINY)/referdino_tiny/referdino_checkpoint.pth stage1.short_side=64 \
               stage2.model=$(TINY)/sam2_tiny/tiny_sam2.1.yaml \
               stage2.checkpoint=$(TINY)/sam2_tiny/weights_propagating.pt
TRY_OUT     ?= work/try

try: $(PY)
	$(PY) run_pipeline.py demo --cpu --video $(TINY)/referdino_tiny/frames --max-frames 12 \
	    --text "the person sitting on the bed" --text "the pillow on the left" \
	    --out $(TRY_OUT) $(TINY_MODELS)

test: lint
	$(PY) -m pytest -q

# Unit tests only (no model runs, no end-to-end command lines): seconds.
test-fast: $(PY)
	$(PY) -m pytest -q -m "not slow"

# docs/app.png, the README's picture of the browser app (needs Debian's chromium).
screenshot: $(PY)
	UPDATE_SCREENSHOT=1 $(PY) -m pytest -q tests/test_app_browser.py -k uploaded_clip

lint: $(PY)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format:
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# Real-size models with random weights (ReferDINO mevis_swinb, SAM 2.1 Hiera-L), clips sized for
# a CPU: about 6 minutes on 2 idle cores (docs/speed.md). Other sizes: the scripts' --help.
bench: $(PY)
	TQDM_DISABLE=1 $(PY) benchmarks/bench_stage1_backbone_reuse.py --frames 3 --expressions 6
	TQDM_DISABLE=1 $(PY) benchmarks/bench_stage2_feature_reuse.py --model sam2.1_hiera_l --frames 3 --objects 1,1,1,1,1,1

# Long clips (docs/long-videos.md): peak memory of the demo and of stages 1-3 on generated clips
# of 120 and 1,200 frames, tiny models; every frame must come out (about 20 minutes on 2 cores).
# Real-size models: benchmarks/bench_long_video.py --models real --frames 8,80 --size 640x360
bench-long: $(PY)
	$(PY) benchmarks/bench_long_video.py

wheelhouse: $(PY)
	$(PY) benchmarks/wheelhouse.py download --python-version $(PYTHON_VERSION) --dest $(WHEELHOUSE)

# On a machine with a CUDA GPU: speed, agreement and fallbacks at real size, the tests marked gpu
# (tests/gpu); the figures are printed at the end. Without a GPU they skip, saying why. No pytest
# plug-ins of the machine are loaded; xunit1: each comparison's measured values in the junit file.
# The check makes its own random-weight models and fetches nothing: the Hugging Face Hub is
# offline for it (HF_HUB_OFFLINE=1), as on a node without internet.
gpu-check:
	HF_HUB_OFFLINE=1 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 $(GPU_CHECK_PYTHON) benchmarks/wheelhouse.py run \
	    --wheelhouse $(WHEELHOUSE) -- -m pytest -m gpu tests/gpu --durations=0 \
	    --junitxml=$(GPU_CHECK_REPORT) -o junit_family=xunit1 $(GPU_CHECK_PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
