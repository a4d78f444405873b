"""GSM8K answers cut at the token limit, the gen_tokens defaults, and the latency length cap."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from agentforge.data import formats, synthetic
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.evals import speed, tasks
from agentforge.evals.answers import answers_match, complete_part
from agentforge.evals.reference_fit import MIN_REFERENCE_FIT, reference_fit, shortfall
from agentforge.evals.runner import EvalSettings, evaluate
from agentforge.models import CognateConfig, CognateModel
from agentforge.models.surgery import wrap
from tests.conftest import GSM8K_TEST, REPO, compose_cfg

TOK = ByteTokenizer()


class Scripted(torch.nn.Module):
    """Greedy decoding of a GSM8K prompt writes ``write(record)`` and then EOS, token by token."""

    def __init__(self, records, write):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_seq_len=4096)
        self.next = {}
        for r in records:
            s = TOK.encode(formats.gsm8k_prompt(r) + write(r), bos=True, eos=True)
            for i in range(1, len(s)):
                self.next[tuple(s[:i])] = s[i]

    def forward(self, ids):   # only the last position is meaningful (all greedy decoding reads)
        out = torch.full((*ids.shape, TOK.vocab_size), -10.0)
        for b in range(ids.shape[0]):
            out[b, -1, self.next.get(tuple(ids[b].tolist()), 0)] = 10.0
        return out


def _tenfold(r):
    """The worked answer with its result written ten times too large ("= 330 books", "#### 330" for 33)."""
    c = formats.gsm8k_target(r).rsplit("#### ", 1)[1]
    return formats.gsm8k_target(r).replace(f"= {c} ", f"= {c}0 ").replace(f"#### {c}", f"#### {c}0")


RECORDS = synthetic.generate("arithmetic", 40, 0, "test")


def _defaults() -> dict[str, int]:
    conf = REPO / "conf" / "phase"
    c = {n: OmegaConf.load(conf / f"{n}.yaml") for n in ("eval", "evomerge", "bitnet", "quietstar", "cognate")}
    return {"eval": c["eval"].gen_tokens, "evomerge": c["evomerge"].eval.gen_tokens, "bitnet": c["bitnet"].gen_tokens,
            "quietstar": c["quietstar"].rl.gen_tokens, "cognate": c["cognate"].gen_tokens}


def test_longest_synthetic_answer_fits_every_default_gen_tokens():
    longest = max(len(TOK.encode(formats.gsm8k_target(r), eos=True))
                  for seed in range(3) for split in ("val", "test")
                  for r in (synthetic.draw("arithmetic", seed, split, i) for i in range(2000)))
    assert longest == 45   # e.g. " Lena has 35 - 15 = 20 pencils left.\n#### 20": 44 bytes + EOS
    assert all(n >= longest for n in _defaults().values()), _defaults()


def test_oracle_scores_one_at_every_default_gen_tokens():
    oracle = Scripted(RECORDS, formats.gsm8k_target)
    for n in sorted(set(_defaults().values())):
        gens, lengths = tasks.gsm8k_greedy(oracle, TOK, RECORDS, n)
        assert max(lengths) < n and not any(g.truncated for g in gens)
        assert tasks.gsm8k_correct(gens, RECORDS) == [1] * len(RECORDS), n


def test_a_number_cut_at_the_limit_gets_no_credit():
    wrong = Scripted(RECORDS, _tenfold)   # never right: it writes 330 where the answer is 33
    credited = 0
    for n in range(30, 50):
        gens, lengths = tasks.gsm8k_greedy(wrong, TOK, RECORDS, n)
        assert [g.truncated for g in gens] == [k >= n for k in lengths]
        assert sum(tasks.gsm8k_correct(gens, RECORDS)) == 0, n                 # via Generation.truncated
        assert sum(tasks.gsm8k_correct([str(g) for g in gens], RECORDS, [k >= n for k in lengths])) == 0
        credited += sum(tasks.gsm8k_correct([str(g) for g in gens], RECORDS, [False] * len(gens)))
    assert credited > 0   # scored as if complete, "#### 33" of a cut "#### 330" is credited


def test_a_sampled_answer_cut_at_the_limit_gets_no_credit():
    wrong = Scripted(RECORDS[:20], _tenfold)   # logits +-10: sampling at temperature 0.8 writes its text
    counts = [tasks.gsm8k_sample_counts(wrong, TOK, RECORDS[:20], 2, n) for n in range(34, 48)]
    assert all(c == 0 for cs in counts for c in cs)


def test_complete_part_and_answers_match_by_hand():
    cut = " Ben has 9 * 12 = 108 marbles.\n#### 10"
    assert answers_match(cut, "#### 10") and not answers_match(cut, "#### 10", truncated=True)
    assert answers_match(cut, "#### 108", truncated=True)          # the body's complete 108 is its last number
    assert complete_part("x = 1,000.") == "x = " and complete_part("#### 7 apples") == "#### 7 apples"
    assert answers_match("#### 7 apples", "#### 7", truncated=True)  # a number followed by text is complete
    ended = " Eve has 48 - 15 = 33 books left.\n#### 33"               # ended with EOS: scored as it is
    assert answers_match(ended, "#### 33") and tasks.gsm8k_correct([ended], [{"answer": "#### 33"}]) == [1]


def test_runner_reports_the_truncated_rate():
    oracle = Scripted(RECORDS[:8], formats.gsm8k_target)
    rows = torch.randint(0, 256, (2, 17))
    s = dict(pass_k_samples=0, latency_tokens=0, batch_size=4)
    full = evaluate(oracle, TOK, {"gsm8k": RECORDS[:8]}, rows, EvalSettings(gen_tokens=48, **s))
    assert full["metrics"]["reasoning_accuracy"] == 1.0 and full["metrics"]["gen/truncated_rate"] == 0.0
    short = evaluate(oracle, TOK, {"gsm8k": RECORDS[:8]}, rows, EvalSettings(gen_tokens=16, **s))
    assert short["metrics"]["reasoning_accuracy"] == 0.0 and short["metrics"]["gen/truncated_rate"] == 1.0
    assert short["per_example"]["gsm8k_truncated"] == [1] * 8
    assert full["metrics"]["gen/reference_fit_rate"] == 1.0 and short["metrics"]["gen/reference_fit_rate"] == 0.0
    assert short["reference_fit"]["answer_tokens_p95"] <= 45 and short["reference_fit"]["max_seq_len"] == 4096
    assert all(type(g) is str for g in short["per_example"]["generations"])   # plain JSON strings


def test_reference_fit_by_hand():
    """Answers of 10, 20, 30 and 40 tokens (" " + text + EOS) after 20-token prompts ("Question: Q\\nAnswer:" + BOS):
    a budget of 30 fits 3 of 4; in a 45-token context only the first two fit with their prompts (30 and 40 tokens);
    19 of 20 fitting is the threshold, 0.95, and no shortfall."""
    recs = [{"question": "Q", "answer": "x" * (k - 2)} for k in (10, 20, 30, 40)]
    fit = reference_fit(TOK, recs, 30)
    assert (fit["rate"], fit["fit"], fit["n"], fit["answer_tokens_p95"], fit["context_tokens_p95"]) == (0.75, 3, 4, 40, 60)
    assert reference_fit(TOK, recs, 30, max_seq_len=45)["fit"] == 2 and reference_fit(TOK, recs, 40)["rate"] == 1.0
    why = shortfall(reference_fit(TOK, recs, 30, max_seq_len=45))
    assert why.startswith("phase.gen_tokens=30 fits 50% of the 4 GSM8K reference answers (gen/reference_fit_rate "
                          "0.500 < 0.95); 95 % of them need phase.gen_tokens >= 40 and 60 tokens of context with the "
                          "prompt (the model's max_seq_len is 45)")
    twenty = [{"question": "Q", "answer": "x" * (8 if i else 38)} for i in range(20)]
    assert reference_fit(TOK, twenty, 30)["rate"] == MIN_REFERENCE_FIT and shortfall(reference_fit(TOK, twenty, 30)) is None
    assert shortfall(reference_fit(TOK, twenty[:19] + twenty[:1], 30)) is not None   # 18 of 20


@pytest.mark.skipif(not GSM8K_TEST.is_file(), reason="../shared/data/gsm8k absent")
def test_real_gsm8k_answers_fit_data_gsm8k_budget_only_in_the_25m_context(tmp_path):
    """The 133 test questions of the real file: 48 tokens fit none of their answers (median 231 tokens + EOS, min 69;
    95 % need 467), and an oracle writing the reference solutions scores 2 of 133 there; data=gsm8k sets phase=eval's
    budget to 512, which fits 127 with their prompts in size=25m's 1024-token context; in the 512 of size=tiny / small
    no budget fits more than 71."""
    import statistics

    from agentforge.data.build import file_records_of_split

    cfg = compose_cfg(["phase=eval", "data=gsm8k", f"data.path={GSM8K_TEST}", f"data.eval_paths.gsm8k={GSM8K_TEST}"],
                      tmp_path)
    recs = file_records_of_split(OmegaConf.to_container(cfg.data, resolve=True), "test")
    old = reference_fit(TOK, recs, 48)
    assert (old["n"], old["fit"], old["answer_tokens_p95"]) == (133, 0, 467)
    answers = [TOK.encode(formats.gsm8k_target(r), eos=True) for r in recs]
    assert statistics.median(len(a) for a in answers) == 231 and min(len(a) for a in answers) == 69
    cut = [a[:48] for a in answers]   # the oracle's answers at the old budget: none reached its EOS
    assert sum(answers_match(TOK.decode(c), r["answer"], truncated=TOK.eos_id not in c) for c, r in zip(cut, recs)) == 2
    ctx = {s: OmegaConf.load(REPO / "conf" / "size" / f"{s}.yaml").max_seq_len for s in ("tiny", "small", "25m")}
    assert ctx == {"tiny": 512, "small": 512, "25m": 1024} and cfg.phase.gen_tokens == 512
    assert reference_fit(TOK, recs, 512, ctx["25m"])["fit"] == 127 and 127 / 133 >= MIN_REFERENCE_FIT
    assert reference_fit(TOK, recs, 10**6, ctx["tiny"])["fit"] == 71


def _tiny(max_seq_len=64) -> CognateModel:
    torch.manual_seed(0)
    return CognateModel(CognateConfig(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, max_steps=2, ltm_slots=8,
                                      ltm_key_dim=8, max_seq_len=max_seq_len)).eval()


def test_latency_is_capped_to_the_kv_cache_and_records_what_was_generated(capsys, monkeypatch):
    m = _tiny()
    assert speed.latency_fit(m, 512, 8) == (56, True) and speed.latency_fit(m, 20, 8) == (20, True)
    asked = []
    real = tasks.generate
    monkeypatch.setattr(tasks, "generate", lambda model, ids, n, *a, **k: asked.append(n) or real(model, ids, n, *a, **k))
    assert speed.generation_latency_ms(m, 512) > 0 and asked[-1] == 56    # 8 + 56 = max_seq_len: the cached path
    rows = torch.randint(0, 256, (2, 17))
    res = evaluate(m, TOK, {}, rows, EvalSettings(pass_k_samples=0, latency_tokens=512, batch_size=2))
    met = res["metrics"]
    assert met["latency_tokens"] == 56 and met["decode_cached"] is True
    assert met["throughput_tokens_per_sec"] == pytest.approx(56 / (met["latency_ms"] / 1000))
    assert "latency measured over 56 generated tokens, not phase.latency_tokens=512" in capsys.readouterr().out
    res = evaluate(m, TOK, {}, rows, EvalSettings(pass_k_samples=0, latency_tokens=16, batch_size=2))
    assert res["metrics"]["latency_tokens"] == 16 and "latency measured" not in capsys.readouterr().out
    assert speed.latency_fit(wrap(m, 2), 512, 8) == (56, False)   # the refiner has no KV decoder
