# Two commands from a fresh clone (Linux, Python 3.10+):
#   make quickstart   sets up the run-time environment, then trains and evaluates on VRS-Sim (no downloads)
#   make test         sets up the test environment (PyTorch CPU, the sam2 reference), then runs the test suite
# Each environment is built once from the pinned requirements and rebuilt only when they change.
# ACCELERATOR=cuda12 or ACCELERATOR=tpu adds the matching JAX wheel (`jax[cuda12]` / `jax[tpu]` of the pinned JAX).

PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= runs/quickstart
PYTEST_WORKERS ?= 2
ACCELERATOR ?= cpu

JAX_VERSION := $(shell sed -n 's/^jax==//p' requirements.txt)

BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime-installed
TESTING := $(VENV)/.test-installed

.PHONY: quickstart test env test-env clean-env

quickstart: $(RUNTIME)
	$(BIN)/python -m robotseg_jax.train --config configs/quickstart.py --workdir $(WORKDIR)

# The multi-process training tests run after the rest, on their own: each starts several training processes of a
# few GB, which next to two loaded pytest workers exceed a 24 GB machine.
test: $(TESTING)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -q -m "not multiprocess" tests
	$(BIN)/python -m pytest -q -m multiprocess tests

env: $(RUNTIME)

test-env: $(TESTING)

$(RUNTIME): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	if [ "$(ACCELERATOR)" != cpu ]; then $(BIN)/python -m pip install --quiet "jax[$(ACCELERATOR)]==$(JAX_VERSION)"; fi
	touch $@

# sam2 and davisinteractive install without their own requirements and without build isolation (see
# requirements-reference.txt); SAM2_BUILD_CUDA=0 skips sam2's CUDA extension.
$(TESTING): $(RUNTIME) requirements-dev.txt requirements-reference.txt
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	SAM2_BUILD_CUDA=0 $(BIN)/python -m pip install --quiet --no-build-isolation --no-deps -r requirements-reference.txt
	touch $@

clean-env:
	rm -rf $(VENV)
