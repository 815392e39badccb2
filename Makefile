# Two commands for a fresh clone: `make demo` and `make test`.
# Both create the virtual environment in .venv/ on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test figures reproduce clean-venv
FIGURES_PRESET ?= demo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/selmask demo --out figures

test: $(STAMP)
	$(BIN)/python -m pytest

# Regenerate every figure under figures/ (demo preset on the embedded data; minutes on a CPU).
figures: $(STAMP)
	$(BIN)/selmask demo --out figures
	mkdir -p runs/notebooks
	$(BIN)/papermill --cwd . notebooks/01_selective_masking_explained.ipynb runs/notebooks/01.ipynb \
		-p preset $(FIGURES_PRESET) -p figures_dir figures
	$(BIN)/papermill --cwd . notebooks/03_per_class_gains.ipynb runs/notebooks/03.ipynb \
		-p preset $(FIGURES_PRESET) -p figures_dir figures

# The paper's table on the embedded data (override: make reproduce ARGS="--datasets voc --data-root voc=/data/voc --preset paper").
reproduce: $(STAMP)
	$(BIN)/selmask reproduce $(or $(ARGS),--preset demo --table figures/table_miou_demo.csv)

clean-venv:
	rm -rf $(VENV)
