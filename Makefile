# Two entry points for a fresh machine; both create .venv on first use.
#   make demo   the main job on the bundled synthetic dataset
#   make test   ruff + the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Exact pins live here only (pyproject declares ranges): this CPU build of torch installs from
# the local wheel cache of our machines; elsewhere pip downloads it.
TORCH_PIN ?= torch==2.13.0

.PHONY: venv demo test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m benchmarks.flops -p paper -p tiny

lint: venv
	$(PY) -m ruff check .

test: venv lint
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
