# `make demo` and `make test` each set up everything they need on a fresh machine first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Re-install only when the package's dependencies change.
INSTALLED := $(VENV)/.mmst-installed
# Nothing in the demo or the tests may reach the Hugging Face Hub.
export HF_HUB_OFFLINE := 1

.PHONY: install demo test bench clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --editable ".[dev]"
	touch $@

demo: install
	$(BIN)/mmst train-embed

test: install
	$(BIN)/python -m pytest

# mmst against plain Sentence Transformers baselines, side by side (see docs/benchmarks.md).
bench: install
	BENCH_PYTHON=$(BIN)/python sh bench/run_all.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
