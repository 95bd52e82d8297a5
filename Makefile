# The two commands a new user needs: `make demo` and `make test`. Each creates .venv and
# installs geoml into it on first use (Python 3.11+ as `python3`, or set PYTHON=...).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.geoml-installed
# The tests run through PyTorch (the torch extra). Here this pin is a CPU wheel on local
# disk; from PyPI on Linux it is a CUDA build, so elsewhere add the CPU index first:
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make test
TORCH_VERSION ?= 2.13.0

.PHONY: demo test mutants lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -c 'import sys; sys.exit("geoml needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,ray]' \
		'torch==$(TORCH_VERSION)'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/geoml demo

# The tests start hundreds of geoml processes: let them keep compiled bytecode (Python's
# default; some environments turn it off).
test: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest

mutants: $(STAMP)
	$(BIN)/python -m tests.mutants.run

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_bus.py

clean:
	rm -rf $(VENV) build *.egg-info
