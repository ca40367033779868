# Every target works on a fresh machine: `make test` builds .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; an unpinned `torch` would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: venv test test-slow lint demo clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[dev]" "$(TORCH_PIN)"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m ruff check src tests
	$(PY) -m pytest -m "not slow"

test-slow: venv
	$(PY) -m pytest -m slow

lint: venv
	$(PY) -m ruff check src tests
	$(PY) -m ruff format --check src tests

demo: venv
	$(PY) -m lightning_kd.demo

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache outputs multirun
