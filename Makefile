# lossbench: `make demo` runs the benchmark on the built-in synthetic dataset, `make test` the tests.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
TORCH_VERSION ?= 2.13.0
# Editable for development; `make test EDITABLE=` installs the package as a user gets it (CI).
EDITABLE ?= -e
# Extras installed with the project; CI adds the optional ones so their tests run too.
EXTRAS ?= dev

.PHONY: install test test-slow demo lint bench clean

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q $(EDITABLE) ".[$(EXTRAS)]"

test: install
	$(PYTHON) -m pytest -q

test-slow: install
	$(PYTHON) -m pytest -q -m slow

demo: install
	$(PYTHON) -m lossbench compare --smoke --out runs/demo

lint:
	ruff check src tests bench
	ruff format --check src tests bench
	mypy

bench: install
	$(PYTHON) bench/preprocess.py
	$(PYTHON) bench/training.py
	$(PYTHON) bench/training.py --million-items
	$(PYTHON) bench/pretraining.py
	$(PYTHON) bench/softmax_chunk.py
	$(PYTHON) bench/bf16_profile.py

clean:
	rm -rf runs build dist .pytest_cache .ruff_cache .mypy_cache
