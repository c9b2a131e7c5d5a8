# Two commands do all the set-up (see README): `make repro` and `make test`.
# Both create .venv from constraints.txt on first use; later runs reuse it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export PYTHONHASHSEED := 0
# DVC stage commands call `python`: make it the venv's
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: repro test lint venv clean-venv gpu-check pretrain

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## repro: run the whole DVC pipeline with params.yaml (cpu-small profile)
repro: $(STAMP)
	$(BIN)/dvc repro

## pretrain: re-create the published pretrained F (both publications) and G (models/pretrain/, about
## 2 hours on 2 cores); the pretrain_* stages are frozen so that `make repro` starts from the committed weights
PRETRAIN_STAGES := pretrain_denoiser pretrain_denoiser_continued pretrain_reconstructor
pretrain: $(STAMP)
	$(BIN)/dvc unfreeze $(PRETRAIN_STAGES)
	$(BIN)/dvc repro $(PRETRAIN_STAGES); status=$$?; \
	$(BIN)/dvc freeze $(PRETRAIN_STAGES); exit $$status

## test: lint, then the whole test suite
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -n 2 --dist loadfile

## gpu-check: on a CUDA machine, the tiny paper route (scripts/paper_route.py) first, then gsplat vs the
## CPU rasteriser, 50 bf16 gpu-medium steps, one sample
## (writes results/gpu_check.json; exits 2 with one error line where there is no GPU)
gpu-check: $(STAMP)
	$(BIN)/python scripts/gpu_check.py

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean-venv:
	rm -rf $(VENV)
