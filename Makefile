# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both create or refresh the virtual environment from pyproject.toml + constraints.txt (and EXTRAS below).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medfm-installed
EXTRAS ?= all,dev,bench-real,docs
PYTEST_ARGS ?=

.PHONY: venv demo test docs lint clean cpp

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/medfm-compress demo

# The documentation site (mkdocs.yml, docs/) into site/; --strict fails on a broken link or docstring. Offline.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# The docs build, then the whole suite, minute-scale (slow) tests included; a plain `pytest` skips those for a quick loop.
test: venv
	$(MAKE) docs
	$(BIN)/python -m pytest --run-slow $(PYTEST_ARGS)

# The C++ runtime (csrc/): library medfm_runtime + CLI build/cpp/medfm-run; `make test` builds and tests it too.
cpp: venv
	PYTHON=$(BIN)/python scripts/build_cpp_runtime.sh build/cpp

lint: venv
	$(BIN)/ruff check medfm_compress tests benchmarks
	$(BIN)/ruff format --check medfm_compress tests benchmarks

clean:
	rm -rf $(VENV) build site *.egg-info
