#!/usr/bin/env bash
# Issue 16's GPU figures in one prepared run, for a session lent a device machine (its time is short: run this
# once, read the log, give the machine back). Usage, from the repository root on the GPU machine:
#
#   bash benchmarks/gpu_figures.sh kernels     # ~5 min: 25M bf16 training tokens/s vs a plain transformer
#                                              # (eager and compiled), cached generation, the CUDA sync tests
#   bash benchmarks/gpu_figures.sh pipeline    # ~8 min: default pipeline wall time, hardware=gpu then hardware=cpu
#                                              # (the GPU ÷ CPU ratio; the 16-core CPU there, not 2 cores)
#
# Every figure goes to stdout and to $OUT/gpu_figures_<part>.log ($OUT: the device tool's return folder; else
# ./outputs). Where the machine's image lacks the project's pure-Python dependencies (hydra-core, omegaconf,
# antlr4), copy them from this machine's site-packages into an ignored folder `.devdeps/` and carry it: the
# script puts it on PYTHONPATH. Each step has its own timeout so one slow step cannot eat the others' time.
set -u
part="${1:-kernels}"
case "$part" in kernels|pipeline) ;; *) echo "error: unknown part '$part': give kernels or pipeline" >&2; exit 2 ;; esac
out="${OUT:-outputs}"
mkdir -p "$out"
log="$out/gpu_figures_${part}.log"
[ -d .devdeps ] && export PYTHONPATH="$PWD/.devdeps:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=offline
step() {  # step <timeout s> <command...>: run it, log its output and exit status with the wall time
  local limit="$1"; shift
  echo "== $* (timeout ${limit}s)" | tee -a "$log"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tail -40 | tee -a "$log"
  echo "-- exit ${PIPESTATUS[0]}, $((SECONDS - t0)) s wall" | tee -a "$log"
}
step 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step 30 python -c "import torch, hydra, omegaconf, lightning; print(torch.__version__, torch.cuda.get_device_name(0))"
case "$part" in
  kernels)
    step 150 python benchmarks/bench_throughput.py --device cuda --size 25m --batch 32 --seq 512
    step 240 python benchmarks/bench_throughput.py --device cuda --size 25m --batch 32 --seq 512 --compile
    step 90 python benchmarks/bench_generation.py --device cuda
    step 90 python -m pytest -q -x tests/test_speed.py
    ;;
  pipeline)
    step 590 python benchmarks/bench_pipeline.py --hardware gpu,cpu   # fresh outputs each; prints GPU ÷ CPU
    ;;
esac
