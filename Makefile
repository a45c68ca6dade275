# Every target installs what it needs first; `make run` and `make test` work on a fresh checkout.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
NODE_TOOLS := .ci/asyncapi

LOCKS  := requirements/tools.lock requirements/dev.lock requirements/service.lock requirements/build.lock

.PHONY: install lock run test lint format generate check-generated validate-contract docs bench k8s-check clean

install: $(VENV)/.installed

# Exactly the locked versions, each checked against its hash: first the tools (pip, uv,
# packaging, editables), then the check that the locks match pyproject.toml (a stale lock
# stops here, before anything else is installed), then dev.lock (runtime, the dev and tracing extras, the build
# backend), then the project itself without dependencies or an isolated build environment.
$(VENV)/.installed: pyproject.toml requirements/check.py $(LOCKS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements/tools.lock
	$(BIN)/python requirements/check.py
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# requirements/*.lock from pyproject.toml with uv (pinned in requirements/tools.in): every
# platform and Python >= 3.11 in one file (--universal), with hashes. Versions already in a
# lock are kept unless pyproject.toml rules them out; UPGRADE=1 takes the newest allowed.
# dev.lock first; the others are constrained to its versions (the image runs what CI tested).
UV_COMPILE = $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade)
BUILD_REQUIRES = $(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'

lock:  ## regenerate requirements/*.lock from pyproject.toml (UPGRADE=1: newest versions)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements/tools.lock
	$(BUILD_REQUIRES) | $(UV_COMPILE) pyproject.toml - --extra dev --extra tracing -o requirements/dev.lock
	$(UV_COMPILE) pyproject.toml --extra tracing -c requirements/dev.lock -o requirements/service.lock
	$(BUILD_REQUIRES) | $(UV_COMPILE) - -c requirements/dev.lock -o requirements/build.lock
	$(UV_COMPILE) requirements/tools.in -c requirements/dev.lock -o requirements/tools.lock
	$(BIN)/python requirements/check.py

# AUTH_DISABLED=true: every command is accepted without an API key (the service warns
# `auth_disabled` at start); without keys or it, the service refuses to start.
run: install  ## run the service with the embedded defaults, auth disabled (development only)
	AUTH_DISABLED=true $(BIN)/print-service run

test: install  ## unit and integration tests (brokers: see README)
	$(BIN)/pytest

lint: install  ## ruff and mypy strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy service tests bench deploy/k8s/check.py deploy/mosquitto/make_credentials.py deploy/rabbitmq/make_users.py deploy/compose/make_env.py requirements/check.py

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

generate: install  ## regenerate service/models.py from asyncapi.yaml
	$(BIN)/datamodel-codegen --output service/models.py  # options: [tool.datamodel-codegen]

# PUPPETEER_SKIP_DOWNLOAD: the HTML template depends on puppeteer (for PDFs only), which would
# otherwise download a browser.
$(NODE_TOOLS)/node_modules/.installed: $(NODE_TOOLS)/package.json
	cd $(NODE_TOOLS) && PUPPETEER_SKIP_DOWNLOAD=1 npm install --no-fund --no-audit --loglevel=error
	touch $@

validate-contract: $(NODE_TOOLS)/node_modules/.installed  ## official AsyncAPI validator
	$(NODE_TOOLS)/node_modules/.bin/asyncapi validate asyncapi.yaml --fail-severity=warn

# The official AsyncAPI templates, installed in $(NODE_TOOLS) and passed by absolute path (the
# generator takes a relative one for a package name and tries to install it from the registry).
# Offline: an empty --registry-url keeps the generator from asking npm about them, and the
# analytics file turns the cli's usage metrics off, so that `make docs` sends nothing.
DOCS_FLAGS := --registry-url= --no-interactive --force-write
DOCS_ENV   := ASYNCAPI_METRICS_CONFIG_PATH=$(CURDIR)/$(NODE_TOOLS)/analytics-off.json SUPPRESS_NO_CONFIG_WARNING=1
TEMPLATES  := $(CURDIR)/$(NODE_TOOLS)/node_modules/@asyncapi

docs: $(NODE_TOOLS)/node_modules/.installed  ## the contract as HTML and Markdown (official AsyncAPI templates, offline) in build/docs/
	rm -rf build/docs
	$(DOCS_ENV) $(NODE_TOOLS)/node_modules/.bin/asyncapi generate fromTemplate asyncapi.yaml $(TEMPLATES)/html-template -o build/docs/html $(DOCS_FLAGS)
	$(DOCS_ENV) $(NODE_TOOLS)/node_modules/.bin/asyncapi generate fromTemplate asyncapi.yaml $(TEMPLATES)/markdown-template -o build/docs/markdown $(DOCS_FLAGS)

bench: install  ## throughput, latency and memory against the raw-bridge ceiling
	$(BIN)/python -m bench.run $(BENCH_ARGS)

k8s-check: install  ## render every kustomize overlay and validate it offline
	$(BIN)/python deploy/k8s/check.py

clean:
	rm -rf $(VENV) build .mypy_cache .ruff_cache .pytest_cache $(NODE_TOOLS)/node_modules
