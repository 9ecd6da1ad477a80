# gru-bench: every target creates .venv on first use and installs the package into it.
# TORCH_SPEC pins the CPU wheel this project is tested with; override it for CUDA, e.g.
#   make reproduce TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_SPEC ?= torch==$(TORCH_VERSION)
DATA_SOURCE ?=
BIN := $(VENV)/bin
GB := $(BIN)/gru-bench

.PHONY: venv test lint data reproduce

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(BIN)/ruff check gru_bench tests
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check gru_bench tests
	$(BIN)/ruff format --check gru_bench tests

data: venv
	$(GB) data download all $(if $(DATA_SOURCE),--source "$(DATA_SOURCE)")
	$(GB) data prepare all

reproduce: data
