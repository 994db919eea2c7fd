# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv when absent.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all benchmark clean

# Install the package with the tested pins from constraints.txt (ranges live in pyproject.toml).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Fine-tune the embedded demo with tCURLoRA and print held-out metrics.
demo: $(STAMP)
	$(PY) scripts/train.py --config configs/demo_tcur.yaml

# The fast suite (what CI runs); slow end-to-end tests are marked `slow`.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

benchmark: $(STAMP)
	$(PY) scripts/benchmark_adapters.py

clean:
	rm -rf $(VENV) .pytest_cache
