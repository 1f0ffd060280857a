# openmm-geom: every target creates/refreshes the virtual environment and the native build itself.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# CPU threads for torch and OpenMM (see docs/export-contract.md, "Threads").
export OPENMM_GEOM_THREADS ?= 2

NATIVE_SOURCES := $(shell find cpp -type f) CMakeLists.txt pyproject.toml

.PHONY: demo test test-slow bench native venv clean

demo: $(VENV)/.native
	$(VENV)/bin/openmm-geom demo --out demo-out

test: $(VENV)/.native
	$(PY) -m pytest -q -m "not slow" -p no:cacheprovider

test-slow: $(VENV)/.native
	$(PY) -m pytest -q -m slow -p no:cacheprovider

bench: $(VENV)/.native $(VENV)/.bench-deps
	$(PY) benchmarks/run_all.py --out benchmarks/results

venv: $(VENV)/.deps

# torch first and alone: the native build compiles against it without build isolation.
$(VENV)/.deps: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$$(grep -E '^torch==' requirements.txt)"
	$(PIP) install -q -r requirements.txt
	touch $@

$(VENV)/.bench-deps: requirements-bench.txt $(VENV)/.deps
	$(PIP) install -q -r requirements-bench.txt -c requirements.txt
	touch $@

$(VENV)/.native: $(VENV)/.deps $(NATIVE_SOURCES)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	$(PY) -c "import openmm_geom._native as n; assert n.torch_selftest() == 12.0"
	touch $@

native: $(VENV)/.native

clean:
	rm -rf build $(VENV) *.egg-info
