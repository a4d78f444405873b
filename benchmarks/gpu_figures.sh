#!/usr/bin/env bash
# Issue 16's GPU figures in one prepared run, for a session lent a device machine (its time is short: run this
# once, read the log, give the machine back). Usage, from the repository root on the GPU machine:
#
#   bash benchmarks/gpu_figures.sh kernels     # ~4 min: the CUDA sync tests, 25M bf16 training tokens/s vs a plain
#                                              # transformer (eager, then compiled), cached generation
#   bash benchmarks/gpu_figures.sh pipeline    # default pipeline wall time, hardware=gpu then hardware=cpu
#   bash benchmarks/gpu_figures.sh lease [S]   # both, most important first, all inside S seconds (default 420):
#                                              # each step's timeout is cut to what is left, the CPU pipeline last
#   bash benchmarks/gpu_figures.sh compile [S] # ~4 min: hardware.compile (regional): 25M tokens/s compiled vs eager,
#                                              # compile time, the Cognate m1 phase compiled on the GPU
#   bash benchmarks/gpu_figures.sh step [S]    # ~8 min: the training step: the CUDA tests, 25M tokens/s at batch 32
#                                              # (memory off and memory scan eager alongside), a profile, the
#                                              # Cognate m1 phase and the default pipeline on the GPU, batch 128
#   bash benchmarks/gpu_figures.sh phases [S]  # ~4 min: where the phases' GPU time goes: cProfile of the Quiet-STaR
#                                              # phase (input: $QS_INPUT, default .gpuin/champion, carried) and of a
#                                              # short 25M Cognate m1 phase (the real optimizer and Lightning loop)
#   bash benchmarks/gpu_figures.sh optim [S]   # ~6 min: the CUDA tests, 25M tokens/s with the phase's optimizer
#                                              # (Muon-Grokfast) beside AdamW, its profile, the default pipeline on the GPU
#   bash benchmarks/gpu_figures.sh decode [S]  # ~6 min: the CUDA tests, cached generation with the decoder step
#                                              # graphed vs eager, the default pipeline on the GPU
#   bash benchmarks/gpu_figures.sh verify [S]  # ~7 min: every CUDA test, 25M tokens/s compiled at batch 32 (with the
#                                              # phase's optimizer) and at batch 128, the default pipeline on the GPU
#   bash benchmarks/gpu_figures.sh phase128 [S] # ~4 min: 25M tokens/s at batch 128 compiled with the phase's optimizer
#                                              # (Muon-Grokfast); cProfile of the Quiet-STaR phase (input $QS_INPUT)
#   bash benchmarks/gpu_figures.sh parts [S]   # ~6 min: every CUDA test (GroupedMuon's and the memory's bf16 one among
#                                              # them), 25M tokens/s at batch 128 compiled with the phase's optimizer,
#                                              # grouped Muon beside torch.optim.Muon; the default pipeline on the GPU,
#                                              # its output kept and every phase's time parts, evaluation device and
#                                              # CUDA-graph counts printed
#   bash benchmarks/gpu_figures.sh evaldev [S] # ~7 min: every CUDA test (the evaluations' device among them), 25M
#                                              # tokens/s at batch 128 compiled with the phase's optimizer, the Cognate
#                                              # m1 phase (2 epochs) with its evaluations on the CPU and on the GPU (interleaved,
#                                              # twice each, its part times printed), the default pipeline on the GPU
#
# Every figure goes to stdout and to $OUT/gpu_figures_<part>.log ($OUT: the device tool's return folder; else
# ./outputs). The machine's image lacks some of the project's dependencies (hydra-core, omegaconf, antlr4, wandb and
# its own): download them here as cp312 wheels into the ignored folder `.whl/` (docs/speed.md, "To rerun") and
# carry it; the script installs them into /tmp/site. A `.devdeps/` folder of plain packages is put on PYTHONPATH too.
set -u
part="${1:-kernels}"
budget="${2:-420}"
case "$part" in kernels|pipeline|lease|step|compile|phases|optim|decode|verify|phase128|parts|evaldev) ;; *) echo "error: unknown part '$part': give kernels, pipeline, lease, step, compile, phases, optim, decode, verify, phase128, parts or evaldev" >&2; exit 2 ;; esac
out="${OUT:-outputs}"
mkdir -p "$out"
log="$out/gpu_figures_${part}.log"
start=$SECONDS
PY="$(command -v python3 || command -v python)"   # the image's python3 is the one with torch
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    2>&1 | grep -v -i "warning" | tail -5
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
[ -d .devdeps ] && export PYTHONPATH="$PWD/.devdeps${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=offline PYTHONUNBUFFERED=1
step() {  # step <timeout s> <command...>: run it (cut to the lease's time left), log its output's last 25 lines, exit
          # status, wall time; a failed step's whole output goes to $out/failed_step_<n>.log (a failing test's
          # traceback was once lost to the tail; the device tool returns at most 8 files)
  local limit="$1"; shift
  if [ "$part" != kernels ] && [ "$part" != pipeline ]; then
    local left=$((budget - (SECONDS - start)))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 20 ]; then echo "== skipped (lease time left ${left}s): $*" | tee -a "$log"; return; fi
  fi
  echo "== $* (timeout ${limit}s)" | tee -a "$log"
  local t0=$SECONDS
  nstep=$((${nstep:-0} + 1))
  timeout "$limit" "$@" 2>&1 | tee "/tmp/step_${nstep}.log" | tail -25 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" != 0 ] && cp "/tmp/step_${nstep}.log" "$out/failed_step_${nstep}.log"
  echo "-- exit $rc, $((SECONDS - t0)) s wall" | tee -a "$log"
}
step 30 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
step 60 "$PY" -c "import torch, hydra, omegaconf, lightning, wandb; print(torch.__version__, lightning.__version__, wandb.__version__, torch.cuda.get_device_name(0))"
prof() {  # prof <timeout> <name> <agentforge args...>: the phase under cProfile, then its top functions
    local limit="$1" name="$2"; shift 2
    step "$limit" "$PY" -m cProfile -o "$out/$name.prof" -m agentforge "$@"
    [ -f "$out/$name.prof" ] && "$PY" -c "import pstats,sys; p=pstats.Stats(sys.argv[1]); p.sort_stats('cumulative').print_stats('agentforge', 40); p.sort_stats('tottime').print_stats(30)" "$out/$name.prof" > "$out/$name.txt" 2>&1
}
if [ "$part" = evaldev ]; then
  step 150 "$PY" -m pytest -q -p no:cacheprovider -rf --tb=short -k "cuda or compile_regions" tests/test_grouped_muon.py tests/test_speed.py tests/test_memory_graph.py tests/test_decode_graph.py tests/test_compile.py tests/test_cli.py tests/test_memory_exact.py tests/test_quietstar.py
  step 100 "$PY" benchmarks/bench_throughput.py --device cuda --size 25m --batch 128 --seq 512 --steps 9 --compile --muon-grokfast
  for round in 1 2; do for ev in cpu fit; do
    step 60 "$PY" -m agentforge phase=cognate model=m1 hardware=gpu "hardware.eval_device=$ev" phase.max_epochs=2 logger=none "paths.outputs=/tmp/ab_${ev}_$round"
  done; done
  grep -h -E "model1 (time \(s\)|devices):" "$log"
  step 260 "$PY" benchmarks/bench_pipeline.py --hardware gpu --logs "$out/pipeline_logs"
  [ -d "$out/pipeline_logs" ] && grep -h -E "time \(s\)|devices:|CUDA graphs:" "$out"/pipeline_logs/*.log | tee -a "$log"
  echo "== total $((SECONDS - start)) s" | tee -a "$log"; exit 0
fi
if [ "$part" = parts ]; then
  step 100 "$PY" -m pytest -q -p no:cacheprovider -k "cuda or compile_regions" tests/test_grouped_muon.py tests/test_speed.py tests/test_memory_graph.py tests/test_decode_graph.py tests/test_compile.py tests/test_cli.py tests/test_memory_exact.py
  step 150 "$PY" benchmarks/bench_throughput.py --device cuda --size 25m --batch 128 --seq 512 --steps 9 --compile --muon-grokfast --torch-muon
  step 260 "$PY" benchmarks/bench_pipeline.py --hardware gpu --logs "$out/pipeline_logs"
  [ -d "$out/pipeline_logs" ] && grep -h -E "time \(s\)|devices:|CUDA graphs:" "$out"/pipeline_logs/*.log | tee -a "$log"
  echo "== total $((SECONDS - start)) s" | tee -a "$log"; exit 0
fi
if [ "$part" = phase128 ]; then
  step 120 "$PY" benchmarks/bench_throughput.py --device cuda --size 25m --batch 128 --seq 512 --steps 6 --compile --muon-grokfast
  prof 120 quietstar phase=quietstar hardware=gpu "phase.input=${QS_INPUT:-.gpuin/champion}" paths.outputs=/tmp/qs_gpu
  echo "== total $((SECONDS - start)) s" | tee -a "$log"; exit 0
fi
if [ "$part" = phases ]; then
  prof 120 quietstar phase=quietstar hardware=gpu "phase.input=${QS_INPUT:-.gpuin/champion}" paths.outputs=/tmp/qs_gpu
  step 60 "$PY" -m pytest -q -p no:cacheprovider -k cuda tests/test_memory_graph.py
  prof 150 cognate25m phase=cognate model=m1 size=25m hardware=gpu data.batch_size=32 data.seq_len=512 phase.max_epochs=1 phase.steps_per_epoch=40 paths.outputs=/tmp/cog25
  echo "== total $((SECONDS - start)) s" | tee -a "$log"; exit 0
fi
if [ "$part" = verify ]; then
  step 120 "$PY" -m pytest -q -p no:cacheprovider -k "cuda or compile_regions" tests/test_speed.py tests/test_memory_graph.py tests/test_decode_graph.py tests/test_compile.py tests/test_cli.py
  step 150 "$PY" benchmarks/bench_throughput.py --device cuda --size 25m --batch 32 --seq 512 --steps 9 --compile --muon-grokfast
  step 150 "$PY" benchmarks/bench_throughput.py --device cuda --size 25m --batch 128 --seq 512 --steps 6 --compile
  step 240 "$PY" benchmarks/bench_pipeline.py --hardware gpu
  echo "== total $((SECONDS - start)) s" | tee -a "$log"; exit 0
fi
if [ "$part" = decode ]; then
  step 90 "$PY" -m pytest -q -p no:cacheprovider -k cuda tests/test_decode_graph.py tests/test_memory_graph.py tests/test_speed.py
  step 100 "$PY" benchmarks/bench_generation.py --device cuda --tokens 512 --eager-decode
  step 220 "$PY" benchmarks/bench_pipeline.py --hardware gpu
  echo "== total $((SECONDS - start)) s" | tee -a "$log"; exit 0
fi
if [ "$part" = optim ]; then
  step 90 "$PY" -m pytest -q -p no:cacheprovider -k cuda tests/test_speed.py tests/test_memory_graph.py
  step 90 "$PY" benchmarks/bench_throughput.py --device cuda --size 25m --batch 32 --seq 512 --steps 10 --eager-memory --muon-grokfast
  step 60 "$PY" benchmarks/profile_step.py --device cuda --size 25m --batch 32 --seq 512 --muon-grokfast --top 25
  step 240 "$PY" benchmarks/bench_pipeline.py --hardware gpu
  echo "== total $((SECONDS - start)) s" | tee -a "$log"; exit 0
fi
if [ "$part" = compile ]; then
  step 240 "$PY" benchmarks/bench_throughput.py --device cuda --size 25m --batch 32 --seq 512 --steps 10 --compile
  step 150 "$PY" -m agentforge phase=cognate model=m1 hardware=gpu hardware.compile=true paths.outputs=/tmp/cog_gpu_c
  echo "== total $((SECONDS - start)) s" | tee -a "$log"; exit 0
fi
if [ "$part" = step ]; then
  step 90 "$PY" -m pytest -q -p no:cacheprovider -k cuda tests/test_speed.py tests/test_memory_graph.py
  step 100 "$PY" benchmarks/bench_throughput.py --device cuda --size 25m --batch 32 --seq 512 --steps 10 --memory-off --eager-memory
  step 60 "$PY" benchmarks/profile_step.py --device cuda --size 25m --batch 32 --seq 512
  step 120 "$PY" -m agentforge phase=cognate model=m1 hardware=gpu paths.outputs=/tmp/cog_gpu
  step 260 "$PY" benchmarks/bench_pipeline.py --hardware gpu
  step 90 "$PY" benchmarks/bench_throughput.py --device cuda --size 25m --batch 128 --seq 512 --steps 6 --eager-memory
  echo "== total $((SECONDS - start)) s" | tee -a "$log"; exit 0
fi
if [ "$part" != pipeline ]; then
  step 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_speed.py tests/test_memory_graph.py tests/test_compile.py
  step 120 "$PY" benchmarks/bench_throughput.py --device cuda --size 25m --batch 32 --seq 512 --steps 10
  step 60 "$PY" benchmarks/bench_generation.py --device cuda --tokens 512
fi
if [ "$part" != kernels ]; then
  step 300 "$PY" benchmarks/bench_pipeline.py --hardware gpu
fi
if [ "$part" != pipeline ]; then
  step 240 "$PY" benchmarks/bench_throughput.py --device cuda --size 25m --batch 32 --seq 512 --steps 10 --compile
fi
if [ "$part" != kernels ]; then
  step 300 "$PY" benchmarks/bench_pipeline.py --hardware cpu
fi
echo "== total $((SECONDS - start)) s" | tee -a "$log"
