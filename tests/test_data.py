"""Tokenizer, synthetic tasks, public-format loaders and packing."""
from __future__ import annotations

import gzip
import json

import pytest

from agentforge.data import formats, synthetic
from agentforge.data.datamodule import LMDataModule, normalize_mix, pack
from agentforge.data.tokenizer import BOS_ID, EOS_ID, FIRST_SPECIAL_ID, ByteTokenizer
from agentforge.evals.answers import extract_number
from tests.conftest import GSM8K_TEST


def test_tokenizer_round_trip_with_special_tokens():
    tok = ByteTokenizer()
    ids = tok.add_special_tokens(["[thinking]", "<step>"])
    assert ids == [FIRST_SPECIAL_ID, FIRST_SPECIAL_ID + 1]
    text = "héllo [thinking]a<step>b"
    enc = tok.encode(text, bos=True, eos=True)
    assert enc[0] == BOS_ID and enc[-1] == EOS_ID and FIRST_SPECIAL_ID in enc
    assert tok.decode(enc) == text
    assert ByteTokenizer.from_dict(tok.to_dict()).encode(text) == tok.encode(text)


def test_synthetic_tasks_are_in_public_formats_and_correct():
    for rec in synthetic.generate("arithmetic", 30, seed=1):
        expr = rec["answer"].split("<<")[1].split("=")[0]
        assert extract_number(rec["answer"]) == str(eval(expr))
    arc = synthetic.generate("choice", 10, seed=1)[0]
    nums = [int(t) for t in arc["choices"]["text"]]
    right = int(arc["choices"]["text"][arc["choices"]["label"].index(arc["answerKey"])])
    assert right == (max(nums) if "largest" in arc["question"] else min(nums))
    p = synthetic.generate("piqa", 5, seed=1)[0]
    assert set(p) == {"goal", "sol1", "sol2", "label"}


def test_train_and_val_streams_differ_and_are_deterministic():
    tr = synthetic.generate("arithmetic", 50, seed=3, split="train")
    va = synthetic.generate("arithmetic", 50, seed=3, split="val")
    assert tr == synthetic.generate("arithmetic", 50, seed=3, split="train")
    assert not {r["question"] for r in tr} & {r["question"] for r in va}
    assert {synthetic.split_of("arithmetic", r) for r in va} == {"val"}
    te = synthetic.generate("piqa", 200, seed=3, split="test")
    assert len({synthetic.content_key("piqa", r) for r in te}) == 200  # no repeated problem inside a held-out set
    with pytest.raises(ValueError, match="unknown split"):
        synthetic.draw("piqa", 0, "dev", 0)


def test_heldout_is_disjoint_from_50k_training_draws_by_content():
    """The issue's reproduction (50k training draws at random indices) now finds zero overlap."""
    rep = synthetic.overlap_check(seed=0, n_train=50_000, n_heldout=200)  # GSM8K, ARC and PIQA formats
    for task, row in rep.items():
        assert row["val"] == row["test"] == 200
        for split in ("val", "test"):
            assert row[f"{split}_prompts_in_train"] == 0 and row[f"{split}_records_in_train"] == 0, (task, row)
            assert row[f"{split}_problems_in_train"] == 0, (task, row)   # not even in another wording
    # PIQA-format goals: the old generator had 900 (1-30 plus 1-30); 50k draws now find > 15k distinct ones
    assert rep["piqa"]["train_distinct"] > 15_000


def test_overlap_check_split_over_processes_counts_the_same():
    one = synthetic.overlap_check(seed=3, n_train=3000, n_heldout=50, workers=1)
    assert synthetic.overlap_check(seed=3, n_train=3000, n_heldout=50, workers=3) == one
    assert one["arithmetic"]["train_distinct"] > 2000 and one["choice"]["val"] == 50
    none = synthetic.overlap_check(seed=3, n_train=0, n_heldout=5, workers=2)["piqa"]   # no draws: nothing seen
    assert (none["train_distinct"], none["val_prompts_in_train"], none["test"]) == (0, 0, 5)


def test_piqa_content_space_is_about_34k_goals():
    goals = {t.format(a=a, b=b) for op, ts in synthetic._PIQA_GOALS.items() for t in ts
             for a in range(1, 52) for b in range(1, 51) if (op == "+" and a <= 50) or (op == "-" and a > b)}
    assert len(goals) == 50 * 50 * 9 + 1275 * 9  # sums of 1-50, differences a > b, 9 wordings; old: 900


def test_example_ids_are_stable_and_unique():
    from agentforge.data.ids import example_id, example_ids

    assert example_id({"goal": "g", "label": 0}) == example_id({"label": 0, "goal": "g"}) == "a9f74eefef992968"
    r, q = {"goal": "g", "label": 0}, {"goal": "h", "label": 0}
    assert example_ids([r, q, r]) == ["a9f74eefef992968", example_id(q), "a9f74eefef992968#2"]


def test_overlap_counter_counts():
    train = synthetic.generate("piqa", 40, seed=1)
    held = train[:5] + synthetic.generate("piqa", 5, seed=1, split="val")
    keys = {synthetic.prompt_key("piqa", r) for r in train}
    recs = {json.dumps(r, sort_keys=True) for r in train}
    assert synthetic.seen_in("piqa", held, keys, recs) == (5, 5)
    flipped = dict(train[0], sol1=train[0]["sol2"], sol2=train[0]["sol1"], label=1 - train[0]["label"])
    assert synthetic.seen_in("piqa", [flipped], keys, recs) == (1, 0)  # same goal: counted as seen by prompt


def test_loaders_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q"}\n')
    with pytest.raises(formats.DatasetError, match=r"bad.jsonl:2: .*missing \['answer'\]"):
        formats.load_jsonl(bad, "gsm8k")
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(formats.DatasetError, match="broken.jsonl:1: not valid JSON"):
        formats.load_jsonl(broken, "gsm8k")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(formats.DatasetError, match="empty"):
        formats.load_jsonl(empty, "arc")
    with pytest.raises(formats.DatasetError, match="not found"):
        formats.load_jsonl(tmp_path / "missing.jsonl", "piqa")


@pytest.mark.skipif(not GSM8K_TEST.is_file(), reason="../shared/data/gsm8k absent")
def test_real_gsm8k_loads_and_renders():
    recs = formats.load_jsonl(GSM8K_TEST, "gsm8k", limit=20)
    assert len(recs) == 20
    for r in recs:
        text = formats.render(r, "gsm8k")
        assert "<<" not in text and "####" in text
        assert extract_number(r["answer"]) is not None


def test_pack_and_curriculum():
    tok = ByteTokenizer()
    rows = pack(["abc", "defgh"] * 10, tok, 7)
    assert rows.shape[1] == 8 and rows[0, 0] == BOS_ID
    assert normalize_mix({"a": 1, "b": 3}, {"a": 2}) == {"a": 0.4, "b": 0.6}
    dm = LMDataModule(tok, [{"epochs": 1, "mix": {"plain_text": 1}}, {"epochs": 2, "mix": {"arithmetic": 1}}],
                      seq_len=16, batch_size=2, steps_per_epoch=3, val_rows=4, seed=0)
    assert [dm.stage_of_epoch(e) for e in range(5)] == [1, 2, 2, 2, 2]
    assert dm.train_rows(0).shape == (6, 17)
    assert "Question" in tok.decode(dm.train_rows(1).flatten())
    assert "Question" not in tok.decode(dm.train_rows(0).flatten())


def test_training_rows_are_redrawn_each_epoch():
    """One stage, so the mix is the same every epoch: the rows still differ between epochs 0 and 1 (drawn from
    Random(seed * 7919 + epoch)), and epoch 0 drawn again gives the same rows."""
    dm = LMDataModule(ByteTokenizer(), [{"epochs": 2, "mix": {"arithmetic": 1}}], seq_len=16, batch_size=2,
                      steps_per_epoch=2, val_rows=4, seed=0)
    first = dm.train_rows(0)
    assert first.equal(dm.train_rows(0)) and not first.equal(dm.train_rows(1))


def test_gsm8k_jsonl_written_by_us_round_trips(tmp_path):
    f = tmp_path / "g.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in synthetic.generate("arithmetic", 5)))
    assert len(formats.load_jsonl(f, "gsm8k")) == 5


def test_jsonl_gz_reads_the_same_rows_and_keeps_its_errors(tmp_path):
    text = "".join(json.dumps(r) + "\n" for r in synthetic.generate("arithmetic", 5))
    plain, packed = tmp_path / "g.jsonl", tmp_path / "g.jsonl.gz"
    plain.write_text(text)
    packed.write_bytes(gzip.compress(text.encode()))
    assert formats.load_jsonl(packed, "gsm8k") == formats.load_jsonl(plain, "gsm8k")
    assert formats.load_jsonl(packed, "gsm8k", limit=2) == formats.load_jsonl(plain, "gsm8k")[:2]
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress((text + '{"question": "no answer"}\n{not json\n').encode()))
    with pytest.raises(formats.DatasetError, match=r"bad\.jsonl\.gz:6: a gsm8k record needs keys"):
        formats.load_jsonl(bad, "gsm8k")
    bad.write_bytes(gzip.compress((text + "{not json\n").encode()))
    with pytest.raises(formats.DatasetError, match=r"bad\.jsonl\.gz:6: not valid JSON"):
        formats.load_jsonl(bad, "gsm8k")
    bad.write_bytes(text.encode())  # named .gz but not compressed
    with pytest.raises(formats.DatasetError, match=r"bad\.jsonl\.gz: not a readable gzip file"):
        formats.load_jsonl(bad, "gsm8k")
    bad.write_bytes(gzip.compress(text.encode())[:-12])  # cut off
    with pytest.raises(formats.DatasetError, match=r"bad\.jsonl\.gz: not a readable gzip file"):
        formats.load_jsonl(bad, "gsm8k")


def test_jsonl_that_is_not_utf8_is_one_dataset_error(tmp_path):
    """A binary file given as JSONL (plain or gzip-compressed) is a DatasetError naming the file, not a raw
    UnicodeDecodeError traceback."""
    plain, packed = tmp_path / "bin.jsonl", tmp_path / "bin.jsonl.gz"
    data = b'{"question": "1 + 1", "answer": "2"}\n\xff\xfe\x00binary\n'
    plain.write_bytes(data)
    packed.write_bytes(gzip.compress(data))
    for f in (plain, packed):
        with pytest.raises(formats.DatasetError, match=rf"{f.name}: not UTF-8 text \(.*; phase\.benchmark_path\)"):
            formats.load_jsonl(f, "gsm8k", key="phase.benchmark_path")   # the key that gave the file is named


def _gsm8k_file(tmp_path, n=400):
    """A GSM8K-format file of n distinct questions (enough that every split gets some)."""
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": f"Q{i}: what is {i} + {i}?", "answer": f"#### {2 * i}"}) + "\n"
                            for i in range(n)))
    return path, formats.load_jsonl(path, "gsm8k")


def test_a_training_file_is_split_by_content_and_validation_never_sees_its_training_questions(tmp_path):
    import random
    from collections import Counter

    from agentforge.data.datamodule import TaskPool

    path, recs = _gsm8k_file(tmp_path)
    counts = Counter(synthetic.record_split("gsm8k", r) for r in recs)
    assert counts["train"] > counts["val"] > 0 and counts["test"] > 0 and sum(counts.values()) == 400
    dup = recs + [dict(recs[0])]   # the same question twice: both copies land in one split
    assert len({synthetic.record_split("gsm8k", r) for r in dup if r["question"] == recs[0]["question"]}) == 1
    pool = TaskPool(0, recs, "gsm8k")
    train = set(pool.sample_texts({"file": 1.0}, 60_000, random.Random(0), "train"))
    val = set(pool.sample_texts({"file": 1.0}, 20_000, random.Random(1), "val"))
    assert train and val and not (train & val)
    assert {formats.render(r, "gsm8k") for r in pool.by_split["val"]} >= val


def test_eval_sets_from_the_training_file_hold_only_its_records_of_that_split(tmp_path):
    """``data=gsm8k`` trains on and evaluates with one file: the val sets hold its val records, phase=eval's test set
    its test records, and neither a training question (before, 16 of 16 eval questions were training records)."""
    from agentforge.data.build import eval_sets, file_records_of_split

    path, recs = _gsm8k_file(tmp_path)
    cfg = {"path": str(path), "format": "gsm8k", "eval_paths": {"gsm8k": str(path)}}
    train = {r["question"] for r in recs if synthetic.record_split("gsm8k", r) == "train"}
    for split in ("val", "test"):
        got = eval_sets(cfg, 0, {"gsm8k": 1000, "arc": 2, "piqa": 2}, split)["gsm8k"]
        assert got and {synthetic.record_split("gsm8k", r) for r in got} == {split}
        assert not {r["question"] for r in got} & train
    assert {synthetic.record_split("gsm8k", r) for r in file_records_of_split(cfg, "test")} == {"test"}
    # without a training file, an eval file is split in two halves by content: val and test share no record
    halves = [eval_sets({"eval_paths": {"gsm8k": str(path)}}, 0, {"gsm8k": 1000, "arc": 2, "piqa": 2}, sp)["gsm8k"] for sp in ("val", "test")]
    assert sum(map(len, halves)) == 400 and not {r["question"] for r in halves[0]} & {r["question"] for r in halves[1]}


def test_an_eval_file_that_is_all_training_records_is_refused(tmp_path):
    from agentforge.data.build import eval_sets

    path, recs = _gsm8k_file(tmp_path)
    train_only = tmp_path / "train_only.jsonl"
    train_only.write_text("".join(json.dumps(r) + "\n" for r in recs if synthetic.record_split("gsm8k", r) == "train"))
    with pytest.raises(formats.DatasetError, match=r"data\.eval_paths\.gsm8k: all \d+ records of .* are data\.path "
                                                   r"records outside the val split"):
        eval_sets({"path": str(path), "format": "gsm8k", "eval_paths": {"gsm8k": str(train_only)}}, 0, 10, "val")


@pytest.mark.skipif(not GSM8K_TEST.is_file(), reason="../shared/data/gsm8k absent")
def test_the_gsm8k_preset_evaluates_on_questions_it_never_trained_on(tmp_path):
    from omegaconf import OmegaConf

    from agentforge.data.build import eval_sets
    from tests.conftest import compose_cfg

    cfg = OmegaConf.to_container(compose_cfg(["data=gsm8k", f"data.path={GSM8K_TEST}",
                                              f"data.eval_paths.gsm8k={GSM8K_TEST}"], tmp_path).data, resolve=True)
    recs = formats.load_jsonl(GSM8K_TEST, "gsm8k")
    splits = [synthetic.record_split("gsm8k", r) for r in recs]
    # 134 val and 133 test questions of 1,319 (folded keys, ``synthetic.fold``; whitespace-normalized only they were
    # 121 and 142, by the raw prompt 120 and 149)
    assert (len(recs), splits.count("val"), splits.count("test")) == (1319, 134, 133)
    train = {r["question"] for r, sp in zip(recs, splits) if sp == "train"}
    for split in ("val", "test"):
        got = eval_sets(cfg, 0, 64, split)["gsm8k"]
        assert len(got) == 64 and not {r["question"] for r in got} & train
