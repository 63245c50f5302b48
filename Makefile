# The two commands a newcomer runs (see README.md):
#   make demo   set up .venv, render the example templates with the file/env providers into ./out
#   make test   set up .venv, run ruff, mypy --strict and the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --disable-pip-version-check -e '.[dev]'
	touch $@

demo: $(STAMP)
	@chmod 600 examples/secrets.yaml  # a secrets file readable by others gets a file.exposed warning
	SMAGENT_DEMO_API_TOKEN=demo-token-from-env $(BIN)/smagent --config examples/smagent.yaml render --once
	@echo
	@echo "== written files (mode, owner, path)"
	@find out -type f -exec stat -c '%A %U:%G %n' {} + | sort -k3
	@echo
	@echo "== out/replicant/conn/mysql.yaml (the Arcion file, tokens replaced)"
	@cat out/replicant/conn/mysql.yaml
	@echo
	@echo "== a second pass changes nothing:"
	SMAGENT_DEMO_API_TOKEN=demo-token-from-env $(BIN)/smagent --config examples/smagent.yaml render --dry-run

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
