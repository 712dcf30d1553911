# SD Studio — `make run` starts the studio, `make test` runs the whole suite. Both build .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export GRADIO_ANALYTICS_ENABLED ?= False
export HF_HUB_DISABLE_TELEMETRY ?= 1

.PHONY: install install-dev run serve test test-fast bench peer-venv lint clean-cache

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and alone, pinned: an unpinned torch would pull a multi-GB CUDA build on CPU machines.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	touch $@

install-dev: $(VENV)/.installed-dev

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PIP) install -q -r requirements-dev.txt
	touch $@

run: install
	$(PY) app.py $(ARGS)

serve: install
	$(PY) -m studio.serving --host 127.0.0.1 --port 8080 $(ARGS)

test: install-dev
	# One torch thread per process: tests run servers beside the test process, and 2 threads on 2 shared cores
	# thrash (10-50x slower, identical pixels). Two test processes (pytest-xdist), each file's tests in one of them;
	# ARGS="-n 0" runs in this process (e.g. to debug one test).
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile $(ARGS)

bench: install-dev
	HF_HUB_OFFLINE=1 $(PY) -m bench $(ARGS)

# The peer for `python -m bench --only peer` (bench/peer.py): optimum-intel in its own venv, .peer-venv.
PEER_VENV ?= .peer-venv
peer-venv: $(PEER_VENV)/.installed

$(PEER_VENV)/.installed: requirements-peer.txt
	test -x $(PEER_VENV)/bin/python || python3 -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install -q --upgrade pip
	$(PEER_VENV)/bin/python -m pip install -q torch==2.13.0
	$(PEER_VENV)/bin/python -m pip install -q --no-deps -r requirements-peer.txt
	touch $@

lint: install-dev
	$(PY) -m ruff check studio tests app.py bench

clean-cache:
	rm -rf .cache
