# The two commands the README opens with: `make serve` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Test files run on this many workers (pytest-xdist; a file stays on one worker so its
# module fixtures start once). 0 runs them in this process, one after another.
TEST_WORKERS ?= 2

.PHONY: install serve test lint typecheck clean docs dist

$(BIN)/callsctl: pyproject.toml setup.py callsctl_sfu/rtc/_fanout.c callsctl_sfu/rtc/_ingress.c callsctl_sfu/rtc/_fanout.h \
		callsctl_sfu/rtc/_iceanswer.c callsctl_sfu/rtc/_iceanswer.h callsctl_sfu/rtc/_recvpump.c
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/callsctl

install: $(BIN)/callsctl

serve: install
	$(BIN)/callsctl serve

lint: install
	$(BIN)/ruff check callsctl callsctl_sfu tests bench tools

# mypy against tools/typecheck_baseline.json: no file may gain type errors (a ratchet).
# After merging moved code: $(BIN)/python -m tools.typecheck --update --accept
typecheck: install
	$(BIN)/python -m tools.typecheck

test: install lint typecheck
	$(BIN)/pytest -q -ra --durations=20 -n $(TEST_WORKERS) --dist loadfile

# Regenerate completions/, man/callsctl.1 and README's generated blocks from the CLI.
docs: install
	$(BIN)/python -m tools.gen_docs

# The wheel and dist/callsctl, one executable file that needs only Python 3.11.
dist: install
	$(BIN)/python -m tools.build_dist

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache
