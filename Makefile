# Two commands on a fresh clone: `make demo` and `make test`. Each creates .venv if needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: demo test notebooks docs docs-test lint bench evaluate consistency install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/deepvid demo $(ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check .

# Two workers (pytest-xdist): compiles and the tiny trainings are single-threaded, so the two
# cores of a small machine each take half of the suite.
test: lint
	$(BIN)/pytest -q -n 2 $(ARGS)

# Every notebook, top to bottom, on small settings (DEEPVID_NOTEBOOK_QUICK=1).
notebooks: $(BIN)/.installed
	$(BIN)/pytest -q -m notebooks tests/test_notebooks.py $(ARGS)

# The documentation (docs/): HTML with warnings as errors, the notebooks executed on their small
# settings (once: the doctest pass reuses jupyter-cache's outputs), then the doctests of the
# pages and docstrings. Offline: no intersphinx, CDN or web fonts. `make docs-test` then checks
# the built site in headless Chromium and runs every example of README.md and docs/.
# docs/constraints.txt is the pinned working set (installed as requirements, so the pins hold
# with or without the `docs` extra).
$(BIN)/.docs: $(BIN)/.installed docs/constraints.txt
	$(BIN)/python -m pip install -q -e '.[test,docs]' -r docs/constraints.txt
	touch $@

docs: $(BIN)/.docs
	rm -rf docs/_build/html docs/_build/doctest  # no stale pages; the notebooks stay cached
	DEEPVID_NOTEBOOK_QUICK=1 $(BIN)/sphinx-build -b html -W --keep-going -q \
		-d docs/_build/doctrees docs docs/_build/html
	DEEPVID_NOTEBOOK_QUICK=1 $(BIN)/sphinx-build -b doctest -W --keep-going -q \
		-d docs/_build/doctrees docs docs/_build/doctest

docs-test: $(BIN)/.docs
	$(BIN)/pytest -q -m docs tests/test_docs.py $(ARGS)

$(BIN)/.bench: $(BIN)/.installed
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $@

bench: $(BIN)/.bench
	$(BIN)/deepvid bench $(ARGS)

# Need trained checkpoints in runs/<dataset>/{teacher,vae}: see README, "Evaluation".
evaluate: $(BIN)/.bench
	$(BIN)/python benchmarks/evaluate.py $(ARGS)

consistency: $(BIN)/.installed
	$(BIN)/python benchmarks/consistency.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache docs/_build docs/_generated docs/notebooks
