# The two commands a newcomer needs: `make up` and `make test`. Both create or refresh the
# local virtual environment first (torch is pinned exactly: an open range pulls a CUDA build).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: up test lint typecheck unit test-hub venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0" -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest tests/model_runtime -p no:cacheprovider

test: lint typecheck unit test-hub

# hub_service against a real JupyterHub; its own pytest run (the jupyter_server plugin clashes).
CHP := .hubserve/node/node_modules/.bin/configurable-http-proxy

$(CHP):
	npm install --prefix .hubserve/node --no-audit --no-fund configurable-http-proxy

# The whole stack on this machine (dev/up.py): JupyterHub + proxy, hubserve, S3. Ctrl-C stops it.
up: $(STAMP) $(CHP)
	$(PY) dev/up.py

test-hub: $(STAMP) $(CHP)
	$(PY) -m pytest tests/hub_service -p no:cacheprovider

clean:
	rm -rf $(VENV) .hubserve build *.egg-info .pytest_cache .mypy_cache .ruff_cache
