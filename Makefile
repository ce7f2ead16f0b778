# `make test` and `make demo` each create .venv/ (reused when present) and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-test
# Test workers (pytest-xdist); each takes whole test files, so module fixtures build once.
TEST_WORKERS ?= 2

.PHONY: test demo bench install clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25 tests

demo: $(STAMP)
	$(PY) -m prompt_jax demo

bench: $(STAMP)
	$(PY) -m prompt_jax bench

clean:
	rm -rf $(VENV) build *.egg-info
