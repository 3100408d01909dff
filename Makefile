# director: install what is missing, build the virtualenv, lint, test, demo, bench.
#
#   make demo   installs what is missing and runs the NAT demo in namespaces (root)
#   make test   installs what is missing, lints and runs every test (root for netns tests)
#   make bench  prints requests/s: director NAT vs HAProxy vs nftables DNAT vs direct (root)
#
# Everything that sends traffic runs inside network namespaces it creates and removes.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS := --disable-pip-version-check --no-input -q
PYTEST_ARGS ?=
BENCH_ARGS ?=

# Debian packages the project needs at run, test and bench time.
DEB_PACKAGES := iptables ipset nftables conntrack iproute2 libnetfilter-queue-dev \
	libnfnetlink-dev build-essential python3-venv curl socat apache2-utils haproxy \
	systemd prometheus

.PHONY: all deps venv lint test demo bench clean

all: test

# Install, with one `apt-get update` at most, only the packages that are missing.
# python3-dev only when the python3 in use has no Python.h (pyenv builds ship their own).
deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "install ok installed" \
			|| missing="$$missing $$p"; \
	done; \
	if ! $(PYTHON) -c 'import os, sysconfig, sys; \
		sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
		2>/dev/null; then \
		dpkg-query -W -f='$${Status}' python3-dev 2>/dev/null | grep -q "install ok installed" \
			|| missing="$$missing python3-dev"; \
	fi; \
	if [ -z "$$missing" ]; then echo "deps: all Debian packages present"; exit 0; fi; \
	echo "deps: installing$$missing"; \
	if [ "$$(id -u)" != 0 ]; then echo "deps: run as root to install$$missing" >&2; exit 1; fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -q && apt-get install -y -q --no-install-recommends $$missing

# The virtualenv is rebuilt only when pyproject.toml changes.
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) -e '.[test]'
	@touch $@

LINT_PATHS := director tests bench

lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy --strict director

test: deps venv lint
	@if [ "$$(id -u)" != 0 ]; then echo "test: not root: the netns tests will be skipped" >&2; fi
	$(VENV)/bin/pytest -ra $(PYTEST_ARGS)

demo: deps venv
	$(PY) -m director.lab demo

bench: deps venv
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
