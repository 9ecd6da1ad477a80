# gru-bench: every target creates .venv on first use and installs the package into it.
# TORCH_SPEC pins the CPU wheel this project is tested with; override it for CUDA, e.g.
#   make reproduce TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_SPEC ?= torch==$(TORCH_VERSION)
DATA_SOURCE ?=
WORKERS ?= 2
SEARCH ?= 0
EXTRAS ?= dev,ray,tensorboard
BIN := $(VENV)/bin
GB := $(BIN)/gru-bench
SWEEP := $(if $(filter 1,$(SEARCH)),configs/sweeps/reproduce-search.yaml,configs/sweeps/reproduce.yaml)
QUICK_RESULTS := results/quick
# Markdown files whose generated tables (<!-- gru-bench:NAME --> blocks) `compare` rewrites from results/.
DOCS := README.md $(wildcard docs/*.md)
README_FLAGS := $(foreach f,$(DOCS),--readme $(f))

.PHONY: venv test lint data reproduce reproduce-quick report bench samples clean distclean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
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

# The full study: 4 datasets x 3 models x 3 seeds, paper protocol; re-running skips finished runs and
# resumes interrupted ones. SEARCH=1 adds the paper's 10-trial learning-rate search per cell.
# A failed run does not stop the report (it lists the failure); make still exits non-zero.
reproduce: data
	status=0; $(GB) sweep $(SWEEP) --workers $(WORKERS) || status=$$?; \
	$(GB) compare results --out results/report $(README_FLAGS) && exit $$status

# The same pipeline on a tiny epoch budget and one seed, into results/quick/ (not committed).
reproduce-quick: data
	status=0; GRU_BENCH_RESULTS=$(QUICK_RESULTS) $(GB) sweep configs/sweeps/quick.yaml --workers $(WORKERS) \
		|| status=$$?; $(GB) compare $(QUICK_RESULTS) --out $(QUICK_RESULTS)/report && exit $$status

# The report from the runs in results/, and the tables of README.md and docs/ from the report.
report: venv
	$(GB) compare results --out results/report $(README_FLAGS)

# The JAX peer's rows need the extra: make bench EXTRAS=dev,ray,jax (without it they are skipped with a note).
bench: venv
	$(GB) bench --hidden 46,128,256,512 --out results/bench/bench.csv
	$(GB) bench --dataset jsb --out results/bench/epoch_jsb.csv
	$(GB) bench --cells gru --impls paper --batch-sizes 1 --lengths 1,60,250 --hidden 46 --repeats 30 --no-figure \
		--out results/bench/batch1.csv

# One sample per run (MIDI, piano roll, WAV, mp3/ogg) into results/samples/<dataset>-<cell>-<run>.*, e.g.
#   make samples RUNS="results/runs/jsb/tanh/seed0 results/runs/jsb/lstm/seed0 results/runs/jsb/gru/seed0"
samples: venv
	$(if $(RUNS),,$(error give the run folders: make samples RUNS="results/runs/jsb/gru/seed0 ..."))
	$(BIN)/python scripts/samples.py $(RUNS) --out results/samples

# Removes only what can be rebuilt without a download or a training run: never results/ (runs of
# reproduce-quick included), and not numba's compiled kernels (*.nbi/*.nbc beside the .pyc files).
clean:
	rm -rf build *.egg-info .pytest_cache .ruff_cache
	find . -name '*.py[co]' -path '*/__pycache__/*' -not -path "./$(VENV)/*" -delete

# Also removes the venv, downloads, processed data and run checkpoints, after asking.
distclean: clean
	@read -p "Delete $(VENV), data/raw, data/processed and results/runs checkpoints? [y/N] " ans && [ "$$ans" = y ]
	rm -rf $(VENV) data/raw data/processed
	find results/runs -name '*.pt' -delete 2>/dev/null || true
