# The two commands the README opens with: `make serve` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install serve test lint clean

$(BIN)/callsctl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/callsctl

install: $(BIN)/callsctl

serve: install
	$(BIN)/callsctl serve

lint: install
	$(BIN)/ruff check callsctl callsctl_sfu tests bench

test: install lint
	$(BIN)/pytest -q -ra

clean:
	rm -rf $(VENV) build *.egg-info
