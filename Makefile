# Agent Forge — `make help` lists the targets.
PY ?= python
PYTEST ?= $(PY) -m pytest

.PHONY: help install test test-slow test-faults run pipeline sweep bench lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' Makefile | awk 'BEGIN{FS=":.*## "}{printf "  %-12s %s\n", $$1, $$2}'

install:  ## install torch (CPU build), the project with its dev extras, the native BitNet kernel, and bubblewrap (the sandbox) when root
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev]"
	$(PY) -c "import sys; from agentforge.quant.native import main; sys.exit(main())"
	@if command -v bwrap >/dev/null 2>&1; then echo "bubblewrap: $$(command -v bwrap)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) \
	  || echo "warning: could not install bubblewrap; untrusted code (phase=scaling, codegen) will be refused until it is installed"; \
	else echo "warning: bubblewrap (bwrap) is missing; install it (e.g. sudo apt-get install bubblewrap) or untrusted code (phase=scaling, codegen) will be refused"; fi

test:  ## the default suite (fast tier, what CI runs)
	$(PYTEST) -m "not slow" -q --durations=25

test-slow:  ## the long end-to-end tests
	$(PYTEST) -m slow -q

test-faults:  ## crash/resume, bad-input and sandbox-attack tests
	$(PYTEST) -m faults -q

run:  ## Cognate model m1 at CPU defaults (the main job is make pipeline)
	$(PY) -m agentforge phase=cognate model=m1

pipeline:  ## all four phases chained
	$(PY) -m agentforge phase=pipeline

sweep:  ## the three Cognate models as a multirun
	$(PY) -m agentforge -m phase=cognate model=m1,m2,m3

bench:  ## every benchmark but grokking, printing its figures (and the GPU figures where a CUDA GPU is visible); stops at the first that fails. Grokking runs on its own: python benchmarks/bench_grokking.py (CPU ~12 min, lower bounds; H200 ~6 min)
	@for b in benchmarks/bench_*.py; do case $$b in *bench_grokking.py) continue;; esac; \
	  echo "== $$b"; $(PY) $$b || exit 1; done
	@echo "== benchmarks/bench_grokking.py: not run here (python benchmarks/bench_grokking.py: ~12 min on a 2-core CPU, lower bounds only; ~6 min on an H200)"
	@if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
	  bash benchmarks/gpu_figures.sh kernels && bash benchmarks/gpu_figures.sh pipeline; \
	else echo "== GPU figures: no CUDA GPU visible here (benchmarks/gpu_figures.sh kernels|pipeline on a GPU machine)"; fi

lint:  ## ruff
	$(PY) -m ruff check agentforge tests benchmarks scripts

clean:  ## remove outputs and caches
	rm -rf outputs multirun wandb .pytest_cache .hypothesis
