# The Makefile only wires stages: every target is one `python -m pipeline` call.
# `make install` builds .venv; every other target depends on it, so a fresh clone just works.
#   make install TORCH=skip   keep the torch already in the environment (e.g. your CUDA build)
#   make install VENV=...     install into another virtual environment
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
CONFIG ?= configs/synth.toml
ARGS ?=
PY := $(VENV)/bin/python
RUN := $(PY) -m pipeline

.PHONY: install test lint all synth flow train-rgb train-flow eval transfer bench-gpu clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(if $(filter skip,$(TORCH)),--system-site-packages,) $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(filter skip,$(TORCH)),,$(PY) -m pip install -q "$(TORCH)")
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# The suite on one thread, then the tests marked `numerical` again on two: a result that depends on
# the thread count (a tolerance too tight for another summation order) fails here, not on a user's
# machine (docs/CONTRIBUTING.md).
test: install
	OMP_NUM_THREADS=1 P3D_TEST_THREADS=1 $(PY) -m pytest tests -q
	OMP_NUM_THREADS=2 P3D_TEST_THREADS=2 $(PY) -m pytest tests -q -m numerical

# ruff (pinned in the `test` extra) with the rules and the 120-column width of pyproject.toml [tool.ruff].
lint: install
	$(PY) -m ruff check .

all: synth flow train-rgb train-flow eval

synth: install
	$(RUN) synth --config "$(CONFIG)" $(ARGS)

flow: install
	$(RUN) flow --config "$(CONFIG)" $(ARGS)

train-rgb: install
	$(RUN) train --stream rgb --config "$(CONFIG)" $(ARGS)

train-flow: install
	$(RUN) train --stream flow --config "$(CONFIG)" $(ARGS)

eval: install
	$(RUN) eval --config "$(CONFIG)" $(ARGS)

# After `make all`: the SynthActions streams as frozen extractors on every transfer protocol
# (configs/transfer.toml; docs/transfer.md). TRANSFER_CONFIG=configs/<yours>.toml for real data;
# after `make all CONFIG=configs/tiny.toml`: `make transfer TRANSFER_CONFIG=configs/tiny_transfer.toml`.
TRANSFER_CONFIG ?= configs/transfer.toml
transfer: install
	$(RUN) transfer --config "$(TRANSFER_CONFIG)" $(ARGS)

# The prepared GPU run (bench/gpu.py, docs/gpu.md): every CUDA path proved and measured in at most
# 7 minutes; gpu.md, gpu.json, gpu.log and sections/ in work/gpu (rows written as measured), scratch
# data and torch.compile's caches in work/gpu-work. A bare GPU machine without this .venv runs
# `PYTHONPATH=. python3 bench/gpu.py --out DIR` instead.
bench-gpu: install
	$(PY) bench/gpu.py --out work/gpu --work work/gpu-work $(ARGS)

clean:
	rm -rf work
