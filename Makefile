# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv when absent.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo baselines test test-all benchmark clean

# Install the package with the tested pins from constraints.txt (ranges live in pyproject.toml).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Fine-tune the embedded demo with each of the five modes (same encoder, decoder, data, seed and budget; each method
# from its own configs/demo_*.yaml), then print the comparison table against decoder_only (runs/demo/comparison/:
# comparison.md/.csv/.tex, pareto.png). Finished runs are skipped on a rerun.
DEMO_CONFIGS := full:configs/demo_full.yaml decoder_only:configs/demo_decoder_only.yaml lora:configs/demo_lora.yaml \
	trm:configs/demo_trm.yaml tcurlora:configs/demo_tcur.yaml
demo: $(STAMP)
	$(PY) scripts/sweep.py --config configs/demo_tcur.yaml --methods full,decoder_only,lora,trm,tcurlora --seeds 0 \
		--method-config $(DEMO_CONFIGS) --reference decoder_only --out runs/demo \
		--title "Demo: ViT-Tiny from a synthetic source task to synthetic lesions"

# Every method that fits a ViT on the demo's ViT-Tiny at one adapter budget (55,000 parameters, 1 % of the encoder; each
# method's size knob chosen to fit it), seed 0, each method at its registry learning rate (not tuned), with the same
# data, decoder and schedule as `make demo`; the table and Pareto plot go to runs/baselines/comparison/. Finished runs
# are skipped on a rerun. Wall time on 2 CPU cores: not timed yet; about 25 min expected (23 runs at make demo's
# minute per run).
BASELINE_METHODS := full,decoder_only,lora,trm,tcurlora,houlsby,adaptformer,vpt,ssf,bitfit,norm,pissa,curlora,lotr,dora,loha,lokr,oft,boft,hra,vera,adalora,ia3
baselines: $(STAMP)
	$(PY) scripts/sweep.py --config configs/demo_tcur.yaml --methods $(BASELINE_METHODS) --seeds 0 --budget 55000 \
		--set optim.encoder_lr=null --reference decoder_only --out runs/baselines \
		--title "Demo ViT-Tiny: every method at a 55,000-parameter adapter budget"

# The fast suite (what CI runs); slow end-to-end tests are marked `slow`.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

benchmark: $(STAMP)
	$(PY) scripts/benchmark.py

clean:
	rm -rf $(VENV) .pytest_cache
