# Two commands do everything on a fresh machine (Python >= 3.10, no GPU needed):
#   make demo   installs into .venv and runs the end-to-end demo on built-in synthetic DICOMs
#   make test   installs into .venv (with the dev extra) and runs lint, the format check and the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo_out

# Debian packages the DICOM tests use: dciodvfy (dicom3tools) validates every object we write, Orthanc
# (+ its DICOMweb plugin) is the PACS of the integration tests, dcmtk the reference DICOM toolkit.
# `make test` installs them when it can (root with apt-get, as in CI); elsewhere those tests skip.
TEST_DEBS ?= orthanc orthanc-dicomweb dicom3tools dcmtk

.PHONY: install demo test test-debs lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/xraytriage demo --out $(DEMO_OUT)

lint: install
	$(BIN)/ruff check src tests scripts notebooks
	$(BIN)/ruff format --check src tests scripts notebooks

test-debs:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(TEST_DEBS) \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(TEST_DEBS); } \
		|| echo "could not install $(TEST_DEBS): the DICOM validator / PACS tests will skip"; \
		if command -v systemctl >/dev/null 2>&1; then systemctl disable --now orthanc 2>/dev/null || true; fi; \
	else \
		echo "not root or no apt-get: not installing $(TEST_DEBS); tests needing them skip"; \
	fi

test: install lint test-debs
	$(BIN)/pytest

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache

# Mutation testing of the clinical core (slow, so not part of `test`; see docs/testing.md).
# `make mutation MODULE=src/xraytriage/evaluation/fairness.py` runs one module.
MUTATION_JOBS ?= 2
.PHONY: mutation
mutation: install
	$(BIN)/python scripts/mutation.py --jobs $(MUTATION_JOBS) $(if $(MODULE),--module $(MODULE))
