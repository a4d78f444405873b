"""The scaling evaluator's test set: the held-out rows a winner is reported on, apart from the selection
rows OpenEvolve chooses on. Disjoint by content from the selection stream, the child's validation rows and
its training rows (checked on the decoded rows, with a control that finds overlap where none was removed);
scored from the same logits without moving the selection figures; never shown to OpenEvolve; reported by
``phase=scaling`` under scaling/test_*; and no cached result from before it is served as if it had it."""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from agentforge.data import synthetic
from agentforge.data.build import build_datamodule
from agentforge.data.tokenizer import BOS_ID, EOS_ID, ByteTokenizer
from agentforge.errors import ConfigError
from agentforge.scaling import cache as scaling_cache
from agentforge.scaling import trust
from agentforge.scaling.evaluator import evaluate, scored, selection_only
from agentforge.scaling.failures import CandidateFailure
from agentforge.scaling.variants import variant_path
from tests.conftest import REPO, compose_cfg, run_cli
from tests.test_sandbox_scaling import HELDOUT, SIZE, outputs
from tests.test_scaling import TINY_CLI, TINY_SETTINGS

SALT = "a-fixed-salt-for-tests"
# long rows (whole examples fit in one), every task, the default CPU training length
WIDE = {**TINY_SETTINGS, "mix": {"plain_text": 1.0, "arithmetic": 1.0, "choice": 1.0, "piqa": 1.0},
        "train": {**TINY_SETTINGS["train"], "seq_len": 512, "steps": 300, "eval_every": 100, "batch_size": 16,
                  "val_rows": 32},
        "trust": {"heldout_rows": 64, "test_rows": 64, "probe_rows": 2, "loss_floor": 0.05}}


def datamodule(settings: dict, seed: int, val_rows: int):
    tr = settings["train"]
    return build_datamodule({"seq_len": int(tr["seq_len"]), "batch_size": int(tr["batch_size"])}, ByteTokenizer(),
                            stages=[{"epochs": 1, "mix": dict(settings["mix"])}], seed=seed,
                            steps_per_epoch=int(tr["eval_every"]), val_rows=val_rows)


def whole_examples(rows: torch.Tensor) -> list[str]:
    """The texts of the examples that lie whole (BOS ... EOS) inside a row, decoded from the tokens."""
    out = []
    for row in rows.tolist():
        start = None
        for i, tok in enumerate(row):
            if tok == BOS_ID:
                start = i + 1
            elif tok == EOS_ID and start is not None:
                out.append(bytes(row[start:i]).decode("utf-8"))
                start = None
    return out


def prompt(text: str) -> str:
    """What identifies an example by content (``synthetic.prompt_key``), read off its rendered text."""
    for marker in ("\nAnswer:", "\nSolution:"):
        if marker in text:
            return text[: text.index(marker) + len(marker)]
    return text


def prompts(rows: torch.Tensor, contiguous: bool) -> set[str]:
    return {prompt(t) for t in whole_examples(rows.reshape(1, -1) if contiguous else rows)}


# -- disjoint by content ----------------------------------------------------------------------------------
def test_test_set_shares_no_example_with_selection_child_validation_or_training():
    held = trust.make_heldout(WIDE, SALT)
    n, p, tr = 64, 2, WIDE["train"]
    test_rows = torch.cat([held["test_inputs"], held["test_targets"][:, None]], dim=1)
    test = prompts(test_rows, contiguous=False)
    assert len(test) > 150  # ~3 whole examples in each of the 64 rows: the check has something to check
    selection = prompts(trust.heldout_stream(WIDE, trust.heldout_seed(WIDE, SALT), 2 * (n + p)), True)
    child_dm = datamodule(WIDE, int(WIDE["seed"]), int(tr["val_rows"]))
    child_val = prompts(child_dm.val_rows_tensor(), False)   # rows of whole documents (datamodule.heldout_rows)
    training = set().union(*(prompts(child_dm.train_rows(e), True)
                             for e in range(-(-int(tr["steps"]) // int(tr["eval_every"])))))
    assert len(selection) > 500 and len(training) > 10_000
    assert test & selection == set() and test & child_val == set() and test & training == set()
    assert selection & training == set()  # the selection set as it always was: val-split examples only
    # by problem too, not only by wording (excluded by prompt, 112 of 220 arithmetic test examples had asked a
    # selection problem under another name or item): the test set is the test split's
    problems = lambda ps: {synthetic.canonical(x) for x in ps}   # noqa: E731
    assert problems(test) & problems(selection) == set() and problems(test) & problems(child_val) == set()
    assert all(synthetic.bucket(synthetic.canonical(k)) in synthetic.RESERVED["test"] for k in test)
    # the control: another val-split draw of the same size does share examples with the selection set
    control = trust.heldout_stream(WIDE, trust.heldout_seed(WIDE, "another-salt", "test"), 2 * 64 + 8)
    assert prompts(control[0::2], contiguous=False) & selection


def test_test_set_has_the_selection_sets_task_mix():
    """Drawn from the val split less the selection stream's problems, the test rows had another task mix: the val
    split's ~317 arithmetic problems ran short, so arithmetic fell from half the examples to 27 % and multiplication
    to none. From the test split the mix is the sampler's, as in the selection set."""
    held = trust.make_heldout(WIDE, SALT)
    test = whole_examples(torch.cat([held["test_inputs"], held["test_targets"][:, None]], dim=1))
    selection = whole_examples(trust.heldout_stream(WIDE, trust.heldout_seed(WIDE, SALT), 2 * 66)[0::2])

    def share(texts, marker):
        return sum(marker in t for t in texts) / len(texts)
    # GSM8K-format examples (whole ones inside the rows, about 225 a set): 0.29 vs 0.21 now (test-split problems
    # run shorter, so more lie whole in a row), 0.11 vs 0.21 drawn the old way; multiplications 0.12, 0 the old way
    assert share(test, "####") >= 0.8 * share(selection, "####") and share(test, " * ") > 0.02


def test_test_rows_equal_to_selection_rows_are_dropped():
    settings = {**TINY_SETTINGS, "trust": {**TINY_SETTINGS["trust"], "test_rows": 64}}  # 16-token rows repeat
    held = trust.make_heldout(settings, SALT)
    assert held["test_inputs"].shape == (64, 16) and held["test_targets"].shape == (64,)
    seen = torch.cat([trust.heldout_stream(settings, trust.heldout_seed(settings, SALT), 2 * 66),
                      trust.child_val_rows(settings, 0)])[:, :-1]
    seen_keys = {r.numpy().tobytes() for r in seen}
    assert not any(r.numpy().tobytes() in seen_keys for r in held["test_inputs"])
    raw = trust.heldout_stream(settings, trust.heldout_seed(settings, SALT, "test"), 2 * 64 + 8, split="test")
    clashes = sum(r.numpy().tobytes() in seen_keys for r in raw[0::2, :-1])
    assert clashes > 0 and int(held["test_dropped"]) > 0  # the raw draw had such rows; they were dropped


def test_selection_rows_are_unchanged_and_the_child_gets_both_sets_shuffled():
    seed = trust.heldout_seed(TINY_SETTINGS, SALT)
    assert trust.heldout_seed(TINY_SETTINGS, SALT, "test") != seed
    stream = trust.heldout_stream(TINY_SETTINGS, seed, 2 * 66)
    held = trust.make_heldout({**TINY_SETTINGS, "trust": {**TINY_SETTINGS["trust"], "test_rows": 32}}, SALT)
    assert torch.equal(held["inputs"], stream[0:128:2, :-1]) and torch.equal(held["targets"], stream[0:128:2, -1])
    both = torch.cat([held["inputs"], held["test_inputs"]])
    assert torch.equal(held["sent"], both[held["order"]]) and not torch.equal(held["sent"], both)
    assert held["order"][:64].ge(64).any()  # test rows among the first ones out, selection rows among the last
    assert "test_inputs" not in trust.make_heldout(TINY_SETTINGS | {"trust": {**TINY_SETTINGS["trust"],
                                                                                "test_rows": 0}}, SALT)


# -- scoring both sets from one set of logits -------------------------------------------------------------
def test_score_size_takes_the_selection_loss_from_selection_rows_only():
    vocab = trust.expected_shapes(SIZE)["embed.weight"][0]
    test_targets, order = torch.tensor([5, 6, 7]), torch.tensor([3, 5, 0, 6, 1, 4, 2])
    held = {**HELDOUT, "test_inputs": torch.zeros(3, 6, dtype=torch.long), "test_targets": test_targets,
            "sent": torch.zeros(7, 6, dtype=torch.long), "order": order}
    g = torch.Generator().manual_seed(0)
    sel, tst = torch.randn(4, vocab, generator=g), torch.randn(3, vocab, generator=g)
    got = trust.score_size(SIZE, outputs(last=torch.cat([sel, tst])[order]), held, 0.05)  # as the child returns
    alone = trust.score_size(SIZE, outputs(last=sel), HELDOUT, 0.05)["loss"]  # without a test set
    assert got["loss"] == alone == pytest.approx(float(F.cross_entropy(sel.double(), HELDOUT["targets"])))
    assert got["test_loss"] == pytest.approx(float(F.cross_entropy(tst.double(), test_targets)))
    other = trust.score_size(SIZE, outputs(last=torch.cat([sel, 3 * tst + 1])[order]), held, 0.05)
    assert other["loss"] == got["loss"] and other["test_loss"] != got["test_loss"]
    unshuffled = trust.score_size(SIZE, outputs(last=torch.cat([sel, tst])), held, 0.05)
    assert unshuffled["loss"] != pytest.approx(got["loss"])  # the order is what puts the rows back
    with pytest.raises(CandidateFailure) as err:  # one row per selection row only: forged
        trust.score_size(SIZE, outputs(last=sel), held, 0.05)
    assert err.value.kind == "forged"
    forged = torch.nn.functional.one_hot(test_targets, vocab).float() * 100
    with pytest.raises(CandidateFailure) as err:
        trust.score_size(SIZE, outputs(last=torch.cat([sel, forged])[order]), held, 0.05)
    assert err.value.kind == "forged" and not any(c.isdigit() for c in str(err.value).split("floor")[0])


def test_each_set_is_compared_with_the_baseline_on_that_set():
    sizes = [{"name": "a", "params": math.e, "loss": 3.0, "test_loss": 3.2},
             {"name": "b", "params": math.e ** 2, "loss": 2.5, "test_loss": 2.9}]
    ref = {"fitness": 0.4, "losses": {"a": 2.9, "b": 2.6}, "test_fitness": 0.2, "test_losses": {"a": 3.1, "b": 2.9}}
    got = scored(sizes, {"fitness": {"tolerance": 0.2}}, ref)
    assert got["fitness"] == pytest.approx(0.5) and got["combined_score"] == pytest.approx(0.5 + 0.1)
    assert got["improvement"] == pytest.approx(0.6 - 0.4)  # selection: against the baseline's selection fitness
    assert got["test_fitness"] == pytest.approx(0.3) and got["test_largest_gain"] == pytest.approx(0.0)
    assert got["test_improvement"] == pytest.approx(0.3 - 0.2)  # test: against the baseline's test figures
    assert (got["test_loss_a"], got["test_loss_b"]) == (3.2, 2.9)
    moved = scored([dict(s, test_loss=s["test_loss"] + 1) for s in sizes], {"fitness": {"tolerance": 0.2}}, ref)
    assert all(moved[k] == got[k] for k in got if not k.startswith("test_"))  # test figures move nothing else
    assert not any(k.startswith("test_") for k in scored([{k: v for k, v in s.items() if k != "test_loss"}
                                                          for s in sizes], {}, None))


# -- through the sandbox ----------------------------------------------------------------------------------
@pytest.mark.slow  # ~17 s; the default tier keeps the baseline's selection losses (test_scaling_rescore.py)
def test_selection_figures_do_not_move_and_stale_cache_entries_are_not_served(tmp_path, monkeypatch):
    cache_dir, code = tmp_path / "cache", variant_path("baseline").read_text()
    salt = trust.heldout_salt(cache_dir)
    old = {**TINY_SETTINGS, "trust": {"heldout_rows": 512, "probe_rows": 4, "loss_floor": 0.05,
                                      **TINY_SETTINGS["trust"]},
           "heldout": hashlib.sha256(salt.encode()).hexdigest()[:16], "sandbox": "bwrap", "check_only": False}
    with monkeypatch.context() as m:  # the key this evaluation had before the test set existed
        m.setattr(scaling_cache, "CACHE_VERSION", 1)
        stale_key = scaling_cache.cache_key(code, old)
    scaling_cache.ResultCache(cache_dir).put(stale_key, {"combined_score": 123.0, "valid": 1.0, "fitness": 123.0,
                                                         "error_kind": "", "error": "", "sizes": []})
    run = lambda rows: evaluate(variant_path("baseline"),  # noqa: E731
                                {**TINY_SETTINGS, "trust": {**TINY_SETTINGS["trust"], "test_rows": rows}},
                                cache_dir=cache_dir, timeout_s=120)
    with_test, without = run(512), run(0)
    assert with_test["valid"] == without["valid"] == 1.0, (with_test["error"], without["error"])
    assert with_test["cached"] is False and with_test["combined_score"] != 123.0  # the stale entry: not served
    for name in ("xs", "s"):  # the same models, the same selection rows: the same selection loss
        assert with_test[f"loss_{name}"] == pytest.approx(without[f"loss_{name}"], rel=1e-6, abs=1e-9)
        assert math.isfinite(with_test[f"test_loss_{name}"])
    assert with_test["fitness"] == pytest.approx(without["fitness"], rel=1e-4, abs=1e-7)
    assert not any(k.startswith("test_") for k in without) and with_test["test_n"] == 512.0
    again = run(512)
    assert again["cached"] is True and again["test_fitness"] == with_test["test_fitness"]


def test_cache_version_changes_every_key():
    settings = {**TINY_SETTINGS, "trust": {**TINY_SETTINGS["trust"], "test_rows": 512}}
    now = scaling_cache.cache_key("code", settings)
    saved = scaling_cache.CACHE_VERSION
    try:
        scaling_cache.CACHE_VERSION = 1
        assert scaling_cache.cache_key("code", settings) != now
    finally:
        scaling_cache.CACHE_VERSION = saved


def test_openevolve_never_sees_test_figures(tmp_path, monkeypatch, openevolve_outputs):
    spec = importlib.util.spec_from_file_location("oe_eval_test_split", REPO / "openevolve" / "evaluator.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setenv("AGENTFORGE_OUTPUTS", str(openevolve_outputs))   # shared with test_scaling.py's entry-file test
    monkeypatch.setenv("AGENTFORGE_SCALING_OVERRIDES", " ".join(f"'{o}'" for o in TINY_CLI))
    program = str(variant_path("matrix_mixer"))
    plain = mod.evaluate(program)  # a cache miss unless that test scored it first; a dict without OpenEvolve installed
    from agentforge.phases import scaling

    full = scaling.evaluate_cfg(mod.compose_scaling_cfg(), variant_path("matrix_mixer"))  # the same, cached
    assert full["cached"] is True and full["valid"] == 1.0
    assert {"test_fitness", "test_combined_score", "test_loss_xs"} <= set(full) and "test_loss" in full["sizes"][0]

    class EvaluationResult:
        def __init__(self, metrics, artifacts):
            self.metrics, self.artifacts = metrics, artifacts

    monkeypatch.setitem(sys.modules, "openevolve", types.ModuleType("openevolve"))
    monkeypatch.setitem(sys.modules, "openevolve.evaluation_result",
                        types.SimpleNamespace(EvaluationResult=EvaluationResult))
    rich = mod.evaluate(program)  # a cache hit, through OpenEvolve's EvaluationResult
    shown = mod.evaluate_metrics(program)
    for seen in (plain, rich.metrics, rich.artifacts, shown):
        assert not [k for k in seen if k.startswith("test_")], sorted(seen)
    assert not any("test_loss" in s for s in shown["sizes"])
    assert plain["combined_score"] == rich.metrics["combined_score"] == full["combined_score"]
    assert plain["loss_xs"] == full["loss_xs"] and rich.artifacts["framework"] == "matrix_mixer"
    assert set(selection_only(full)) == set(full) - {k for k in full if k.startswith("test_")}


# -- the phase ------------------------------------------------------------------------------------------
def test_phase_checks_test_rows(tmp_path):
    from agentforge.phases import scaling

    assert scaling.settings_from_cfg(compose_cfg(["phase=scaling"], tmp_path))["trust"]["test_rows"] == 512
    with pytest.raises(ConfigError, match="test_rows"):
        scaling.settings_from_cfg(compose_cfg(["phase=scaling", "phase.trust.test_rows=0"], tmp_path))


@pytest.mark.slow  # ~16 s; the default tier's CLI run is test_scaling_rescore.py's (scaling/test_improvement_*)
def test_cli_reports_the_selection_and_the_test_set(tmp_path):
    proc = run_cli(["phase=scaling", *TINY_CLI, "phase.trust.test_rows=64"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "selection set (chooses" in proc.stdout and "test set (the report: 64 rows" in proc.stdout
    assert "played no part in selection" in proc.stdout
    run_dir = next((tmp_path / "outputs" / "runs").glob("*/*"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = {k: v for r in rows for k, v in r.items()}
    test_keys = ["scaling/test_fitness", "scaling/test_slope", "scaling/test_intercept", "scaling/test_r2",
                 "scaling/test_combined_score", "scaling/test_loss_xs", "scaling/test_loss_s", "scaling/test_n"]
    for key in test_keys:
        assert key in logged and math.isfinite(logged[key]), key
    assert logged["scaling/test_n"] == 64 and 0 < logged["scaling/test_loss_xs"] < 10
    fitness = json.loads((run_dir / "fitness.json").read_text())
    assert logged["scaling/combined_score"] == fitness["combined_score"]  # selection figures, plain keys
    assert logged["scaling/test_fitness"] == fitness["test_fitness"]
    table = list(csv.DictReader((run_dir / "tables" / "scaling__sizes.csv").open()))
    assert [float(r["test_loss"]) for r in table] == [fitness["test_loss_xs"], fitness["test_loss_s"]]
    # the selection-set loss, named as such (it read "val_loss", which the child's own validation curve is not)
    assert [float(r["selection_loss"]) for r in table] == [fitness["loss_xs"], fitness["loss_s"]]
