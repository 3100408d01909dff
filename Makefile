# director: install what is missing, build the virtualenv, lint, test, demo, bench.
#
#   make demo   installs what the demo lacks and runs the NAT demo in namespaces (root)
#   make test   installs what the tests lack, lints and runs every test (root for netns tests)
#   make bench  installs what the benchmark lacks and prints requests/s and CPU per
#               request: director NAT, DR, TUN vs HAProxy vs nftables DNAT vs the NFQUEUE
#               accept-only ceiling vs direct, nginx real servers (root); then the
#               connection table at scale (make bench-table: that part alone, no root)
#
# Everything that sends traffic runs inside network namespaces it creates and removes.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS := --disable-pip-version-check --no-input -q
PYTEST_ARGS ?=
BENCH_ARGS ?=
TABLE_ARGS ?=

.PHONY: all deps deps-demo deps-test deps-bench venv lint test demo bench bench-table clean

all: test

# The Debian packages each command needs, installed only when missing (one `apt-get
# update` at most), with no packaged service left enabled or running: see
# .ci/install-deps for the lists.  `make deps` is what the tests need.
deps: deps-test

deps-demo deps-test deps-bench: deps-%:
	@PYTHON=$(PYTHON) .ci/install-deps $*

# The virtualenv is rebuilt only when pyproject.toml changes.  The demo and the
# benchmark need the project only ($(VENV)/.run); `make venv` (and the tests) add the
# test tools (pytest, hypothesis, mypy, ruff).
venv: $(VENV)/.installed

$(VENV)/.run: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) -e .
	@touch $@

$(VENV)/.installed: $(VENV)/.run
	$(PY) -m pip install $(PIP_FLAGS) -e '.[test]'
	@touch $@

LINT_PATHS := director tests bench

lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy --strict director

test: deps-test venv lint
	@if [ "$$(id -u)" != 0 ]; then echo "test: not root: the netns tests will be skipped" >&2; fi
	$(VENV)/bin/pytest -ra $(PYTEST_ARGS)

demo: deps-demo $(VENV)/.run
	$(PY) -m director.lab demo

bench: deps-bench $(VENV)/.run
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/table.py $(TABLE_ARGS)

bench-table: $(VENV)/.run
	$(PY) bench/table.py $(TABLE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
