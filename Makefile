# The two commands of the README: `make suite` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: suite test test-all bench tables clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade "pip>=23.1" >/dev/null
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

suite: $(STAMP)
	$(PY) tools/run_suite.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q -m "" $(ARGS)

tables: $(STAMP)
	$(PY) tools/make_tables.py --results results $(ARGS)

bench: $(STAMP)
	$(PY) tools/bench_speed.py $(ARGS)

clean:
	rm -rf runs .pytest_cache
