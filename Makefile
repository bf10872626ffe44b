# The two commands a newcomer needs: `make up` and `make test`. Both create or refresh the
# local virtual environment first (torch is pinned exactly: an open range pulls a CUDA build).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: up test lint typecheck unit test-hub test-server-ext test-lab labextension test-lab-unit \
	soak soak-ci venv clean models-user

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0" -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# The local backend runs every replica in a sandbox as this system user (never as root, never
# as the service's user). Created here when running as root, as `make up` and CI do; as
# another user, `make up` and the test hubs run models unsandboxed (make up says so).
MODELS_USER := hubserve-models
models-user:
	@if [ "$$(id -u)" = 0 ] && ! id -u $(MODELS_USER) >/dev/null 2>&1; then \
		useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
			--user-group $(MODELS_USER) && echo "created the system user $(MODELS_USER)"; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest tests/model_runtime tests/examples -p no:cacheprovider

test: lint typecheck unit test-hub test-server-ext test-lab labextension test-lab-unit soak-ci

# The JupyterLab panel (labextension/, TypeScript), built into a prebuilt extension in
# jupyter_extension/labextension/ (shipped in the wheel). npm ci runs when package.json or
# the lock file change, the build when a source changes; the venv's JupyterLab finds the
# build through a link in $(VENV)/share/jupyter/labextensions/. `jupyter labextension
# build` wants the core package file: without it, it fetches a metadata package that is not
# on npm. It calls jupyter-builder from PATH, hence the venv's bin/ in front.
LAB_SRC     := labextension
LAB_OUT     := jupyter_extension/labextension
LAB_NPM     := $(LAB_SRC)/node_modules/.hubserve-npm-ci
LAB_BUILT   := $(LAB_OUT)/.hubserve-build
LAB_SOURCES := $(shell find $(LAB_SRC)/src $(LAB_SRC)/style -type f 2>/dev/null) \
	$(LAB_SRC)/tsconfig.json $(LAB_SRC)/install.json
LAB_LINK    := $(VENV)/share/jupyter/labextensions/hubserve-labextension
LAB_CORE     = $(shell $(PY) -c 'import jupyterlab, pathlib; print(pathlib.Path(jupyterlab.__file__).parent / "staging" / "package.json")')

$(LAB_NPM): $(LAB_SRC)/package.json $(LAB_SRC)/package-lock.json
	cd $(LAB_SRC) && npm ci --no-audit --no-fund
	touch $@

$(LAB_BUILT): $(LAB_NPM) $(LAB_SOURCES) | $(STAMP)
	cd $(LAB_SRC) && npm run build:lib
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/jupyter labextension build \
		--core-package-file "$(LAB_CORE)" $(LAB_SRC)
	cp $(LAB_SRC)/install.json $(LAB_OUT)/install.json
	touch $@

labextension: $(LAB_BUILT)
	mkdir -p $(dir $(LAB_LINK))
	test "$$(readlink $(LAB_LINK))" = "$(abspath $(LAB_OUT))" || \
		{ rm -rf $(LAB_LINK) && ln -s "$(abspath $(LAB_OUT))" $(LAB_LINK); }

# Unit tests of the panel's data layer (Vitest, in Node; type-checks the tests first).
test-lab-unit: $(LAB_NPM)
	cd $(LAB_SRC) && npm test

# Everything that needs the live stack (a real JupyterHub, the service, replicas): hub_service
# and the notebook side (client, magics, widgets, a notebook run by nbclient), in one pytest
# run sharing one hub; its own run, because the jupyter_server pytest plugin clashes.
CHP := .hubserve/node/node_modules/.bin/configurable-http-proxy

$(CHP):
	npm install --prefix .hubserve/node --no-audit --no-fund configurable-http-proxy

# The whole stack on this machine (dev/up.py): JupyterHub + proxy, hubserve, S3. Ctrl-C stops it.
up: $(STAMP) $(CHP) labextension models-user
	$(PY) dev/up.py

test-hub: $(STAMP) $(CHP) models-user
	$(PY) -m pytest tests/hub_service tests/jupyter_extension -p no:cacheprovider

# The Jupyter server extension against a live standalone hub_service; pytest-jupyter's plugin
# has no entry point, so it is loaded here (it must not load into the hub tests).
test-server-ext: $(STAMP) models-user
	$(PY) -m pytest tests/jupyter_server_ext -p no:cacheprovider -p pytest_jupyter.jupyter_server

# The JupyterLab panel in a real Lab and Chromium (Debian's /usr/bin/chromium, driven by
# Playwright; never a downloaded browser) against a live standalone hub_service, plus the
# authentication of every server-extension route. Screenshots: tests/labextension/artifacts/
# (or $HUBSERVE_TEST_ARTIFACTS/labextension/).
test-lab: $(STAMP) labextension models-user
	$(PY) -m pytest tests/labextension -p no:cacheprovider

# Load on the whole stack (bench/soak.py): JupyterHub + proxy + hubserve + 2 iris replicas,
# 64 clients through the proxy for SOAK_SECONDS, then beyond the queue and rate limits.
# `make soak` (by hand, on a quiet machine: results in bench/results/) fails on any error, a
# crash, a growing RSS, a growing p99 or growing CPU per request. `make soak-ci` (in
# `make test`, results in $(SOAK_CI_OUT)) is the 2-minute version; it fails on the
# correctness rules only and reports the timing ones, which fail at random on shared VMs.
SOAK_SECONDS ?= 600
SOAK_CI_OUT  ?= .hubserve/soak-ci

soak: $(STAMP) $(CHP) models-user
	$(PY) bench/soak.py --seconds $(SOAK_SECONDS) --timing gate

soak-ci: $(STAMP) $(CHP) models-user
	HUBSERVE_BENCH_OUT=$(SOAK_CI_OUT) $(PY) bench/soak.py --seconds 120 --timing report

clean:
	rm -rf $(VENV) .hubserve build *.egg-info .pytest_cache .mypy_cache .ruff_cache \
		labextension/node_modules labextension/lib jupyter_extension/labextension
