# Two commands for a fresh machine: `make demo` and `make test`. Each creates
# the virtualenv and installs what it needs first (the model extra too: the
# tests and the demo run the real reference model); nothing is installed by hand.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,model,telemetry,plots,cluster]'
	touch $@

test: lint
	$(PY) -m pytest

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
	$(PY) bench/fidelity.py
	$(PY) bench/fidelity_modeled.py
	$(PY) bench/overload.py
	$(PY) bench/slow_clients.py
	$(PY) bench/cluster.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
