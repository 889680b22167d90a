# Two commands on a fresh clone: `make demo` and `make test`. Each creates .venv if needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: demo test notebooks lint bench evaluate consistency install clean

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

test: lint
	$(BIN)/pytest -q $(ARGS)

# Every notebook, top to bottom, on small settings (DEEPVID_NOTEBOOK_QUICK=1).
notebooks: $(BIN)/.installed
	$(BIN)/pytest -q -m notebooks tests/test_notebooks.py $(ARGS)

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
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
