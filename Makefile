# Fresh machine: `make reproduce` (sets up, runs every notebook, quick profile) or `make test`.
# The Python version is pyproject.toml's requires-python (">=3.11,<3.12" gives python3.11).
PYTHON ?= python$(shell sed -n 's/^requires-python = ">=\([0-9.]*\).*/\1/p' pyproject.toml)
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
# glibc keeps freed activation memory for reuse (fadenet/runtime.py says why) in every process
# make starts: the CLI, pytest, Jupyter and their kernels.
export MALLOC_MMAP_THRESHOLD_ ?= 2147483647
export MALLOC_TRIM_THRESHOLD_ ?= 2147483647

.PHONY: setup reproduce test test-fast lab clean

setup: $(VENV)/.installed

# Re-installs when the dependency list changes.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

# The extras each target needs on top of setup: [test] (pytest, nbval, selenium), [lab] (JupyterLab).
$(VENV)/.%-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[$*]"
	touch $@

# The reference profile's outputs are the committed ones: its notebooks are written back.
reproduce: setup
	$(PY) -m fadenet reproduce --profile $(PROFILE) $(if $(filter reference,$(PROFILE)),--inplace)

# Unit tests plus nbval over every notebook in the smoke profile. Only cells tagged
# nbval-check-output have their outputs compared (the rest depend on data and timing).
# JupyterLab too: tests/test_runner.py and tests/test_browser.py serve the notebooks with it.
test: $(VENV)/.test-installed $(VENV)/.lab-installed
	FADENET_PROFILE=smoke $(PY) -m pytest tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider

# The edit-test loop: unit tests without training, notebooks, real data or the browser.
test-fast: $(VENV)/.test-installed
	FADENET_PROFILE=smoke $(PY) -m pytest tests -m "not slow and not aaf and not browser" -p no:cacheprovider -q

lab: $(VENV)/.lab-installed
	$(VENV)/bin/jupyter lab --allow-root notebooks/

clean:
	rm -rf runs data/cache data/splits .pytest_cache
