"""Evaluation: choice scoring, surgery identity, generation statistics, the collect_metrics/KPI gate, and the real CLI (eval of a baseline, a surgery copy and a fine-tuned copy)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from agentforge.data import formats
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.errors import ConfigError
from agentforge.evals import generation_stats as gs
from agentforge.evals import tasks
from agentforge.evals.collect import check_gate, collect_metrics, summarize_jsonl
from agentforge.io import weights_sha256
from agentforge.models import CognateConfig, CognateModel
from agentforge.models.surgery import identity_gap, refinement_stats, wrap
from tests.conftest import REPO, run_cli, run_in_process


class BiasLM(nn.Module):
    """Logits that ignore the input: log P(token) = log_softmax(bias), so a continuation's
    log-likelihood is the sum of its tokens' fixed log-probabilities."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.bias = nn.Parameter(bias)
        self.config = SimpleNamespace(max_seq_len=512)

    def forward(self, ids):
        return SimpleNamespace(logits=self.bias.expand(ids.shape[0], ids.shape[1], -1))


def test_choice_scoring_picks_the_highest_loglikelihood():
    tok = ByteTokenizer()
    bias = torch.zeros(272)
    bias[ord("z")] = 3.0
    model = BiasLM(bias)
    logp = F.log_softmax(bias, -1)
    scores = tasks.continuation_logprobs(model, tok, "Question: pick", [" aaa", " zzz", " zz"])
    hand = [float(sum(logp[b] for b in c.encode())) for c in (" aaa", " zzz", " zz")]
    assert scores == pytest.approx(hand, abs=1e-4)
    rec = {"question": "pick", "choices": {"text": ["aaa", "zzz"], "label": ["A", "B"]}, "answerKey": "B"}
    assert tasks.choice_predictions(model, tok, [rec], "arc") == [(1, 1)]
    bias[ord("a")] = 6.0
    assert tasks.choice_correct(BiasLM(bias), tok, [rec], "arc") == [0]


def _trained_like(seed=0) -> CognateModel:
    torch.manual_seed(seed)
    m = CognateModel(CognateConfig(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, max_steps=2, ltm_slots=8,
                                   ltm_key_dim=8, max_seq_len=64))
    with torch.no_grad():  # move every weight away from its init, as training would
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def _one_question_at_a_time(model, tok, records, fmt):
    """The reference scoring: one padded forward pass per question over prompt + each choice."""
    prompt_fn, choices_fn = {"arc": (formats.arc_prompt, formats.arc_choices),
                             "piqa": (formats.piqa_prompt, formats.piqa_choices)}[fmt]
    preds, scores = [], []
    for rec in records:
        conts, right = choices_fn(rec)
        p = tok.encode(prompt_fn(rec), bos=True)
        seqs = [p + tok.encode(c) for c in conts]
        batch = torch.full((len(seqs), max(map(len, seqs))), tok.pad_id)
        for i, x in enumerate(seqs):
            batch[i, : len(x)] = torch.tensor(x)
        with torch.no_grad():
            logp = F.log_softmax(model(batch).logits, -1)
        sc = [float(sum(logp[i, j - 1, x[j]] for j in range(len(p), len(x)))) for i, x in enumerate(seqs)]
        scores.append(sc)
        preds.append((max(range(len(sc)), key=sc.__getitem__), right))
    return preds, scores


def _seq_model(seed=0, max_seq_len=160) -> CognateModel:
    torch.manual_seed(seed)
    m = CognateModel(CognateConfig(d_model=32, n_layers=2, n_heads=2, ffn_hidden=64, max_steps=3, ltm_slots=8,
                                   ltm_key_dim=8, ltm_chunk=8, max_seq_len=max_seq_len))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m.eval()


@pytest.mark.parametrize("fmt", ["arc", "piqa"])
def test_batched_and_prefix_choice_scoring_equal_one_question_at_a_time(fmt, monkeypatch):
    from agentforge.data.build import eval_sets
    from agentforge.evals import prefix

    model, tok = _seq_model(), ByteTokenizer()
    recs = eval_sets({}, 3, 12, split="test")[fmt]
    if fmt == "piqa":  # a solution that is the other's start: all of it lies in the shared part
        recs.append({"goal": "To test it,", "sol1": "do it.", "sol2": "do it. twice", "label": 1})
    ref_preds, ref_scores = _one_question_at_a_time(model, tok, recs, fmt)
    assert len({p for p, _ in ref_preds}) > 1  # the model does not pick one answer every time
    items = [(tok.encode((formats.arc_prompt if fmt == "arc" else formats.piqa_prompt)(r), bos=True),
              [tok.encode(c) for c in (formats.arc_choices if fmt == "arc" else formats.piqa_choices)(r)[0]])
             for r in recs]
    shared = prefix.score_group(model, [p for p, _ in items], [cs for _, cs in items], tok.pad_id)
    assert [x for sc in shared for x in sc] == pytest.approx([x for sc in ref_scores for x in sc], rel=1e-5, abs=1e-4)
    assert prefix.prefers(*items[0], 160) or fmt == "piqa"  # ARC: a long prompt, four short choices
    assert prefix.shared_length(*items[0]) > len(items[0][0]) + (20 if fmt == "piqa" else 1)
    assert tasks.choice_predictions(model, tok, recs, fmt, batch_rows=5) == ref_preds
    monkeypatch.setattr(prefix, "prefers", lambda *a: True)   # every question through the shared prompt
    monkeypatch.setattr(prefix, "GROUP_ROWS", 7)
    assert tasks.choice_predictions(model, tok, recs, fmt) == ref_preds
    monkeypatch.setattr(prefix, "supports", lambda m: False)   # every question through full forward passes
    assert tasks.choice_predictions(model, tok, recs, fmt, batch_rows=3) == ref_preds


def test_prefix_groups_by_prompt_length():
    from agentforge.evals.prefix import groups

    assert groups([10, 11, 12, 13], [5, 3, 4, 9], [4, 4, 2, 4], rows=8) == [[11, 12], [10, 13]]
    assert groups([1], [5], [9], rows=8) == [[1]]


def test_prefix_sharing_by_hand():
    from agentforge.evals.prefix import prefers, shared_length

    p = [1] * 10
    assert shared_length(p, [[5, 6, 7], [5, 6, 8], [5, 9]]) == 11
    assert shared_length(p, [[5, 6], [5, 6, 7]]) == 12          # one choice is the other's start
    assert prefers(p * 3, [[5, 6, 7], [5, 6, 8], [5, 6, 9]], 64)  # 32 + 10 * 3 < 99
    assert not prefers(p, [[5, 6, 7], [5, 6, 8]], 64)           # 12 + 10 * 2 > 26
    assert not prefers(p * 3, [[5, 6, 7], [5, 6, 8], [5, 6, 9]], 32)  # beyond max_seq_len
    assert not prefers(p, [[5, 6, 7]], 64)                      # one choice: nothing to share


def test_batched_greedy_equals_one_prompt_at_a_time():
    model, tok = _seq_model(1, max_seq_len=48), ByteTokenizer()
    prompts = [tok.encode(t, bos=True) for t in ("Q: 1+2", "Question: 17 + 25 =", "x", "Answer: the cat sat on",
                                                 "a much longer prompt that will not fit in the cache")]
    single = [model.generate(torch.tensor([p]), 8)[0, len(p):].tolist() for p in prompts]
    eos = max(range(256), key=lambda t: sum(r[2:].count(t) for r in single))  # a token some rows emit early
    rows = [model.generate(torch.tensor([p]), 8, eos_id=eos)[0, len(p):].tolist() for p in prompts]
    ref = [r[: r.index(eos)] if eos in r else r for r in rows]
    assert len({len(r) for r in ref}) > 1  # rows stop at different steps
    assert tasks.greedy_tokens(model, prompts, 8, eos, batch_size=3) == ref
    assert tasks.greedy_tokens(model, prompts, 8, None, batch_size=16) == single
    assert len(prompts[-1]) + 8 > 48  # the last prompt is beyond the cache: decoded alone, as generate does


def test_batched_greedy_prefills_the_common_prompt_length(monkeypatch):
    from agentforge.models.kv_cache import CognateDecoder

    model, steps = _seq_model(2, max_seq_len=48), []
    step = CognateDecoder.step
    monkeypatch.setattr(CognateDecoder, "step", lambda self, token: steps.append(self.pos) or step(self, token))
    prompts = [list(range(10, 20)), list(range(30, 42))]  # 10 and 12 tokens
    out = tasks.greedy_batch(model, prompts, 3, None)
    # positions 0..9 in one forward pass; decoder steps only for positions 10..13 (the last new token is not fed)
    assert steps == [10, 11, 12, 13]
    assert out == [model.generate(torch.tensor([p]), 3)[0, len(p):].tolist() for p in prompts]


def test_surgery_is_an_identity_at_init_and_not_after():
    base = _trained_like()
    x = torch.randint(0, 256, (3, 24))
    wrapped = wrap(base, max_inner_steps=3)
    assert wrapped.added_params() > 0
    assert identity_gap(base, wrapped, x) == 0.0
    assert torch.equal(base.generate(x[:1, :5], 6), wrapped.generate(x[:1, :5], 6))
    st = refinement_stats(wrapped, x, chunk_width=8)
    assert st["avg_refine_steps"] == 1 and st["commit_rate"] == 1 and st["stability_at_k"] == 1
    assert st["avg_chunk_length"] == 8 and st["chunk_lengths"] == [8] * 9
    with torch.no_grad():
        wrapped.refine_out.weight.normal_(0, 0.5)
    assert identity_gap(base, wrapped, x) > 1e-3
    st = refinement_stats(wrapped, x, chunk_width=8)
    assert st["avg_refine_steps"] > 1 and st["commit_rate"] < 1


def test_chunk_statistics_by_hand():
    from agentforge.models.surgery import chunk_tensors

    preds = torch.tensor([[1, 1, 1, 1],    # step 0 (the base model)
                          [1, 2, 1, 3],    # step 1: tokens 0 and 2 stable
                          [1, 2, 1, 4]])   # step 2: token 1 stable, token 3 never
    st = {k: v[0].tolist() for k, v in chunk_tensors(preds[:, None], 2).items()}   # one row: [K+1, 1, T]
    assert st == {"steps": [2, 2], "committed": [True, False], "length": [2, 1], "stable": [True, False]}


def test_refiner_trains_its_zero_init_output():
    wrapped = wrap(_trained_like()).train()
    x = torch.randint(0, 256, (2, 17))
    out = wrapped(x[:, :-1], x[:, 1:])
    out.loss.backward()
    assert wrapped.refine_out.weight.grad.abs().sum() > 0


def test_recursive_checkpoint_roundtrip(tmp_path):
    from agentforge.artifacts import load_any
    from agentforge.evals.checkpoints import save_recursive

    wrapped = wrap(_trained_like())
    with torch.no_grad():
        wrapped.refine_out.bias.fill_(0.1)
    save_recursive(tmp_path / "ck", wrapped, ByteTokenizer())
    loaded, _, cfg = load_any(tmp_path / "ck")
    x = torch.randint(0, 256, (2, 10))
    assert cfg["architecture"] == "Cognate-Recursive"
    assert torch.equal(loaded(x).logits, wrapped(x).logits)


def test_generation_stats_by_hand():
    assert gs.distinct_n(["a b a b"], 1) == 0.5
    assert gs.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert gs.seq_rep_n("x y z w x y z w", 4) == pytest.approx(1 - 4 / 5)
    assert gs.seq_rep_n("one two", 4) == 0.0
    assert gs.coherence(["cat dog qzx"], {"cat", "dog"}) == pytest.approx(2 / 3)
    assert gs.prompt_overlap(["Ada has 5 apples"], ["Ada has 7"]) == pytest.approx(2 / 3)
    st = gs.generation_stats(["p"], ["hello hello"], [11], ["hello world"])
    assert st["gen/avg_length_tokens"] == 11 and st["gen/coherence"] == 1.0


def test_collect_metrics_and_gate(tmp_path):
    lines = [{"_step": 0, "_time": 1.0, "train/loss": 5.0, "note": "x"},
             {"_step": 1, "_time": 3.0, "train/loss": 4.0, "val/loss": 4.5},
             {"_step": 2, "_time": 4.0, "train/loss": float("nan")}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + '\n{"_step": 3, "tra')
    s = json.loads(collect_metrics(tmp_path).read_text())
    tl = s["metrics"]["train/loss"]
    assert (tl["count"], tl["nonfinite"], tl["first"], tl["last"], tl["min"], tl["mean"]) == (2, 1, 5.0, 4.0, 4.0, 4.5)
    assert s["unstable"] and s["torn_lines"] == 1 and s["wall_seconds"] == 3.0 and s["records"] == 3
    # the final train/loss was NaN: the gate reads NaN and fails, not the last finite 4.0 (it passed '<=4')
    assert tl["last_nonfinite"] and check_gate(s, {"train/loss": "<=4"}) == ["train/loss = nan, needed <=4"]
    assert check_gate(s, {"train/loss.min": "<=4", "val/loss.min": "<5", "val/loss": "<=4.5"}) == []
    fails = check_gate(s, {"train/loss.max": "<=4", "missing/key": ">=1"})
    assert len(fails) == 2 and "missing/key" in fails[1]
    assert summarize_jsonl(tmp_path / "metrics.jsonl")["metrics"]["val/loss"]["last"] == 4.5


def test_kpi_gate_script_exit_codes(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("kpi_gate", REPO / "scripts" / "kpi_gate.py")
    gate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gate)
    f = tmp_path / "r.json"
    f.write_text(json.dumps({"metrics": {"perplexity": 12.0, "reasoning_accuracy": 0.1}}))
    assert gate.main([str(f), "--require", "metrics.perplexity<=20"]) == 0
    assert gate.main([str(f), "--require", "metrics.reasoning_accuracy>=0.3"]) == 1
    assert "FAIL metrics.reasoning_accuracy = 0.1" in capsys.readouterr().out
    assert gate.main([str(f), "--require", "metrics.perplexity=~3"]) == 2
    capsys.readouterr()
    # a misspelled key is a usage error (2), not a failed KPI (1), and names the closest key the file has
    assert gate.main([str(f), "--require", "metrics.perplexty<=20"]) == 2
    assert "no key 'metrics.perplexty' (did you mean metrics.perplexity" in capsys.readouterr().err


EVAL_TINY = ["logger=none", "hardware=cpu", "phase.eval_examples=3", "phase.choice_examples=3", "phase.val_rows=2",
             "phase.gen_tokens=4",
             "phase.pass_k_samples=2", "phase.pass_k=[1,2]", "phase.latency_tokens=16", "data.seq_len=32",
             "data.batch_size=4"]


def test_cli_eval_stages_then_compare(cognate_artifacts, tmp_path, capsys):
    art_dir = cognate_artifacts.parent / "eval_e2e_artifacts"
    ck = f"checkpoint={cognate_artifacts / 'cognate' / 'model1'}"
    out = {}
    for stage, extra in (("baseline", []), ("after_surgery", []), ("finetuned_vanilla", ["phase.finetune_steps=2"])):
        args = ["phase=eval", ck, f"stage={stage}", *EVAL_TINY, *extra]
        if stage != "finetuned_vanilla":   # in this process; the fine-tuned stage through the real CLI
            ran = run_in_process(args, tmp_path / stage, capsys, artifacts=art_dir)
            out[stage] = ran.stdout
            # what a sweep's jobs record as published, for its overwrite warning: the stage's model (after surgery,
            # fine-tuned) and its results file
            assert ran.result["published"] == [*filter(None, [ran.result["checkpoint"]]),
                                               str(art_dir / "eval_results" / f"{stage}_results.json")]
            continue
        proc = run_cli([*args, f"paths.artifacts={art_dir}"], tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[stage] = proc.stdout
    r = {s: json.loads((art_dir / "eval_results" / f"{s}_results.json").read_text())
         for s in ("baseline", "after_surgery", "finetuned_vanilla")}
    b, a, f = r["baseline"]["metrics"], r["after_surgery"]["metrics"], r["finetuned_vanilla"]["metrics"]
    digest = weights_sha256(cognate_artifacts / "cognate" / "model1")   # which model each stage evaluated
    assert digest and all(r[s]["checkpoint_weights_sha256"] == digest for s in r)
    assert r["after_surgery"]["surgery"]["max_abs_logit_diff"] == 0.0 and r["after_surgery"]["surgery"]["identity_ok"]
    for k in ("perplexity", "token_accuracy", "reasoning_accuracy", "arc_easy_accuracy", "piqa_accuracy"):
        assert a[k] == pytest.approx(b[k], rel=1e-6), k
    assert a["avg_refine_steps"] == 1 and a["stability_at_k"] == 1
    assert r["finetuned_vanilla"]["finetune"]["steps"] == 2 and f["perplexity"] != b["perplexity"]
    for m in (b, f):
        assert m["perplexity"] > 1 and 0 <= m["token_accuracy"] <= 1 and m["param_count"] > 0
        assert m["latency_ms"] > 0 and m["throughput_tokens_per_sec"] > 0 and math.isfinite(m["peak_memory_mb"])
    assert len(r["baseline"]["per_example"]["gsm8k_correct"]) == 3
    for stage, res in r.items():   # the share of answers cut at gen_tokens, warned about; latency's regime
        rate, m = res["metrics"]["gen/truncated_rate"], res["metrics"]
        assert rate == sum(res["per_example"]["gsm8k_truncated"]) / 3
        assert ("hit phase.gen_tokens=4 without EOS" in out[stage]) == (rate > 0)
        # no synthetic worked answer fits 4 tokens: the protocol, not the model, sets the accuracies, and eval says so
        assert res["reference_fit"]["rate"] == 0 and m["gen/reference_fit_rate"] == 0
        assert "warning: phase.gen_tokens=4 fits 0% of the 3 GSM8K reference answers" in out[stage]
        assert res["memory_regime"] == {"measure": "process RSS", "finetuned_in_process": stage == "finetuned_vanilla"}
        assert m["latency_tokens"] == 16 and m["decode_cached"] == (stage != "after_surgery")
    assert r["baseline"]["per_example"]["arc_ids"] == r["finetuned_vanilla"]["per_example"]["arc_ids"]
    per = r["baseline"]["per_example"]   # each choice question's chance rate, 1 / its choices
    assert len(per["arc_chance"]) == len(per["arc_correct"]) and set(per["piqa_chance"]) == {0.5}
    assert all(0 < c <= 0.5 for c in per["arc_chance"])
    assert len(per["gsm8k_chance"]) == 3 and set(per["gsm8k_chance"]) <= {0.0, 1.0} and sum(per["gsm8k_chance"]) >= 1
    assert (art_dir / "eval" / "finetuned_vanilla" / "config.json").is_file()

    # the comparison in this process too (phase=compare through the real CLI: test_compare_table.py)
    ran = run_in_process(["phase=compare", "stages=[baseline,after_surgery,finetuned_vanilla]", "logger=none",
                          "phase.n_resamples=1000"], tmp_path / "compare", capsys, artifacts=art_dir)
    assert "| perplexity | lower |" in ran.stdout and "verdict (finetuned_vanilla vs baseline)" in ran.stdout
    run_dir = Path(ran.result["run_dir"])
    stats = json.loads((run_dir / "compare" / "stats.json").read_text())
    assert stats["verdict"] == "INCONCLUSIVE"            # 3 examples: too few for any verdict
    assert stats["reasons"][0].startswith("baseline: phase.gen_tokens=4 fits 0% of the 3 GSM8K reference answers")
    assert stats["pass_at_1"]["pairing"] == "by example id" and not stats["pass_at_1"]["enough"]
    assert {"finetuned_vanilla", "baseline", "delta", "ci95", "p_value"} <= set(stats["pass_at_1"])
    pngs = list((run_dir / "compare" / "plots").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_eval_missing_checkpoint_is_a_checkpoint_error(tmp_path):
    from agentforge.io import CheckpointError
    from agentforge.main import run
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["phase=eval", f"checkpoint={tmp_path / 'nope'}", "logger=none"], tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        run(cfg)
    for bad in ("bad/name", ".", "..", ".hidden"):   # '.' and '..' would publish into artifacts/eval itself or above
        cfg = compose_cfg(["phase=eval", f"stage={bad}", "logger=none"], tmp_path)
        with pytest.raises(ConfigError, match="stage="):
            run(cfg)
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.safetensors"))


@pytest.mark.slow
def test_cli_finetuned_recursive_and_reload(cognate_artifacts, tmp_path):
    art_dir = cognate_artifacts.parent / "eval_e2e_recursive"
    art = f"paths.artifacts={art_dir}"
    ck = f"checkpoint={cognate_artifacts / 'cognate' / 'model1'}"
    proc = run_cli(["phase=eval", ck, "stage=finetuned_recursive", "phase.finetune_steps=2", "phase.chunk_width=4", art,
                    *EVAL_TINY], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads((art_dir / "eval_results" / "finetuned_recursive_results.json").read_text())
    assert first["surgery"]["identity_ok"] and first["finetune"]["steps"] == 2 and first["recursive"]
    rows = [json.loads(x) for f in (tmp_path / "outputs" / "runs").rglob("metrics.jsonl")
            for x in f.read_text().splitlines()]   # the fine-tune's steps log the wrapper's refinement, in its chunks
    logged = [r for r in rows if "train/generation/commit_rate" in r]
    assert len(logged) == 2 and all(0 < r["train/generation/avg_chunk_length"] <= 4 for r in logged)
    assert logged[0]["train/generation/avg_chunk_length"] == 4   # at surgery: an identity, every chunk committed
    proc = run_cli(["phase=eval", f"checkpoint={art_dir / 'eval' / 'finetuned_recursive'}", "stage=reloaded", art,
                    *EVAL_TINY], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((art_dir / "eval_results" / "reloaded_results.json").read_text())
    assert again["surgery"] is None and again["recursive"]
    assert again["metrics"]["perplexity"] == pytest.approx(first["metrics"]["perplexity"], rel=1e-5)


def test_a_forgotten_stage_does_not_overwrite_another_checkpoints_baseline(tmp_path):
    from agentforge.errors import ConfigError
    from agentforge.phases.eval import _guard_results_overwrite

    (tmp_path / "eval_results").mkdir()
    (tmp_path / "eval_results" / "baseline_results.json").write_text(json.dumps({"checkpoint": "/x/other"}))
    with pytest.raises(ConfigError, match=r"stage: not given, so it is 'baseline'.*\(/x/other\); give stage=NAME"):
        _guard_results_overwrite(tmp_path, Path("/x/mine"))
    _guard_results_overwrite(tmp_path, Path("/x/other"))           # the same checkpoint: re-evaluated
    _guard_results_overwrite(tmp_path / "none", Path("/x/mine"))   # no baseline yet



def test_an_explicit_stage_replacing_another_checkpoints_results_says_so(tmp_path, capsys):
    """`phase=eval checkpoint=.../model2 stage=baseline` silently replaced model1's baseline results (an audit): an
    explicit stage may replace them, and one line names the checkpoint whose results go."""
    from agentforge.phases.eval import _guard_results_overwrite

    (tmp_path / "eval_results").mkdir()
    (tmp_path / "eval_results" / "baseline_results.json").write_text(json.dumps({"checkpoint": "/x/model1"}))
    _guard_results_overwrite(tmp_path, Path("/x/model2"), "baseline")
    out = capsys.readouterr().out
    assert out == (f"note: {tmp_path}/eval_results/baseline_results.json holds stage baseline's results of another "
                   f"checkpoint (/x/model1); this run replaces them\n")
    for stage, ckpt in (("baseline", "/x/model1"), ("after_surgery", "/x/model2")):   # the same one; no results yet
        _guard_results_overwrite(tmp_path, Path(ckpt), stage)
    assert capsys.readouterr().out == ""


def test_the_printed_line_gives_each_accuracy_and_the_perplexity_with_its_ci_and_n():
    """16 GSM8K questions, 4 right: 0.25 [exact (Clopper-Pearson) 0.07266, 0.5238] n=16; the perplexity of 8 equal row losses: its CI
    is the point; figures with no per-example record print bare."""
    import math

    from agentforge.phases.eval import summary_line

    m = {"perplexity": math.exp(2.0), "reasoning_accuracy": 0.25, "latency_ms": 12.0}
    line = summary_line("baseline", m, {"gsm8k_correct": [1] * 4 + [0] * 12, "row_loss": [2.0] * 8})
    assert "reasoning_accuracy 0.25 [0.07266, 0.5238] n=16" in line
    assert "perplexity 7.389 [7.389, 7.389] n=8" in line and "latency_ms 12  " not in line
    assert line.endswith("latency_ms 12") and summary_line("b", {"latency_ms": 12.0}) == "b: latency_ms 12"


def _chunk_reference(preds, width):
    """The module docstring's definitions, position by position in Python (the vectorized ``chunk_tensors``'
    reference): [K+1, T] predictions of one row -> per-chunk lists."""
    k, t = preds.shape[0] - 1, preds.shape[1]
    p = preds.tolist()
    first = [next((s for s in range(1, k + 1) if p[s][i] == p[s - 1][i]), None) for i in range(t)]
    out = {"steps": [], "committed": [], "length": [], "stable": []}
    for j in range(0, t, width):
        idx = range(j, min(j + width, t))
        out["steps"].append(max(k if first[i] is None else first[i] for i in idx))
        out["committed"].append(all(first[i] is not None for i in idx))
        length = 0
        for i in idx:
            if first[i] is None:
                break
            length += 1
        out["length"].append(length)
        out["stable"].append(all(p[s][i] == p[1][i] for s in range(1, k + 1) for i in idx))
    return out


def test_vectorized_chunk_statistics_equal_the_definitions_and_the_training_batch_metrics_aggregate_them():
    from agentforge.models.surgery import batch_refinement_metrics, chunk_tensors

    g = torch.Generator().manual_seed(3)
    for t, width in ((13, 4), (16, 16), (7, 3), (5, 8)):
        preds = torch.randint(0, 3, (4, 2, t), generator=g)   # 3 steps, 2 rows, few values: many stable steps
        ch = chunk_tensors(preds, width)
        for b in range(2):
            ref = _chunk_reference(preds[:, b], width)
            assert {k: v[b].tolist() for k, v in ch.items()} == ref, (t, width, b)
            assert {k: v[0].tolist() for k, v in chunk_tensors(preds[:, b:b + 1], width).items()} == ref
        m = batch_refinement_metrics(preds, width)
        refs = [_chunk_reference(preds[:, b], width) for b in range(2)]
        steps = [s for r in refs for s in r["steps"]]
        assert float(m["avg_refine_steps"]) == pytest.approx(sum(steps) / len(steps))
        assert float(m["commit_rate"]) == pytest.approx(sum(c for r in refs for c in r["committed"]) / sum(steps))
        lengths = [n for r in refs for n in r["length"]]
        assert float(m["avg_chunk_length"]) == pytest.approx(sum(lengths) / len(lengths))


def test_a_recursive_wrappers_training_logs_its_refinement_per_step(tmp_path):
    """The evaluation plan's train/generation/* keys, logged by the fine-tune's LMModule for a wrapper, so "the commit
    rate should increase during training" can be watched: at surgery every token is stable after one step (commit
    rate 1, one step, full chunks); the values are the batch's own (``batch_refinement_metrics``)."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from agentforge.tracking.loggers import JsonlLogger
    from agentforge.training.lm_module import LMModule
    from agentforge.training.trainer import build_trainer

    L.seed_everything(0, verbose=False)
    wrapped = wrap(_trained_like(), max_inner_steps=2)
    module = LMModule(wrapped, {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 0, "min_lr_ratio": 0.1},
                      total_steps=2,
                      chunk_width=4)
    data = DataLoader(TensorDataset(torch.randint(0, 256, (4, 17), generator=torch.Generator().manual_seed(1))),
                      batch_size=2)
    logger = JsonlLogger(tmp_path)
    trainer = build_trainer({"accelerator": "cpu"}, loggers=[logger], callbacks=[], max_epochs=1, max_steps=2,
                            default_root_dir=tmp_path, enable_progress_bar=False, enable_checkpointing=False)
    trainer.fit(module, data)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "train/generation/commit_rate" in r]
    assert len(logged) == 2
    first = logged[0]   # step 0 ran the zero-initialized refinement: an identity
    assert (first["train/generation/avg_refine_steps"], first["train/generation/commit_rate"],
            first["train/generation/avg_chunk_length"]) == (1.0, 1.0, 4.0)


def test_the_training_batch_refinement_metrics_make_no_host_sync():
    """``batch_refinement_metrics`` (logged every fine-tune step) stays on the device: no .item()/bool()/tolist()."""
    from agentforge.models.surgery import batch_refinement_metrics
    from tests.test_host_syncs import CountHostSyncs

    preds = torch.randint(0, 3, (4, 2, 13), generator=torch.Generator().manual_seed(0))
    with CountHostSyncs() as c:
        batch_refinement_metrics(preds, 4)
    assert c.calls == []
