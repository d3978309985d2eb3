# Fresh machine: `make reproduce` (sets up, runs every notebook, quick profile) or `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= quick

.PHONY: setup reproduce test test-fast lab clean

setup: $(VENV)/.installed

# Re-installs when the dependency list changes. facenet-pytorch (the MTCNN face detector and its
# weights) is installed without its dependencies: its metadata pins torch 2.2, while the detector
# runs on the torch pinned here (tests/test_detect.py).
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	$(PY) -m pip install --quiet --no-deps facenet-pytorch==2.6.0
	touch $@

# The reference profile's outputs are the committed ones: its notebooks are written back.
reproduce: setup
	$(PY) -m fadenet reproduce --profile $(PROFILE) $(if $(filter reference,$(PROFILE)),--inplace)

# Unit tests plus nbval over every notebook in the smoke profile. Only cells tagged
# nbval-check-output have their outputs compared (the rest depend on data and timing).
test: setup
	FADENET_PROFILE=smoke $(PY) -m pytest tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider

# The edit-test loop: unit tests without training, notebooks, real data or the browser.
test-fast: setup
	FADENET_PROFILE=smoke $(PY) -m pytest tests -m "not slow and not aaf and not browser" -p no:cacheprovider -q

lab: setup
	$(VENV)/bin/jupyter lab --allow-root notebooks/

clean:
	rm -rf runs data/cache data/splits .pytest_cache
