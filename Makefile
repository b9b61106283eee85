# Each target sets itself up on a fresh machine: a virtual environment in .venv with everything pinned.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= demo-out

.PHONY: demo test test-all bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[test,demo]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/featcache demo --out $(OUT)

# The default suite (about 75 s); PYTEST_ARGS='-m "slow or not slow"' adds the slow end-to-end tests.
test: $(VENV)/.installed
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Everything, the slow end-to-end tests included (what CI runs).
test-all: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "slow or not slow"

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/accuracy.py
	$(BIN)/python benchmarks/speed.py
	$(BIN)/python benchmarks/stage2.py
	$(BIN)/python benchmarks/memory.py

clean:
	rm -rf $(VENV) $(OUT) *.egg-info
