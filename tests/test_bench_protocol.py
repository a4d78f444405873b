"""The benchmarks' protocol, not their timings: every FLOP count includes attention (one helper, ``evals.flops``)
and leaves QK-clip's bookkeeping out; the Quiet-STaR baseline runs every recursion step; the BitNet generation is
timed once (equal work in both modes); every timing ratio is printed in one format with its 95 % CI and n; make
bench runs through (halting skipped without a checkpoint, grokking left out); the grokking verdict is withheld at the
budget; the pipeline benchmark prints its device, threads, CPU time and load. No wall-clock time is asserted."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from agentforge.evals.flops import count_flops, counting_flops
from agentforge.models import CognateConfig, CognateModel
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import bench_bitnet  # noqa: E402
import bench_grokking  # noqa: E402
import bench_pipeline  # noqa: E402
import bench_thoughts  # noqa: E402
import bench_throughput  # noqa: E402

RATIO = re.compile(r"^\s*ratio .+: \d+\.\d\d  95% CI \[\d+\.\d\d, \d+\.\d\d\] n = \d+ rounds", re.M)
TINY = dict(d_model=128, n_layers=2, n_heads=4, ffn_hidden=352, window=64)


def run(name: str, *args: str, timeout: int = 300) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


# --- FLOPs: one helper, attention counted, QK-clip's max-logit reduction not ---------------------------------------

def test_plain_transformer_training_step_flops_match_the_hand_count():
    """d=128, L=2, ffn=352, V=272, B=2, T=16, forward + backward: 3·[L(8d² + 6·d·ffn) + 2dV] per token of matmuls
    plus attention 3·L·4·T·d (math path: q·kᵀ and p·v, full T x T); QK-clip's L·2·T·d not counted."""
    cfg = CognateConfig(**TINY, max_steps=3)
    d, L, f, V, T, B = 128, 2, 352, cfg.vocab_size, 16, 2
    assert V == 272
    matmuls = 3 * (L * (8 * d * d + 6 * d * f) + 2 * d * V)
    attention = 3 * L * 4 * T * d
    assert matmuls == 2_617_344 and attention == 49_152
    r = bench_throughput.Runner(bench_throughput.PlainTransformer(cfg), B, T, "cpu", False)
    assert r.flops == B * T * (matmuls + attention)
    attn = [m for m in r.model.modules() if hasattr(m, "record_max_logit")]
    assert len(attn) == L and not any(m.record_max_logit for m in attn)  # AdamW: no QK-clip, no bookkeeping
    clipped = bench_throughput.Runner(CognateModel(cfg), B, T, "cpu", False, phase_optimizer=True)
    assert all(m.record_max_logit for m in clipped.model.attention_modules())  # QK-clip reads it: on after the count


def test_qk_clip_bookkeeping_is_left_out_for_both_models_alike():
    cfg = CognateConfig(**TINY, max_steps=2)
    x, y = torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (2, 16))
    for model in (bench_throughput.PlainTransformer(cfg).train(), CognateModel(cfg).train()):
        def step(model=model):
            out = model(x, y)
            (out if torch.is_tensor(out) else out.loss).backward()
        attn = [m for m in model.modules() if hasattr(m, "record_max_logit")]
        with_clip = count_flops(step)            # no models given: the reduction stays on
        for m in attn:
            m.record_max_logit = False
        without = count_flops(step)
        for m in attn:
            m.record_max_logit = True
        assert count_flops(step, model) == without < with_clip
        assert all(m.record_max_logit for m in attn)


def test_cognate_attention_is_now_counted_everywhere():
    """Eval-mode forward at every step: the helper's count exceeds a bare FlopCounterMode's (no formula for the CPU's
    fused SDPA kernel) by exactly the attention's q·kᵀ and p·v: steps·L·4·B·T²·d. EvoMerge's FLOPs term and the
    diversity figure count the same way."""
    from agentforge.evals.diversity import per_row_features
    from agentforge.merge import fitness

    torch.manual_seed(0)
    cfg = CognateConfig(**TINY, max_steps=3)
    model = CognateModel(cfg).eval()
    B, T = 2, 32
    ids = torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), model.ablate(halting=False):
        with FlopCounterMode(display=False) as bare:
            model(ids)
        counted = count_flops(lambda: model(ids), model)
    assert counted - bare.get_total_flops() == cfg.max_steps * cfg.n_layers * 4 * B * T * T * cfg.d_model
    data = fitness.EvalData(rows=torch.cat([ids, ids[:, :1]], 1), speed_seq_len=T, speed_batch=B)
    with torch.no_grad():
        assert fitness.forward_flops(model, data) == count_flops(lambda: model(ids), model)
        row = ids[:1]
        with counting_flops(model) as fc:
            model(row)
    mflops = per_row_features(model, torch.cat([row, row[:, :1]], 1))["mflops_per_token"][0]
    assert mflops == pytest.approx(fc.get_total_flops() / T / 1e6)


# --- Quiet-STaR: the baseline runs every recursion step ------------------------------------------------------------

def test_thoughts_baseline_runs_every_recursion_step():
    torch.manual_seed(0)
    model = CognateModel(CognateConfig()).eval()   # the benchmark's fresh model: halting stops early on its own
    windows = torch.randint(0, 256, (4, 37), generator=torch.Generator().manual_seed(0))

    def baseline():
        bench_thoughts.baseline_loss(model, windows)[0].backward()

    def all_steps():
        with model.ablate(halting=False):
            out = model(windows[:, :-1])
        torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), windows[:, 1:].flatten()).backward()

    def halting_on():   # the old baseline
        torch.nn.functional.cross_entropy(model(windows[:, :-1]).logits.flatten(0, 1), windows[:, 1:].flatten()).backward()

    assert count_flops(baseline, model) == count_flops(all_steps, model) > count_flops(halting_on, model)
    assert bool((bench_thoughts.baseline_loss(model, windows)[1] == model.config.max_steps).all())
    model.zero_grad(set_to_none=True)


# --- BitNet: generation is the same computation in both modes, so timed once ---------------------------------------

def test_bitnet_generation_flops_do_not_depend_on_the_halting_mode():
    torch.manual_seed(0)
    model = CognateModel(CognateConfig(**bench_bitnet.SIZES["tiny"])).eval()
    prompt = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    full = bench_bitnet.full_recursion(model)
    with torch.no_grad():
        as_trained = count_flops(lambda: model.generate(prompt, 4), model)
        equal = count_flops(lambda: full.generate(prompt, 4), full)
        fwd = count_flops(lambda: model(prompt), model), count_flops(lambda: full(prompt), full)
    assert as_trained == equal
    assert fwd[0] < fwd[1]   # the forward is where the modes differ: a fresh model halts early


def test_bitnet_prints_one_generation_ratio_with_its_ci():
    out = run("bench_bitnet.py", "--seq-len", "16", "--batch", "1", "--gen-tokens", "2", "--repeats", "2",
              "--no-native")
    lines = RATIO.findall(out)
    assert len([ln for ln in lines if "greedy" in ln]) == 1
    assert len([ln for ln in lines if "forward" in ln]) == 2  # as trained and at equal compute
    assert "as trained (halting)" not in out and "device: CPU" in out


# --- every timing ratio: median of per-round ratios, 95 % CI, n ----------------------------------------------------

@pytest.mark.slow  # runs a benchmark script (5-8 s on 2 cores): the fast tier stays under ~10 min
def test_generation_and_throughput_ratios_carry_a_ci_and_n():
    gen = run("bench_generation.py", "--tokens", "4", "--prompt", "8", "--repeats", "2")
    assert re.search(r"ratio cached/uncached tokens/s: .* 95% CI \[.*\] n = 2 rounds", gen)
    thr = run("bench_throughput.py", "--batch", "2", "--seq", "16", "--steps", "2")
    assert re.search(r"ratio cognate/plain achieved FLOP/s: .* 95% CI \[.*\] n = 2 rounds", thr)
    assert "covers less" in thr   # under MIN_TIMING_ROUNDS rounds the line says its range is no 95 % CI


@pytest.mark.slow  # runs a benchmark script (5-8 s on 2 cores): the fast tier stays under ~10 min
def test_thoughts_ratios_carry_a_ci_and_the_device():
    out = run("bench_thoughts.py", "--tokens", "1", "--thought-lengths", "2", "--context", "16", "--repeats", "2",
              "--rl-repeats", "2", "--rl-sequences", "1")
    assert out.startswith("device: CPU, 1 thread(s)")
    assert re.search(r"recursion steps: mean 3\.00 of 3", out)
    names = [m.group(0) for m in RATIO.finditer(out)]
    assert len(names) == 5   # 2 generation (cached, uncached), 3 training step ratios
    assert re.search(r"ratio training step thoughts cached / no thoughts: .* 95% CI \[.*\] n = 2", out)


def test_defaults_give_at_least_seven_rounds():
    from ratio_ci import DEFAULT_ROUNDS

    assert DEFAULT_ROUNDS >= 7
    for name, flag in (("bench_generation.py", "--repeats"), ("bench_throughput.py", "--steps"),
                       ("bench_bitnet.py", "--repeats"), ("bench_thoughts.py", "--repeats"),
                       ("bench_thoughts.py", "--rl-repeats"), ("bench_codegen.py", "--repeats"),
                       ("bench_eval.py", "--repeats"), ("bench_merge.py", "--repeats")):
        text = (REPO / "benchmarks" / name).read_text()
        assert re.search(rf'"{flag}", type=int, default=DEFAULT_ROUNDS', text), (name, flag)


# --- make bench runs through; halting without a checkpoint; grokking verdicts; pipeline record ---------------------

@pytest.mark.slow  # runs a benchmark script (5-8 s on 2 cores): the fast tier stays under ~10 min
def test_halting_without_a_checkpoint_is_skipped_not_an_error():
    out = run("bench_halting.py", timeout=120)
    assert out.startswith("skipped: no checkpoint given (python benchmarks/bench_halting.py <Cognate checkpoint dir>")


def test_make_bench_leaves_grokking_out_and_stops_on_a_real_error():
    dry = subprocess.run(["make", "-n", "bench"], cwd=REPO, capture_output=True, text=True, timeout=30).stdout
    assert "*bench_grokking.py) continue" in dry and "|| exit 1" in dry
    assert "bench_grokking.py" in subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True,
                                                 text=True, timeout=30).stdout


def test_grokking_gives_no_verdict_when_a_run_reached_its_budget():
    verdict = bench_grokking.aim_verdict
    assert verdict([None] * 5, 10) == "no verdict (budget reached)"
    assert verdict([12.0, None, 15.0, 11.0, 13.0], 10) == "no verdict (budget reached)"
    assert verdict([12.0, 11.0, 15.0, 10.0, 13.0], 10) == "MET"
    assert verdict([12.0, 3.0, 15.0, 11.0, 13.0], 10).startswith("not shown")   # one seed below: not NOT MET
    assert verdict([9.9, 3.0, 5.0, 8.0, 2.0], 10) == "NOT MET"
    assert verdict([12.0, 3.0, 15.0, 11.0, 13.0], 10, [False, True, False, False, False]).startswith("no verdict")
    assert verdict([12.0, 11.0, 13.0], 10).startswith("no verdict from 3")   # 3 of 3: a 0.875 sign test


def test_pipeline_prints_device_threads_cpu_time_and_load(monkeypatch, capsys):
    def fake(hardware, extra, steps, cpu=None, logs=None):   # a real child process, so RUSAGE_CHILDREN moves; no pipeline
        before = bench_pipeline.children_cpu_s()
        subprocess.run([sys.executable, "-c", "sum(range(10**6))"], check=True)
        steps.setdefault("cognate-m1", []).append(1.0)
        cpu.append(bench_pipeline.children_cpu_s() - before)

    monkeypatch.setattr(bench_pipeline, "run_pipeline", fake)
    monkeypatch.setattr(sys, "argv", ["bench_pipeline.py", "--hardware", "cpu,auto"])
    bench_pipeline.main()
    out = capsys.readouterr().out
    assert re.search(r"^device: CPU, \d+ cores; .*; torch threads \d+; OMP_NUM_THREADS for the runs \S+$", out, re.M)
    assert re.search(r"load average \(1/5/15 min\): before [\d.]+ / [\d.]+ / [\d.]+, after [\d.]+ / [\d.]+ / [\d.]+", out)
    for h in ("cpu", "auto"):
        m = re.search(rf"hardware={h}: pipeline wall time [\d.]+ s \(one run of 1\); children's CPU time ([\d.]+) s "
                      r"\(user \+ system, [\d.]+ cores busy on average\); steps \(s\): cognate-m1 1\.0", out)
        assert m, out
    assert re.search(r"wall time hardware=cpu ÷ hardware=auto: [\d.]+", out)
    # one round: a single ratio, no CI invented; two rounds: the uniform line (the range, flagged)
    assert re.search(r"^ratio wall time hardware=cpu ÷ hardware=auto: \d+\.\d\d, n = 1 round: no CI exists at n = 1",
                     out, re.M) and not RATIO.search(out)
    monkeypatch.setattr(sys, "argv", ["bench_pipeline.py", "--hardware", "cpu,auto", "--repeats", "2"])
    bench_pipeline.main()
    two = capsys.readouterr().out
    assert re.search(r"^ratio wall time hardware=cpu ÷ hardware=auto: .* n = 2 rounds, under 6 rounds", two, re.M)
    assert len(RATIO.findall(two)) == 1 and "(median of 2)" in two


# --- the remaining ratios (merge, eval, codegen, optimizer, sandbox): one format, verdicts from the CI -------------

# per-round ratios 1.0, 1.1, ..., 1.8 in a shuffled order: median 1.4; with n = 9 the sign-test 95 % CI is the 2nd and
# 8th order statistics (k = 2: 1 - 2 P(Bin(9, 1/2) <= 1) = 1 - 20/512 = 0.961; k = 3 would give 0.820), [1.1, 1.7]
R9 = [1.0 + 0.1 * i for i in (4, 0, 8, 2, 6, 1, 7, 3, 5)]
CI_SHORT = re.compile(r"\d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\]")


def test_an_aim_is_met_or_missed_only_by_the_whole_ci():
    from ratio_ci import aim_line, aim_verdict

    assert aim_verdict(1.10, 1.25, 9, 1.3) == "met"
    assert aim_verdict(1.10, 1.30, 9, 1.3) == "met"              # on the aim is within it
    assert aim_verdict(1.31, 1.60, 9, 1.3) == "missed"
    assert aim_verdict(1.20, 1.40, 9, 1.3) == "inconclusive (CI straddles the aim)"
    assert aim_verdict(1.05, 1.20, 9, 1.10) == "inconclusive (CI straddles the aim)"
    assert aim_verdict(1.00, 1.05, 5, 1.10).startswith("no verdict")   # 5 rounds: no 95 % CI, the range decides nothing
    den = [0.5 * (i + 1) for i in range(9)]                             # per-round times that differ between rounds
    num = [r * d for r, d in zip(R9, den)]
    line = aim_line("x / y", num, den, 1.3)
    assert RATIO.match(line) and "1.40  95% CI [1.10, 1.70] n = 9 rounds" in line, line
    assert line.endswith("aim <= 1.30: inconclusive (CI straddles the aim)")
    assert aim_line("x / y", num, den, 1.75).endswith(": met")          # 1.7 <= 1.75
    assert aim_line("x / y", num, den, 1.05).endswith(": missed")       # 1.1 > 1.05


def test_one_round_gives_no_ci():
    from ratio_ci import ci_short, ratio_line

    line = ratio_line("a / b", [3.0], [2.0])
    assert line == "ratio a / b: 1.50, n = 1 round: no CI exists at n = 1 (one ratio, no spread to estimate one from)"
    assert not RATIO.search(line) and ci_short([3.0], [2.0]) == "1.50 [no CI at n = 1]"


def test_optimizer_and_sandbox_verdicts_come_from_the_ci():
    import bench_optimizer
    import bench_sandbox

    step = {"adamw": [0.002] * 9, "muon_grokfast": [0.002 * r for r in R9]}
    full = {"adamw": [0.1] * 10, "muon_grokfast": [0.105] * 10}
    out = "\n".join(bench_optimizer.report(step, full))
    assert len(RATIO.findall(out)) == 2, out
    assert re.search(r"^ratio optimizer\.step muon_grokfast / adamw: 1\.40  95% CI \[1\.10, 1\.70\] n = 9 rounds .*"
                     r"aim <= 1\.30: inconclusive \(CI straddles the aim\)$", out, re.M), out
    assert re.search(r"^ratio whole train step muon_grokfast / adamw: 1\.05  95% CI \[1\.05, 1\.05\] n = 10 rounds", out, re.M)
    step[bench_optimizer.TORCH_MUON], full[bench_optimizer.TORCH_MUON] = [0.0025] * 9, [0.11] * 10
    out = "\n".join(bench_optimizer.report(step, full))
    assert re.search(r"^ratio optimizer\.step muon_grokfast, grouped Muon / torch_muon: 1\.12  95% CI \[0\.88, 1\.36\] "
                     r"n = 9 rounds", out, re.M), out
    assert re.search(r"^torch_muon\s+2\.50\s+110\.0$", out, re.M), out
    times = {"process": [20.0] * 6, "bwrap": [20.0 * r for r in (1.0, 1.02, 0.97, 1.05, 1.01, 0.99)],
             "bare process": [0.05] * 6, "bare bwrap": [0.1] * 6, "bwrap spot sample": [10.0] * 6}
    out = "\n".join(bench_sandbox.report(times, 4, 30))
    assert re.search(r"^  ratio overhead bwrap/process: 1\.00  95% CI \[0\.97, 1\.05\] n = 6 rounds .*aim <= 1\.10: met$",
                     out, re.M), out
    assert re.search(r"spot check of 16 secret rows .*: 10\.00 s; every row ÷ 16 rows: 2\.01  95% CI \[1\.94, 2\.10\] "
                     r"n = 6 rounds", out), out
    times["bwrap"] = [20.0 * r for r in (1.12, 1.2, 1.15, 1.3, 1.11, 1.4)]
    assert "aim <= 1.10: missed" in "\n".join(bench_sandbox.report(times, 4, 30))


def test_throughput_tokens_per_second_ci_is_the_medians_order_statistic_interval():
    """bench_throughput's per-model tokens/s CI: ``median_ci`` of tokens / step time; under 6 steps none."""
    from agentforge.evals.compare import median_ci

    steps = [0.5, 0.4, 0.25, 0.2, 0.8, 0.3, 0.35, 1.0, 0.45]
    lo, hi = median_ci([100 / t for t in steps])
    assert bench_throughput.tokens_ci(100, steps) == f"tokens/s 95% CI [{lo:.0f}, {hi:.0f}]"
    assert (lo, hi) == (125.0, 400.0)   # 9 values: the 2nd and 8th order statistics of 100/t
    assert bench_throughput.tokens_ci(100, steps[:5]) == "(no CI: 5 < 6 steps)"


def test_optimizer_times_each_step_alone_in_rotating_rounds(monkeypatch):
    """bench_optimizer's protocol (``interleaved_times`` with ``prepare``): warm-up, then rounds rotating the order,
    and the preparation before each call untimed. A fake clock advances only while a preparation runs, so a
    preparation counted in the timing would show as a non-zero time (no wall-clock time is asserted)."""
    from agentforge.evals import speed

    clock, order = [0.0], []
    monkeypatch.setattr(speed.time, "perf_counter", lambda: clock[0])

    def prepare(name):
        order.append(f"prep-{name}")
        clock[0] += 1.0

    times = speed.interleaved_times({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 4,
                                    warmup=1, prepare=prepare)
    calls = [x for x in order if not x.startswith("prep-")]
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]   # warm-up, then rounds rotating the order
    assert order[::2] == [f"prep-{c}" for c in calls]                     # each call right after its preparation
    assert times == {"a": [0.0] * 4, "b": [0.0] * 4}                      # the preparations are not timed


def test_codegen_eval_and_merge_print_every_ratio_with_its_ci():
    import bench_codegen
    import bench_eval
    import bench_merge

    line = bench_codegen.speed_ratio_line({"cognate": [2.0] * 9, "gpt2_scratch": [0.2 * r for r in R9]},
                                          {"cognate": 640, "gpt2_scratch": 640})
    assert RATIO.match(line) and "ratio cognate / gpt2_scratch tokens/s: 0.14  95% CI [0.11, 0.17] n = 9" in line
    times = {(m, k): [1.0] * 9 for m in ("base", "surgery") for k in ("lm", "arc")}
    times["surgery", "arc"] = [1.0 / r for r in R9]                    # +surgery r x base's throughput
    table = bench_eval.surgery_table(times, {"lm": 16, "arc": 4})
    assert "n = 9 rounds" in table[0] and "95% CI" in table[0]
    assert table[-1].split()[-3:] == ["1.40", "[1.10,", "1.70]"] and CI_SHORT.search(table[-2])
    batching = bench_eval.batching_line("arc", 4, True, {"one": [0.5] * 3, "all": [0.5 / r for r in R9[:3]]})
    assert batching.endswith("all 0.36 s (speed-up 1.40 [1.00, 1.80])"), batching   # ratios 1.4, 1.0, 1.8: the range
    table = bench_merge.technique_table({"linear": [0.01] * 9, "ties": [0.01 * r for r in R9]})
    assert "x linear: median of the per-round ratios [95% CI], n = 9 rounds" in table[0]
    assert table[-1].split()[-3:] == ["1.40", "[1.10,", "1.70]"]
    out = bench_merge.eval_line({"input": [0.5] * 9, "merged": [0.5 * r for r in R9]})
    out += bench_merge.copy_line(R9, {1.0}, 5)
    lines = RATIO.findall(out)
    assert len(lines) == 2 and all("1.40  95% CI [1.10, 1.70] n = 9 rounds" in ln for ln in lines), out


def test_optimizer_prints_its_ratios_and_verdict():
    out = run("bench_optimizer.py", "--repeats", "6", "--batch", "1", "--seq", "8", timeout=120)
    assert re.search(r"^ratio optimizer\.step muon_grokfast / adamw: .* n = 6 rounds .*; aim <= 1\.30: "
                     r"(met|missed|inconclusive \(CI straddles the aim\))$", out, re.M), out
    # the whole step gets enough rounds for a 95 % CI (it had 3 at --repeats 6, 5 at 25: no CI)
    assert re.search(r"^ratio whole train step muon_grokfast / adamw: .*95% CI .* n = 6 rounds", out, re.M), out


def test_benchmarks_import_the_project_only_after_putting_the_repository_on_sys_path():
    """`python benchmarks/bench_x.py` must run from a plain checkout (no editable install): a script that inserts
    the repository into sys.path imports agentforge (and ratio_ci, which imports agentforge) only after that."""
    for path in sorted((REPO / "benchmarks").glob("bench_*.py")):
        lines = path.read_text().splitlines()
        insert = next((i for i, ln in enumerate(lines) if ln.startswith("sys.path.insert(")), None)
        if insert is None:
            continue
        early = [ln for ln in lines[:insert] if re.match(r"(from|import) (agentforge|ratio_ci)\b", ln)]
        assert not early, (path.name, early)
