# Two commands for a fresh clone: `make demo` and `make test`.
# Both create the virtual environment in .venv/ on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The exact versions the tests passed with, for the tested platform (Linux x86-64, Python 3.11).
LOCK := requirements/lock-linux-x86_64-py311.txt
ON_LOCKED_PLATFORM := $(shell $(PYTHON) -c 'import platform, sys; print(sys.platform == "linux" and platform.machine() == "x86_64" and sys.version_info[:2] == (3, 11))' 2>/dev/null)

.PHONY: demo test figures nbval reproduce clean-venv
FIGURES_PRESET ?= demo

# On the tested platform: the lock's exact versions, then the kit itself without resolving again.
# Elsewhere: the version ranges of pyproject.toml (untested combinations; the README says so).
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
ifeq ($(ON_LOCKED_PLATFORM),True)
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e '.[dev]'
else
	@echo "not Linux x86-64 with Python 3.11: installing from pyproject.toml's version ranges, not $(LOCK)"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
endif
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/selmask demo --out figures

test: $(STAMP)
	$(BIN)/python -m pytest

# Regenerate figures/: every notebook executed on the four embedded domains (executed notebooks,
# PNG figures, CSV tables and figures/README.md saying what made each), plus the demo figure.
EMBEDDED_DOMAINS ?= toy_street toy_tabletop toy_beet_field toy_maize_field
figures: $(STAMP)
	$(BIN)/selmask demo --out figures
	$(BIN)/selmask reproduce --figures figures --preset $(FIGURES_PRESET) --datasets $(EMBEDDED_DOMAINS)

# Every notebook with its stored defaults, cell by cell (nbval); longer than the test suite's
# notebook tests, which run every notebook with smaller injected parameters.
nbval: $(STAMP)
	cd notebooks && ../$(BIN)/python -m pytest --nbval-lax -p no:cacheprovider .

# The paper's table on the embedded data (override: make reproduce ARGS="--datasets voc --data-root voc=/data/voc --preset paper").
reproduce: $(STAMP)
	$(BIN)/selmask reproduce $(or $(ARGS),--preset demo --table figures/table_miou_demo.csv)

clean-venv:
	rm -rf $(VENV)
