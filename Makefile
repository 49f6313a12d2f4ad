# bertpretrain: install, train, test, lint, bench.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# The CPU build of torch; on a GPU machine install the CUDA build first (README) and
# `make install` keeps it.
TORCH ?= torch==2.13.0

.PHONY: install train test test-fast lint format bench clean

install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH)"
	$(PIP) install -e ".[dev]"
	@command -v pyenv >/dev/null 2>&1 && pyenv rehash || true

train:
	bertpretrain train model=tiny $(ARGS)

test:
	$(PYTHON) -m pytest -q

# Everything but the tests marked slow (long end-to-end runs): the loop while you work.
test-fast:
	$(PYTHON) -m pytest -q -m "not slow"

lint:
	$(PYTHON) -m ruff check src tests scripts
	$(PYTHON) -m ruff format --check src tests scripts

format:
	$(PYTHON) -m ruff format src tests scripts
	$(PYTHON) -m ruff check --fix src tests scripts

bench:
	$(PYTHON) scripts/bench.py $(ARGS)  # transformers comes with the dev/bench extra

clean:
	rm -rf build dist .pytest_cache .ruff_cache
