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

# Fine-tune the embedded demo with each of the five modes (same encoder, data, seed and budget), then print the
# comparison table (runs/demo/comparison/: comparison.md/.csv/.tex, pareto.png). Finished runs are skipped on a rerun.
DEMO_METHODS := full,decoder_only,lora,trm,tcurlora
demo: $(STAMP)
	$(PY) scripts/sweep.py --config configs/demo_tcur.yaml --methods $(DEMO_METHODS) --seeds 0 \
		--method-set lora:adapter.rank=2 --out runs/demo

# The fast suite (what CI runs); slow end-to-end tests are marked `slow`.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

benchmark: $(STAMP)
	$(PY) scripts/benchmark_adapters.py

clean:
	rm -rf $(VENV) .pytest_cache
