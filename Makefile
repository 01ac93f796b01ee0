# Two commands do everything on a fresh machine (Python >= 3.10, no GPU needed):
#   make demo   installs into .venv and runs the end-to-end demo on built-in synthetic DICOMs
#   make test   installs into .venv (with the dev extra) and runs lint + the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo_out

.PHONY: install demo test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/xraytriage demo --out $(DEMO_OUT)

lint: install
	$(BIN)/ruff check src tests scripts notebooks

test: install lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache

# Mutation testing of the clinical core (slow, so not part of `test`; see docs/testing.md).
# `make mutation MODULE=src/xraytriage/evaluation/fairness.py` runs one module.
MUTATION_JOBS ?= 2
.PHONY: mutation
mutation: install
	$(BIN)/python scripts/mutation.py --jobs $(MUTATION_JOBS) $(if $(MODULE),--module $(MODULE))
