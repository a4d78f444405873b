"""phase=codegen's fairness and disclosure: the baseline's trained positions, the completion budget's ceiling, token
units that differ between tokenizers, prompts cut by the context, and the optimizers."""
from __future__ import annotations

import json

import pytest

from agentforge.codegen import evaluate as ev
from agentforge.codegen import models, scoring
from agentforge.codegen.problems import load_humaneval
from agentforge.codegen.report import _comparable, ceiling_line
from agentforge.codegen.sampling import sample
from agentforge.data.tokenizer import EOS_ID
from agentforge.phases.compare import thresholds_of
from tests.conftest import compose_cfg, run_cli
from tests.test_codegen import EXEC, MODE

SIZE = dict(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, max_seq_len=256)
A = "abcdefghijklmnop"


def _pair_lm(name: str = "gpt2_like") -> models.CodeLM:
    """A stand-in for baseline=gpt2's BPE (no hub offline): 2 characters of [a-p] per token."""
    enc = lambda s: [A.index(x) * 16 + A.index(y) for x, y in zip(s[::2], s[1::2]) if x in A and y in A]  # noqa: E731
    dec = lambda ids: "".join(A[i // 16 % 16] + A[i % 16] for i in ids)  # noqa: E731   every id: 2 characters
    return models.CodeLM(name, "2 chars/token", models.gpt2_scratch(SIZE, {}, 0).eval(), enc, dec, 256, EOS_ID)


def _byte_lm(name: str = "cognate_like") -> models.CodeLM:
    return models.byte_lm(name, "bytes", models.gpt2_scratch(SIZE, {}, 0).eval(), 256)


# 1. rows as long as the evaluated context
def test_training_rows_span_the_evaluated_context_with_the_tokens_per_step_kept(tmp_path):
    from agentforge.phases.codegen import eval_context, train_rows

    data = {"seq_len": 128, "batch_size": 8, "source": "python_code"}
    assert train_rows(data, 512) == {"seq_len": 512, "batch_size": 2, "source": "python_code"}
    assert train_rows(data, 2048)["batch_size"] == 1 and train_rows(data, 64)["batch_size"] == 16
    cfg = compose_cfg(["phase=codegen", "data=python_code"], tmp_path)
    assert eval_context(cfg) == cfg.model.max_seq_len == 512
    cfg.phase.context_tokens = 300
    assert eval_context(cfg) == 300


def test_the_baselines_last_evaluated_position_is_trained(tmp_path):
    """GPT-2 learns one embedding per position: trained on 32-token rows but evaluated over 64, its positions 32-63
    kept their initial values (exactly: embeddings get no weight decay). Now the rows span the context and position
    63 moves."""
    from agentforge.codegen.corpus import corpus_from_config
    from agentforge.phases.codegen import _container, build_models

    cfg = compose_cfg(["phase=codegen", "data=python_code", "hardware=cpu", "logger=none", "model.max_seq_len=64",
                       "data.seq_len=32", "data.batch_size=2", "data.max_files=20", "phase.max_epochs=1",
                       "phase.steps_per_epoch=2", "phase.val_rows=2", "baseline.optimizer.warmup_steps=0"], tmp_path)
    corpus = corpus_from_config(_container(cfg.data), [])
    init = models.gpt2_scratch(_container(cfg.model), _container(cfg.baseline), int(cfg.seed)).hf
    # in this process (isolate=False): what is checked is the rows trained on, not the process they train in, and two
    # spawned trainings would cost ~12 s (the isolated build_models: test_codegen_isolated.py and the CLI's test)
    lms, trainings = build_models(cfg, corpus, tmp_path / "run", tmp_path / "artifacts", isolate=False)
    trained = lms[1].model.hf
    moved = (trained.transformer.wpe.weight - init.transformer.wpe.weight).abs().amax(dim=-1)
    assert moved[63] > 1e-3 and moved[63] > moved[0] / 10   # untrained: 0 (no gradient, no decay)
    assert all(t["seq_len"] == 64 and t["batch_size"] == 1 and t["steps"] == 2 for t in trainings.values())


# 2. the budget's ceiling
def test_the_budget_ceiling_cuts_the_canonical_solutions_to_each_models_own_tokens():
    he = load_humaneval()[:6]
    byte, pair = _byte_lm(), _pair_lm()
    sol = he[0].canonical_solution
    assert ev.budget_cut(byte, sol, 64, he[0].stop) == sol[:64]
    assert ev.budget_cut(byte, sol, 10_000, he[0].stop) == sol
    ceiling = ev.budget_ceiling([byte], he, 64, EXEC)
    assert ceiling == {"cognate_like": pytest.approx(1 / 6)}   # 1 of the default 6 fits 64 bytes
    assert ev.budget_ceiling([byte], he, 4096, EXEC) == {"cognate_like": 1.0}
    assert len(ev.budget_cut(pair, "abcdefgh", 2, ())) == 4   # 2 tokens of 2 characters
    line = ceiling_line({"cognate": 1 / 6, "gpt2_scratch": 1 / 6}, 64, 0.3)
    assert "Budget ceiling" in line and "0.167 (cognate)" in line and "below the pass@1 target 0.3" in line
    assert "below" not in ceiling_line({"cognate": 0.5}, 256, 0.3)


@pytest.mark.slow
def test_a_smoke_run_reports_the_budget_ceiling(tmp_path):
    proc = run_cli(["phase=codegen", "data=python_code", "experiment=smoke", f"phase.sandbox={MODE}",
                    "phase.num_problems=6", "phase.max_new_tokens=64", "phase.n_samples=1", "phase.pass_k=[1]",
                    "data.max_files=30", "phase.steps_per_epoch=1", "phase.latency_tokens=0"], tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = next((tmp_path / "outputs" / "runs").glob("*/*_codegen_*")) / "codegen"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["budget_ceiling_pass_at_1"] == {"cognate": pytest.approx(1 / 6), "gpt2_scratch": pytest.approx(1 / 6)}
    assert stats["self_check"]["budget_ceiling_pass_at_1"] == stats["budget_ceiling_pass_at_1"]
    assert any("budget ceiling" in r for r in stats["reasons"])
    assert "warning: cognate: a perfect model scores at most pass@1 0.167" in proc.stdout
    report = (out / "report.md").read_text()
    assert "Budget ceiling" in report and "0.167 (cognate)" in report and "below the pass@1 target 0.3" in report


# 3. token units
def test_budgets_in_different_token_units_are_flagged_and_the_ratio_checks_decide_nothing():
    byte, pair = _byte_lm(), _pair_lm()
    assert not ev.token_units_differ([byte, _byte_lm("other")]) and ev.token_units_differ([byte, pair])
    chars = {lm.name: max(map(len, sample(lm, "abab", 4, max_new_tokens=16, stop=(), temperature=0.8,
                                           seed=0).completions)) for lm in (byte, pair)}
    assert chars["gpt2_like"] > 16 >= chars["cognate_like"]   # the same budget, twice the text
    names = ("cognate_like", "gpt2_like")
    kpis = ev.efficiency([byte, pair], {}, 16, {n: {"sampling_tokens_per_sec": 1.0} for n in names}, rounds=6)
    assert kpis["gpt2_like"]["latency_chars"] == 32 and kpis["cognate_like"]["latency_chars"] <= 16
    assert all(k["token_units_differ"] for k in kpis.values())
    problems = [{"task_id": "t/0", "num_samples": 1, "num_correct": 0}] * 2
    th = thresholds_of({"max_latency_ratio": 100.0, "min_throughput_ratio": 0.0, "max_memory_ratio": 0.5})
    stats = scoring.compute_stats({n: problems for n in names}, kpis, candidate=names[0], baseline=names[1], ks=[1],
                                  thresholds=th, n_resamples=10)
    ratio = {c["threshold"]: c for c in stats["efficiency"]}
    for key in ("max_latency_ratio", "min_throughput_ratio"):
        assert ratio[key]["ok"] is None and "not comparable: different token units" in ratio[key]["note"]
    assert not _comparable("latency_ms", kpis, list(names)) and _comparable("param_count", kpis, list(names))
    for k in kpis.values():   # same tokenizer: the same loose targets are met
        k["token_units_differ"] = False
    same = scoring.compute_stats({n: problems for n in names}, kpis, candidate=names[0], baseline=names[1], ks=[1],
                                 thresholds=th, n_resamples=10)
    assert {c["threshold"]: c["ok"] for c in same["efficiency"]}["min_throughput_ratio"] is True


# 4. prompts cut by the context
def test_a_warning_when_more_than_a_tenth_of_the_prompts_are_left_truncated():
    assert ev.truncation_warning("cognate", 16, 164, 512, 256) is None
    warn = ev.truncation_warning("cognate", 133, 164, 512, 256)
    assert warn.startswith("warning: cognate: 133 of 164 prompts (81%)") and "size=25m" in warn


# 5. the optimizers
def test_the_baselines_optimizer_decays_no_embedding_and_muon_is_refused_for_it(tmp_path):
    """``weight_decay_scope: matrices`` is "2-D non-embedding weights only": GPT-2's ``wte`` (tied to ``lm_head``) and
    ``wpe`` are nn.Embedding weights without "embed" in their names, which the name test used to decay. Its matrices
    are transformers' Conv1D, not nn.Linear, so Muon would take none of them: the phase refuses that optimizer."""
    from torch import nn

    from agentforge.config import validate
    from agentforge.errors import ConfigError
    from agentforge.optim import build_optimizer, split_muon
    from agentforge.phases.codegen import _container
    from agentforge.phases.rules import PHASE_RULES

    cfg = compose_cfg(["phase=codegen", "baseline=gpt2_scratch"], tmp_path)
    gpt2 = models.gpt2_scratch(SIZE, _container(cfg.baseline), 0)
    embed = {id(m.weight) for m in gpt2.modules() if isinstance(m, nn.Embedding)}
    assert len(embed) == 2 and id(gpt2.hf.lm_head.weight) in embed       # wte (the tied head) and wpe
    opt, _ = build_optimizer(gpt2, _container(cfg.baseline.optimizer), 10)   # the baseline's own recipe
    decayed = [p for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    assert decayed and all(p.ndim == 2 for p in decayed) and not embed & set(map(id, decayed))
    assert sum(p.numel() for p in decayed) == sum(p.numel() for n, p in gpt2.named_parameters()
                                                  if n.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")))
    assert split_muon(gpt2)[0] == []
    validate(cfg, PHASE_RULES["codegen"])
    for name in ("muon", "muon_grokfast"):
        cfg.baseline.optimizer.name = name
        with pytest.raises(ConfigError, match=r"baseline\.optimizer\.name must be adamw or grokfast_adamw .*Conv1D"):
            validate(cfg, PHASE_RULES["codegen"])
