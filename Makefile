# `make demo` and `make test` each set up everything they need on a fresh machine first, from the
# lock (requirements.lock), so a fresh clone installs exactly what the suite last passed with.
# `make test-latest` runs the same suite on the newest releases pyproject.toml allows;
# `make lock` moves the lock to them (run `make test` before committing it). See docs/install.md.
PYTHON ?= python3
VENV ?= .venv
LATEST_VENV ?= .venv-latest
BIN := $(VENV)/bin
LOCK := requirements.lock
# uv installs from the same registries as pip, in parallel: a fresh `make test` set-up takes
# about 40 s instead of pip's 3.5 minutes (docs/install.md). It lives in its own small venv so
# that syncing the project's venv to the lock never removes it.
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
# Re-install only when the lock or the package's metadata changes.
INSTALLED := $(VENV)/.mmst-installed
# Nothing in the demo or the tests may reach the Hugging Face Hub.
export HF_HUB_OFFLINE := 1
# uv uses the machine's Python; it must never try to download one.
export UV_PYTHON_DOWNLOADS := never
# Compile .pyc files at install, as pip does and uv by default does not. Where
# PYTHONDONTWRITEBYTECODE is set (CI images, this project's machines), Python would otherwise
# recompile every module on every start: `import sentence_transformers` took 36 s instead of 12 s,
# and the suite's subprocesses paid it each time (docs/install.md).
export UV_COMPILE_BYTECODE := 1

.PHONY: install demo test test-latest lock bench clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet uv==$(UV_VERSION)

install: $(INSTALLED)

# A venv made by Python itself keeps pip, for extras such as `.venv/bin/pip install -e ".[flash]"`.
$(INSTALLED): pyproject.toml $(LOCK) | $(UV)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(UV) pip sync --quiet --python $(BIN)/python $(LOCK)
	$(UV) pip install --quiet --python $(BIN)/python --no-deps --editable .
	touch $@

demo: install
	$(BIN)/mmst train-embed

test: install
	$(BIN)/python -m pytest

# The newest releases the ranges in pyproject.toml allow, in a venv of their own; --refresh so a
# cached index cannot hide a release from yesterday.
test-latest: | $(UV)
	test -x $(LATEST_VENV)/bin/python || $(PYTHON) -m venv $(LATEST_VENV)
	$(UV) pip install --quiet --python $(LATEST_VENV)/bin/python --upgrade --refresh --editable ".[dev]"
	$(UV) pip list --python $(LATEST_VENV)/bin/python | grep -E '^(sentence-transformers|transformers|torch|datasets) '
	$(LATEST_VENV)/bin/python -m pytest

# One lock for every platform and Python the package supports (markers pick per machine).
lock: | $(UV)
	$(UV) pip compile pyproject.toml --extra dev --universal --python-version 3.10 --upgrade --quiet -o $(LOCK)

# mmst against plain Sentence Transformers baselines, side by side (see docs/benchmarks.md).
bench: install
	BENCH_PYTHON=$(BIN)/python sh bench/run_all.sh

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(TOOLS) build *.egg-info .pytest_cache
