"""Held-out data: eval files split into val and test, sources of phase=eval's questions, whitespace-normalized and
folded content keys, canonical (per-problem) keys of the synthetic tasks, and record checks that catch what would crash or
mis-score later."""
from __future__ import annotations

import json
import random
import re

import pytest
from omegaconf import OmegaConf

from agentforge.data import formats, synthetic
from agentforge.data.build import eval_sets
from agentforge.data.ids import example_ids
from agentforge.errors import ConfigError
from tests.conftest import GSM8K_TEST, TINY, compose_cfg, run_cli

needs_gsm8k = pytest.mark.skipif(not GSM8K_TEST.is_file(), reason="../shared/data/gsm8k absent")
N = {"gsm8k": 1000, "arc": 1, "piqa": 1}


def _write(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return str(path)


def _qa(n, start=0):
    return [{"question": f"Q{i}: what is {i} + {i}?", "answer": f"#### {2 * i}"} for i in range(start, start + n)]


def _eval_cfg(train, evalf, hf=()):
    return OmegaConf.create({"seed": 0, "data": {"path": train, "format": "gsm8k", "eval_paths": {"gsm8k": evalf},
                                                 "seq_len": 64, "batch_size": 4}, "phase": {"hf_datasets": list(hf)}})


# -- A: val and test of an eval file are disjoint; hf_datasets are decontaminated and split --------------------------
def test_an_eval_file_gives_val_and_test_sets_that_share_no_record(tmp_path):
    """Before: an eval-only config gave the same 400 records as val (selection) and as test (reported)."""
    f = _write(tmp_path / "eval.jsonl", _qa(400))
    val, test = (eval_sets({"eval_paths": {"gsm8k": f}}, 0, N, sp)["gsm8k"] for sp in ("val", "test"))
    assert val and test and not set(example_ids(val)) & set(example_ids(test))
    assert len(val) + len(test) == 400  # every record is in one of the two halves
    assert {synthetic.eval_file_split("gsm8k", r) for r in test} == {"test"}
    train = _write(tmp_path / "train.jsonl", _qa(300, start=1000))   # a separate training file: the same split
    val2, test2 = (eval_sets({"path": train, "format": "gsm8k", "eval_paths": {"gsm8k": f}}, 0, N, sp)["gsm8k"]
                   for sp in ("val", "test"))
    assert (val2, test2) == (val, test)


def test_hf_datasets_are_filtered_against_the_training_file_and_split(tmp_path, monkeypatch):
    """Before: phase.hf_datasets=[gsm8k] with data.path the same questions scored 180 of 200 trained-on questions."""
    from agentforge.phases import eval as ev

    recs = _qa(600)
    train = _write(tmp_path / "train.jsonl", recs)
    monkeypatch.setattr(formats, "load_hf", lambda name, split, limit=None: [dict(r) for r in recs][:limit])
    sources = {}
    sets = ev.load_sets(_eval_cfg(train, "", hf=["gsm8k"]), {"gsm8k": 1000, "arc": 2, "piqa": 2}, sources)
    assert sets["gsm8k"] and {synthetic.record_split("gsm8k", r) for r in sets["gsm8k"]} == {"test"}
    trained = {r["question"] for r in recs if synthetic.record_split("gsm8k", r) != "test"}
    assert not {r["question"] for r in sets["gsm8k"]} & trained
    assert sources["gsm8k"].startswith("hf:gsm8k/test") and sources["arc"] == "synthetic"


# -- B: a given eval file is what phase=eval scores, and the results say so ------------------------------------------
def test_an_eval_file_is_not_replaced_by_the_training_files_test_split(tmp_path):
    train = _write(tmp_path / "train.jsonl", _qa(700))
    evalf = _write(tmp_path / "eval.jsonl", _qa(619, start=700))
    from agentforge.phases import eval as ev

    sources = {}
    got = ev.load_sets(_eval_cfg(train, evalf), {"gsm8k": 1000, "arc": 2, "piqa": 2}, sources)["gsm8k"]
    assert got and set(example_ids(got)) <= set(example_ids(_qa(619, start=700)))
    assert sources == {"gsm8k": evalf, "arc": "synthetic", "piqa": "synthetic"}
    sources = {}   # no eval file: data.path's own test split, named as such
    got = ev.load_sets(_eval_cfg(train, ""), {"gsm8k": 1000, "arc": 2, "piqa": 2}, sources)["gsm8k"]
    assert {synthetic.record_split("gsm8k", r) for r in got} == {"test"} and "data.path, test split" in sources["gsm8k"]


@pytest.mark.slow
@needs_gsm8k
def test_phase_eval_scores_the_eval_file_given_cli(tmp_path):
    """The report's command: train file = GSM8K lines 1-700, eval file = lines 701-1319; every scored id is the eval
    file's (before: 2 of 2 were data.path records) and the results name the file."""
    import torch

    from agentforge.artifacts import cognate_config_from, save_model
    from agentforge.data.tokenizer import RESERVED_VOCAB, ByteTokenizer
    from agentforge.models import CognateModel

    lines = GSM8K_TEST.read_text().splitlines(keepends=True)
    train, evalf = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text("".join(lines[:700]))
    evalf.write_text("".join(lines[700:]))
    cfg = compose_cfg(TINY, tmp_path)
    torch.manual_seed(0)
    ckpt = save_model(tmp_path / "ckpt", CognateModel(cognate_config_from(OmegaConf.to_container(cfg.model,
                                                      resolve=True), RESERVED_VOCAB)), ByteTokenizer())
    fast = ["logger=none", "hardware=cpu", "phase.eval_examples=2", "phase.gen_tokens=4", "phase.val_rows=2",
            "phase.pass_k_samples=0", "phase.pass_k=[1]", "phase.latency_tokens=4", "data.seq_len=32"]
    proc = run_cli(["phase=eval", f"checkpoint={ckpt}", "stage=override", *fast, f"data.path={train}",
                    "data.format=gsm8k", f"+data.eval_paths.gsm8k={evalf}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "outputs" / "artifacts" / "eval_results" / "override_results.json").read_text())
    ids = res["per_example"]["gsm8k_ids"]
    assert ids and set(ids) <= set(example_ids(formats.load_jsonl(evalf, "gsm8k")))
    assert res["dataset_sources"]["gsm8k"] == str(evalf)


# -- C: whitespace variants are the same content -----------------------------------------------------------------------
def test_whitespace_normalization_leaves_every_synthetic_key_as_it_was():
    """Synthetic prompts and texts have no double, leading or trailing spaces: normalizing changes none of them, so
    the normalization moves only records of users' files (GSM8K: 339 of 1,319)."""
    for task in ("plain_text", "recall", "arithmetic", "choice", "piqa"):
        for split in synthetic.SPLITS:
            for i in range(40):
                key = synthetic.prompt_key(task, synthetic.GENERATORS[task](0, split, i))
                assert synthetic.normalize_ws(key) == key, (task, key)
    assert synthetic.normalize_ws(" a  b \t c \nAnswer:  ") == "a b c\nAnswer:"


def test_an_eval_file_with_trailing_spaces_keeps_no_training_question(tmp_path):
    recs = _qa(600)
    for r in recs[::2]:
        r["question"] = r["question"].replace(" ", "  ")
    train = _write(tmp_path / "train.jsonl", recs)
    evalf = _write(tmp_path / "eval.jsonl", [dict(r, question=r["question"] + " ") for r in recs])
    cfg = {"path": train, "format": "gsm8k", "eval_paths": {"gsm8k": evalf}}
    norm = synthetic.normalize_ws
    for split in ("val", "test"):
        seen = {norm(formats.gsm8k_prompt(r)) for r in recs if synthetic.record_split("gsm8k", r) != split}
        got = eval_sets(cfg, 0, N, split)["gsm8k"]
        assert got and not {norm(formats.gsm8k_prompt(r)) for r in got} & seen, split


def test_fold_by_hand_and_idempotent():
    """``synthetic.fold``: NFKC (the full-width "？" is "?"), case folded ("ß" is "ss"), no whitespace around a
    punctuation mark, any other whitespace run one space."""
    fold = synthetic.fold
    assert fold("How many Apples ?\nAnswer:") == "how many apples?answer:"
    assert fold("Pick 3 , 4 and 5 .") == "pick 3,4 and 5."
    assert fold("STRAẞE  has\n2 cars\uff1f") == "strasse has 2 cars?"
    assert fold("a - b") == fold("a-b") == "a-b"
    for text in ("How many Apples ?\nAnswer:", "STRAẞE  has\n2 cars\uff1f", " x ( y ) z "):
        assert fold(fold(text)) == fold(text)
    assert fold("what is 2+3") != fold("what is 23")   # letters and digits are never joined
    # one pass is not enough: removing the space before a combining accent (a mark, not a letter) leaves "e" + U+0301,
    # which only the next pass's NFKC composes into "é"
    assert fold("cafe \u0301 ?") == "caf\u00e9?"


def test_a_question_re_cased_or_re_spaced_around_punctuation_is_one_content(tmp_path):
    """An audit (2026-11-28): a data file holding a question and its lower-cased copy trained on the copy (train
    split) while ``phase=eval`` scored the original as held out (test split), because the key was case-sensitive;
    the same with " ?" for "?" and " ," for ",". Every variant now has the original's key and split, and no test-set
    question of a file has a variant in its training records."""
    base = [{"question": f"Mia has {i} pens, then buys {i + 3} more. How many pens does Mia have?",
             "answer": f"#### {2 * i + 3}"} for i in range(300)]
    variants = [{**r, "question": q} for r in base
                for q in (r["question"].lower(), r["question"].upper(), r["question"][:-1] + " ?",
                          r["question"].replace(",", " ,"), r["question"].replace(". ", " .\n"))]
    for r in base:
        key, split = synthetic.record_key("gsm8k", r), synthetic.record_split("gsm8k", r)
        for v in (x for x in variants if x["answer"] == r["answer"]):
            assert (synthetic.record_key("gsm8k", v), synthetic.record_split("gsm8k", v)) == (key, split)
    f = _write(tmp_path / "mixed.jsonl", base + variants)
    trained = {synthetic.record_key("gsm8k", r) for r in base + variants
               if synthetic.record_split("gsm8k", r) == "train"}
    for split in ("val", "test"):
        held = eval_sets({"path": f, "format": "gsm8k", "eval_paths": {"gsm8k": f}}, 0, N, split)["gsm8k"]
        assert held and not {synthetic.record_key("gsm8k", r) for r in held} & trained, split
    # a synthetic template's problem is read off the folded text: re-cased and re-spaced, it is the same problem
    assert synthetic.canonical("QUESTION: ADA HAS 5 APPLES . ADA GETS 3 MORE . HOW MANY APPLES DOES ADA HAVE NOW ?"
                               "\nANSWER:") == "sum|3|5"
    assert synthetic.canonical("question: which number is the smallest ? ( a ) 9 ( b ) 2 ( c ) 40 ( d ) 7 answer:") \
        == "choice|smallest|2,7,9,40"


@needs_gsm8k
def test_gsm8k_split_counts_with_normalized_keys():
    recs = formats.load_jsonl(GSM8K_TEST, "gsm8k")
    splits = [synthetic.record_split("gsm8k", r) for r in recs]
    assert (len(recs), splits.count("train"), splits.count("val"), splits.count("test")) == (1319, 1052, 134, 133)


# -- D: held-out synthetic items are unseen problems ---------------------------------------------------------------
def _computation(op, a, b):
    """A computation as the same problem whatever asks it: a + b = b + a, a * b = b * a."""
    return (op, *sorted((a, b))) if op in "+*" else (op, a, b)


def _problem(task, rec):
    """The underlying problem, read off the answer (not the prompt the key is computed from)."""
    if task == "arithmetic":
        a, op, b = re.search(r"<<(\d+)([-+*])(\d+)=", rec["answer"]).groups()
        return _computation(op, int(a), int(b))
    if task == "piqa":
        right = (rec["sol1"], rec["sol2"])[int(rec["label"])]
        m = re.fullmatch(r"(?:count|start at) (\d+) and (then|take away) (\d+).*", right)
        return _computation("+" if m[2] == "then" else "-", int(m[1]), int(m[3]))
    return "largest" in rec["question"], tuple(sorted(int(t) for t in rec["choices"]["text"]))


@pytest.mark.parametrize("task", ["arithmetic", "piqa", "choice"])
def test_no_heldout_problem_among_5000_training_draws(task):
    """Before (2,000 draws): 117 of 200 arithmetic test items' (kind, a, b) and 75 of 200 PIQA test items' correct
    solution were in training, under another name, item or wording."""
    rng = random.Random(1)
    train = {_problem(task, synthetic.draw(task, 0, "train", rng.randrange(10**9))) for _ in range(5000)}
    for split in ("val", "test"):
        held = synthetic.generate(task, 200, 0, split)
        assert sum(_problem(task, r) in train for r in held) == 0, split
        assert {synthetic.split_of(task, r) for r in held} == {split}
    rep = synthetic.overlap_check(0, 2000, 50, tasks=(task,), workers=1)[task]
    assert rep["val_problems_in_train"] == rep["test_problems_in_train"] == 0


def test_canonical_key_is_the_problem_whatever_the_wording_task_or_operand_order():
    key = synthetic.canonical
    assert key("Question: Ada has 5 apples. Ada gets 3 more. How many apples does Ada have now?\nAnswer:") == \
        key("Question: Kai  has 3 cards. Kai gets 5 more. How many cards does Kai have now? \nAnswer:") == \
        key("Goal: To find 3 plus 5,\nSolution:") == key("Goal: To count 5 coins and then 3 more coins,\nSolution:") == \
        "sum|3|5"
    assert key("Goal: To take 3 coins away from 8 coins,\nSolution:") == key("Goal: To find 8 minus 3,\nSolution:") == \
        key("Question: Ada has 8 apples and gives away 3. How many apples are left?\nAnswer:") == "difference|8|3"
    assert key("Goal: To find 3 minus 8,\nSolution:") != key("Goal: To find 8 minus 3,\nSolution:")
    assert key("Question: Bo buys 3 bags with 4 pens in each bag. How many pens does Bo buy?\nAnswer:") == \
        key("Question: Al buys 4 bags with 3 cups in each bag. How many cups does Al buy?\nAnswer:") == "product|3|4"
    assert key("Question: Which number is the largest? (A) 9 (B) 2 (C) 40 (D) 7\nAnswer:") == "choice|largest|2,7,9,40"
    assert key(key("Goal: To find 8 plus 3,\nSolution:")) == "sum|3|8"   # idempotent
    assert key("What is  2 + 3?") == "what is 2+3?"   # anything else: its normalized, folded prompt


def test_no_heldout_computation_is_trained_under_another_task_or_operand_order():
    """GSM8K- and PIQA-format items ask the same computations: a held-out item of either task is a problem no
    training draw of either task asks, in either operand order (before: 140 of 200 PIQA-format test items'
    computation was a train-split GSM8K-format problem; 6 of 13 val multiplications' swapped twins were in train)."""
    rng = random.Random(2)
    train = {_problem(t, synthetic.draw(t, 0, "train", rng.randrange(10**9)))
             for t in ("arithmetic", "piqa") for _ in range(5000)}
    for task in ("arithmetic", "piqa"):
        for split in ("val", "test"):
            held = synthetic.generate(task, 200, 0, split)
            assert sum(_problem(task, r) in train for r in held) == 0, (task, split)


# -- E: records that would crash or mis-score are one DatasetError naming file:line and the key ----------------------
BAD = [
    ("arc", {"question": "Which?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"},
     "not one of its labels"),
    ("arc", {"question": "Which?", "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C", "D"]},
             "answerKey": "D"}, "as many texts as labels"),
    ("arc", {"question": "Which?", "choices": ["a", "b"], "answerKey": "A"}, "must be"),
    ("piqa", {"goal": "g", "sol1": "a", "sol2": "b", "label": 2}, "must be 0 or 1"),
    ("gsm8k", {"question": "q1", "answer": "no final number"}, "no final number"),
    ("gsm8k", {"question": 5, "answer": "#### 2"}, "must be strings"),
]


@pytest.mark.parametrize("fmt,rec,message", BAD)
def test_a_record_that_would_crash_or_misscore_is_one_dataset_error(tmp_path, fmt, rec, message):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(rec) + "\n")
    with pytest.raises(formats.DatasetError, match=rf"bad\.jsonl:1: .*{message}.*\(data\.eval_paths\.{fmt}\)"):
        formats.load_jsonl(f, fmt, key=f"data.eval_paths.{fmt}")


def test_well_formed_records_still_load(tmp_path):
    good = [("piqa", {"goal": "g", "sol1": "a", "sol2": "b", "label": "1"}),
            ("arc", {"question": "Which?", "choices": {"text": ["a", "b"], "label": ["1", "2"]}, "answerKey": "2"}),
            ("gsm8k", {"question": "q", "answer": "2"})]
    for fmt, rec in good:
        f = tmp_path / f"{fmt}.jsonl"
        f.write_text(json.dumps(rec) + "\n")
        assert formats.load_jsonl(f, fmt) == [rec]


def test_a_heldout_set_holds_each_problem_once_and_says_when_too_few_exist(tmp_path):
    """200 PIQA-format val items held 159 distinct problems (the same sum in other wordings), so n overstated the
    independent problems a CI counts; now every held-out set holds each problem once, and asking for more problems
    than a split has is one error naming the key."""
    for task in ("arithmetic", "choice", "piqa"):
        for split in ("val", "test"):
            recs = synthetic.generate(task, 200, seed=0, split=split)
            assert len({synthetic.content_key(task, r) for r in recs}) == 200, (task, split)
    # the PIQA-format test split has about 240 problems (sums and differences of 1-50 in the test buckets)
    with pytest.raises(ValueError, match=r"only \d+ distinct test problems found .* fewer than the 400 asked for"):
        synthetic.generate("piqa", 400, seed=0, split="test")
    with pytest.raises(ConfigError, match=r"^phase\.choice_examples=400: piqa: only \d+ distinct test problems"):
        eval_sets({}, 0, {"gsm8k": 2, "arc": 2, "piqa": 400}, "test",
                  key={"gsm8k": "phase.eval_examples", "arc": "phase.choice_examples", "piqa": "phase.choice_examples"})


def test_an_eval_file_counts_a_repeated_question_once(tmp_path):
    recs = [{"question": f"What is {i} plus {i}?", "answer": f"#### {2 * i}"} for i in range(400)]
    recs += [{"question": r["question"].replace(" plus", "  plus") + " ", "answer": r["answer"]} for r in recs]
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    for split in ("val", "test"):
        got = eval_sets({"eval_paths": {"gsm8k": str(path)}}, 0, N, split)["gsm8k"]
        keys = [synthetic.record_key("gsm8k", r) for r in got]
        assert len(keys) == len(set(keys)) and 100 < len(keys) < 300, len(keys)   # each of ~200 per half once


def test_plain_text_is_held_out_by_document_not_by_sentence():
    """The README's known limitation, pinned: no test-split plain-text document is a training one, but its template
    sentences recur — 333 of the 594 sentences of 200 test documents occur in 5 000 training documents (56 %)."""
    import re

    sentences = lambda recs: [s for r in recs for s in re.findall(r"The [^.]*\.", r["text"])]  # noqa: E731
    train = synthetic.generate("plain_text", 5000, 0, "train")
    test = synthetic.generate("plain_text", 200, 0, "test", partial=True)
    assert not {r["text"] for r in test} & {r["text"] for r in train}
    seen, held = set(sentences(train)), sentences(test)
    assert (sum(s in seen for s in held), len(held)) == (333, 594)
