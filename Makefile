# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv, install everything (torch pinned first so pip never pulls CUDA wheels), then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed
LOCK := constraints.txt
LOCK_VENV := .venv-lock

.PHONY: demo test install benchmark lock clean

# Installs exactly the versions in $(LOCK), the set the suite and the benchmarks passed with.
$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -c $(LOCK) "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -c $(LOCK) -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/emt demo --out runs/demo

# Two pytest workers (xdist): much of the suite waits on Ray processes, nodes and jobs starting. Tests that share an
# expensive fixture (the trained base, a module's run) run on one worker (xdist_group); tests/conftest.py gives each
# worker one torch thread.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

benchmark: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

# Refresh the lock: resolve pyproject.toml's ranges anew in a scratch venv and freeze the result; then `make test`
# (and `make benchmark`) on it before committing $(LOCK).
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --upgrade pip setuptools wheel
	$(LOCK_VENV)/bin/python -m pip install "torch==$(TORCH_VERSION)"
	$(LOCK_VENV)/bin/python -m pip install -e ".[test]"
	{ sed -n '1,3p' $(LOCK); $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) $(LOCK_VENV) runs .pytest_cache
