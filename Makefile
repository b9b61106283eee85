# Each target sets itself up on a fresh machine: a virtual environment with everything it needs.
#   make test       the default suite in .venv (latest releases; PYTEST_ARGS='-m "slow or not slow"' adds the slow tests)
#   make test-all   the whole suite in .venv, the slow end-to-end tests included
#   make test-min   the default suite in .venv-min, where every dependency is at the lower bound setup.cfg declares
PYTHON ?= python3
VENV ?= .venv
VENV_MIN ?= .venv-min
BIN := $(VENV)/bin
BIN_MIN := $(VENV_MIN)/bin
OUT ?= demo-out
# The torch this project is tested with; setup.cfg states only the lower bound the code needs.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-all test-min bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test,demo]'
	touch $@

# setup.cfg's install_requires with every `>=` turned into `==` (torch and torchvision: $(TORCH)); the test and demo
# extras resolve to releases that accept those pins.
$(VENV_MIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV_MIN)
	$(BIN_MIN)/python -m pip install -q --upgrade pip
	$(BIN_MIN)/python -c 'import configparser; c = configparser.ConfigParser(); c.read("setup.cfg"); \
	    print("\n".join(r.replace(">=", "==") for r in c["options"]["install_requires"].split() \
	                    if not r.startswith("torch")))' > $(VENV_MIN)/floors.txt
	$(BIN_MIN)/python -m pip install -q $(TORCH) -c $(VENV_MIN)/floors.txt -e '.[test,demo]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/featcache demo --out $(OUT)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-all: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "slow or not slow"

test-min: $(VENV_MIN)/.installed
	$(BIN_MIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/accuracy.py
	$(BIN)/python benchmarks/speed.py
	$(BIN)/python benchmarks/stage2.py
	$(BIN)/python benchmarks/memory.py

clean:
	rm -rf $(VENV) $(VENV_MIN) $(OUT) *.egg-info
