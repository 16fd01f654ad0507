# Latent-Shift: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch 2.13.0 CPU build first so pip does not pull a multi-GB CUDA build on CPU-only machines.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test lint demo clean

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" || $(PY) -m pip install --quiet torch
	# (setuptools' notice that a folder named like the package may shadow it: the clone's ls_video/ is the package)
	PYTHONWARNINGS="ignore:Editable installation:UserWarning" $(PY) -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q -m "not gpu" tests

lint: setup
	$(VENV)/bin/ruff check .

demo: setup
	$(PY) -m ls_video.commands.demo --out outputs/demo

clean:
	rm -rf outputs lightning_logs .pytest_cache
