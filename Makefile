# The two commands a newcomer needs: `make up` and `make test`. Both create or refresh the
# local virtual environment first (torch is pinned exactly: an open range pulls a CUDA build).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: up test lint typecheck unit test-hub test-server-ext venv clean

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

test: lint typecheck unit test-hub test-server-ext

# Everything that needs the live stack (a real JupyterHub, the service, replicas): hub_service
# and the notebook side (client, magics, widgets, a notebook run by nbclient), in one pytest
# run sharing one hub; its own run, because the jupyter_server pytest plugin clashes.
CHP := .hubserve/node/node_modules/.bin/configurable-http-proxy

$(CHP):
	npm install --prefix .hubserve/node --no-audit --no-fund configurable-http-proxy

# The whole stack on this machine (dev/up.py): JupyterHub + proxy, hubserve, S3. Ctrl-C stops it.
up: $(STAMP) $(CHP)
	$(PY) dev/up.py

test-hub: $(STAMP) $(CHP)
	$(PY) -m pytest tests/hub_service tests/jupyter_extension -p no:cacheprovider

# The Jupyter server extension against a live standalone hub_service; pytest-jupyter's plugin
# has no entry point, so it is loaded here (it must not load into the hub tests).
test-server-ext: $(STAMP)
	$(PY) -m pytest tests/jupyter_server_ext -p no:cacheprovider -p pytest_jupyter.jupyter_server

clean:
	rm -rf $(VENV) .hubserve build *.egg-info .pytest_cache .mypy_cache .ruff_cache
