# Two commands do everything on a fresh machine:
#   make reproduce   create .venv, re-execute every page of the book into reproduction/$(PROFILE)/ (papermill,
#                    on a local Dask cluster; trained runs in runs/ are reused), compare every published number
#                    with the re-executed one (reproduction_report.json), build that book, print its path
#   make test        create .venv if needed, run the whole test suite (make fast: the fast lane only)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Data root: $RSGH_DATA if set; on these machines ../shared/data; elsewhere data/cache (downloads there).
RSGH_DATA ?= $(if $(wildcard ../shared/data/MNIST),$(abspath ../shared/data),$(abspath data/cache))
export RSGH_DATA
RUNS ?= runs

PROFILE ?= quick
# DEVICE=cuda: every page's training on the GPU (make reproduce PROFILE=quick DEVICE=cuda), DEVICE=cpu on the CPU;
# unset: CUDA where available. It sets RSGH_DEVICE, the default device of the runtime settings that the pages build.
DEVICE ?=
ifneq ($(strip $(DEVICE)),)
export RSGH_DEVICE := $(strip $(DEVICE))
endif
.PHONY: venv reproduce book test fast e1 reference clean-venv

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# --resume makes every step idempotent: a finished run is kept, an interrupted one continues.
e1: venv
	$(PY) -m rsgh train --config e1-sgh e1-rsgh --out $(RUNS)/e1-sgh $(RUNS)/e1-rsgh --resume

reference: venv
	$(PY) -m rsgh train --config sgh-reference --out $(RUNS)/sgh-reference --resume

reproduce: venv
	RSGH_WORKERS=$${RSGH_WORKERS:-$$(nproc)} $(PY) -m rsgh reproduce --profile $(PROFILE)  # one worker per core

book: venv
	$(VENV)/bin/jupyter-book build -W -n --keep-going book
	@echo "The book: $(abspath book/_build/html/index.html)"

test: venv
	$(PY) -m pytest

fast: venv
	$(PY) -m pytest -m "not slow"

clean-venv:
	rm -rf $(VENV)
