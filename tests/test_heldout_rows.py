"""Held-out token rows are independent units: each holds distinct documents and no document spans two rows
(``datamodule.pack_documents`` / ``heldout_rows``), in every place a paired test or CI resamples them — the Cognate
validation rows (ablations, halting verdict, diversity), the halting-by-task rows, EvoMerge's rows and phase=eval's
perplexity rows. ``pack`` (training) continues a cut document in the next row: an audit found the Cognate phase's 32
validation rows held 26 documents, 31 rows starting mid-document, while every CI counted n = 32."""
from __future__ import annotations

import random

import pytest
import torch
from omegaconf import OmegaConf

from agentforge.data.build import build_datamodule
from agentforge.data.datamodule import LMDataModule, TaskPool, heldout_rows, normalize_mix, pack, pack_documents
from agentforge.data.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
CONF = OmegaConf.load("conf/phase/cognate.yaml")


def whole_documents(rows: torch.Tensor) -> list[bytes]:
    """The documents that lie whole (BOS ... EOS) inside the rows, as byte strings."""
    out = []
    for r in rows.tolist():
        cur = None
        for t in r:
            if t == TOK.bos_id:
                cur = []
            elif t == TOK.eos_id and cur is not None:
                out.append(bytes(cur))
                cur = None
            elif cur is not None and t < 256:
                cur.append(t)
    return out


def independent(rows: torch.Tensor) -> bool:
    """Every row starts at a document's BOS (so no document runs on from the row before: a cut document's rest is
    dropped) and no whole document occurs twice."""
    docs = whole_documents(rows)
    return bool((rows[:, 0] == TOK.bos_id).all()) and len(set(docs)) == len(docs)


def test_pack_documents_by_hand():
    """Rows of 6 tokens from documents "ab" (4 tokens with BOS/EOS), "cdefgh" (8) and "i" (3): the first row takes
    "ab" whole and the first two tokens of the next document, whose rest is dropped; the next row starts at "i"'s
    BOS and the tail that cannot fill it is dropped."""
    b, e = TOK.bos_id, TOK.eos_id
    rows = pack_documents(["ab", "cdefgh", "i", "jklmnop"], TOK, 5)
    assert rows.tolist() == [[b, 97, 98, e, b, 99], [b, 105, e, b, 106, 107]]
    assert pack(["ab", "cdefgh", "i"], TOK, 5)[1, 0] != b   # pack continues the cut document in the next row
    with pytest.raises(ValueError, match="one row of 6 tokens"):
        pack_documents(["a"], TOK, 5)


def test_cognate_validation_rows_are_independent_and_the_same_for_the_three_models():
    """The default m1/m2/m3 settings: 32 rows, each starting at a document, none sharing one (it was 31 of 32 rows
    starting mid-document); the three models' datamodules give equal rows whatever their dataset weights, so
    their val losses compare on the same rows."""
    data = OmegaConf.to_container(OmegaConf.load("conf/data/synthetic.yaml"))
    stages = OmegaConf.to_container(CONF.curriculum)
    val = []
    for m in ("m1", "m2", "m3"):
        weights = OmegaConf.to_container(OmegaConf.load(f"conf/model/{m}.yaml").dataset_weights)
        val.append(build_datamodule(data, TOK, stages=stages, seed=42, steps_per_epoch=2, val_rows=int(CONF.val_rows),
                                    dataset_weights=weights).val_rows_tensor())
    assert val[0].shape == (int(CONF.val_rows), int(data["seq_len"]) + 1)
    assert torch.equal(val[0], val[1]) and torch.equal(val[0], val[2])
    assert independent(val[0])
    old = pack(TaskPool(42).sample_texts(normalize_mix({t: 1.0 for t in stages[-1]["mix"]}), 34 * 129,
                                         random.Random(42 * 104729), "val"), TOK, 128)[:32]
    assert not independent(old)   # the control: the old rows fail the same check


def test_a_distinct_draw_holds_each_problem_once():
    """``sample_texts(distinct=True)``: no content key twice (the same problem in another wording counts as the same);
    a plain draw of the same size repeats some (the val split holds ~317 GSM8K-format problems)."""
    from agentforge.data import formats, synthetic

    mix = {"arithmetic": 1.0}
    texts = TaskPool(3).sample_texts(mix, 200 * 130, random.Random(0), "val", distinct=True)
    plain = TaskPool(3).sample_texts(mix, 200 * 130, random.Random(0), "val")
    key = lambda t: synthetic.canonical(t.split("\nAnswer:")[0] + "\nAnswer:")   # noqa: E731  (content_key)
    assert len(texts) >= 150 and len({key(t) for t in texts}) == len(texts)
    assert len({key(t) for t in plain}) < 0.7 * len(plain)   # 125 problems in 206 draws
    assert formats.TASK_FORMAT["arithmetic"] == "gsm8k"


@pytest.mark.parametrize("seq_len", [16, 128, 512])
def test_heldout_rows_draw_until_the_rows_are_there_and_say_when_the_split_runs_out(seq_len):
    mix = normalize_mix({"plain_text": 1, "arithmetic": 1, "choice": 1, "piqa": 1})
    rows = heldout_rows(TaskPool(0), mix, 24, seq_len, TOK, random.Random(1), "test")
    assert rows.shape == (24, seq_len + 1) and independent(rows)
    again = heldout_rows(TaskPool(0), mix, 24, seq_len, TOK, random.Random(1), "test")
    assert torch.equal(rows, again)   # deterministic from the rng's state
    # a smaller request is the larger one's first rows ("the rows only grow"): the budget doubling replays the same
    # draws (a mutant dropping the replay, or taking the last rows, survived the mutation audit)
    assert torch.equal(heldout_rows(TaskPool(0), mix, 5, seq_len, TOK, random.Random(1), "test"), rows[:5])
    with pytest.raises(ValueError, match=r"only \d+ rows of distinct test-split documents"):
        heldout_rows(TaskPool(0), {"arithmetic": 1.0}, 2000, seq_len, TOK, random.Random(1), "test")


def test_halting_task_evomerge_and_eval_rows_are_independent(tmp_path):
    from agentforge.data import synthetic
    from agentforge.models.ablation import computation_rows
    from agentforge.phases.eval import eval_rows
    from agentforge.phases.evomerge import eval_data
    from tests.conftest import compose_cfg

    rows, hard, easy = computation_rows(64, 128, 42)
    assert independent(rows) and int(((hard.sum(1) > 0) & (easy.sum(1) > 0)).sum()) == 64
    assert len(computation_rows(64, 512, 42)[0]) == 64   # at seq_len 512 it raised (336 problems asked, 317 exist)
    cfg = compose_cfg(["phase=evomerge"], tmp_path)
    assert independent(eval_data(cfg, "test", int(cfg.phase.eval.test_rows)).rows)
    assert independent(eval_rows({"gsm8k": synthetic.generate("arithmetic", 20, 0, "test")}, TOK, 0, 64, 16))
    # phase=eval's default sets (16 GSM8K, 200 ARC, 200 PIQA): each question once, and their rows independent
    from agentforge.data import formats
    from agentforge.phases.eval import load_sets

    ecfg = compose_cfg(["phase=eval"], tmp_path / "eval")
    n, c = int(ecfg.phase.eval_examples), int(ecfg.phase.choice_examples or ecfg.phase.eval_examples)
    sets = load_sets(ecfg, {"gsm8k": n, "arc": c, "piqa": c}, {})
    assert {f: len(v) for f, v in sets.items()} == {"gsm8k": n, "arc": c, "piqa": c}
    assert all(len({formats.render(r, f) for r in v}) == len(v) for f, v in sets.items())
    assert independent(eval_rows(sets, TOK, 42, int(ecfg.data.seq_len), 16))



class _ThreeDocuments:
    """A pool whose every draw is the same three 20-byte documents: at seq_len 5 each gives one row, 3 in all."""

    def sample_texts(self, mix, n_tokens, rng, split, distinct=False):
        return ["a" * 20, "b" * 20, "c" * 20]


def test_heldout_rows_refuse_a_draw_one_row_short():
    """Three documents make 3 rows (each longer than a 6-token row); 4 asked is a ValueError naming the 3, not 3 rows
    handed back as if they were 4; 3 asked are given."""
    with pytest.raises(ValueError, match=r"only 3 rows of distinct val-split documents .* 4 asked"):
        heldout_rows(_ThreeDocuments(), {"plain_text": 1.0}, 4, 5, TOK, random.Random(0), "val")
    assert heldout_rows(_ThreeDocuments(), {"plain_text": 1.0}, 3, 5, TOK, random.Random(0), "val").shape == (3, 6)


def _datamodule(stages, seed=5):
    return LMDataModule(TOK, stages, seq_len=16, batch_size=2, steps_per_epoch=1, val_rows=4, seed=seed)


def test_validation_rows_are_the_val_split_of_the_last_stages_tasks():
    """The datamodule's validation rows are ``heldout_rows`` of the "val" split (never "test", which the final
    figures score), for the last curriculum stage's tasks weighted equally, from Random(seed * 104729)."""
    stages = [{"epochs": 1, "mix": {"plain_text": 1}}, {"epochs": 1, "mix": {"arithmetic": 3, "choice": 1}}]
    got = _datamodule(stages).val_rows_tensor()
    mix = normalize_mix({"arithmetic": 1.0, "choice": 1.0})

    def draw(split):
        return heldout_rows(TaskPool(5), mix, 4, 16, TOK, random.Random(5 * 104729), split)

    assert torch.equal(got, draw("val"))
    assert not torch.equal(got, draw("test"))


def test_validation_rows_come_from_the_last_curriculum_stage():
    """Stages plain text, then arithmetic: every validation row is an arithmetic problem (it starts at a document's
    BOS, and the arithmetic documents start "Question: "; plain-text ones never do)."""
    stages = [{"epochs": 1, "mix": {"plain_text": 1}}, {"epochs": 1, "mix": {"arithmetic": 1}}]
    rows = _datamodule(stages).val_rows_tensor()
    assert len(rows) == 4
    assert all(r[0] == TOK.bos_id and TOK.decode(r[1:]).startswith("Question: ") for r in rows)
