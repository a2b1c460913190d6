# Two commands for a newcomer: `make demo` and `make test`. Both create .venv if it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.advlab-installed
ROBUSTBENCH ?= robustbench==1.1.1

.PHONY: demo test setup system-deps lint bench-deps

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	# torch from the local wheel cache (uv/poetry would download gigabytes)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test,report,samples,onnx,hf,robustbench]'
	# RobustBench's model zoo without its pins (timm==1.0.9 would change timm's preprocessing): docs/models_data.md
	$(PY) -m pip install -q --no-deps $(ROBUSTBENCH)
	touch $(STAMP)

setup: $(STAMP)

system-deps:
	bash scripts/install-system-deps.sh

# A killed demo resumes, even after an advlab upgrade; --replace starts over if settings or record versions changed.
demo: setup
	$(VENV)/bin/advlab reproduce --out runs/demo --replace

test: setup system-deps
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

bench-deps: setup
	$(PY) -m pip install -q -e '.[bench,report,samples]'
	$(PY) -m pip install -q --no-deps adv-lib
