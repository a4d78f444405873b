"""scripts/train_ablations.py trains each variant (full, 1 step, no memory) per seed and compares them on the same
test rows; ``model.memory=false`` trains a model with its memory reads off (``CognateConfig.memory``)."""
from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agentforge.artifacts import load_model, save_model
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.merge.recipe import incompatibility
from agentforge.models import CognateConfig, CognateModel

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_ablations.py"
SMALL = dict(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, window=16, max_seq_len=64, ltm_key_dim=16,
             ltm_slots=8, max_steps=2)


def _load():
    spec = importlib.util.spec_from_file_location("train_ablations", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_MOD = _load()   # once, at collection (its scipy import is the suite's anyway: evals.stats, models.ablation)


def _script():
    return _MOD


def test_across_seeds_by_hand():
    a = _script().across_seeds([1.0, 2.0, 3.0])
    half = 4.302653 * 1.0 / math.sqrt(3)   # t_{0.975, 2} * sd / sqrt(K), sd = 1
    assert a["K"] == 3 and a["df"] == 2 and a["mean"] == pytest.approx(2.0)
    assert a["t_crit"] == pytest.approx(4.3027, abs=1e-4)
    assert a["t_ci95"] == pytest.approx([2 - half, 2 + half], abs=1e-5)
    assert a["sign_test_p"] == pytest.approx(0.25) and a["sign_test_min_p"] == pytest.approx(0.25)
    one = _script().across_seeds([0.5])   # one seed: no interval
    assert one["K"] == 1 and all(math.isnan(x) for x in one["t_ci95"])


def test_verdict_rule():
    v = _script().verdict
    assert v([0.01, 0.2]) == "EARNS ITS PLACE"
    assert v([-0.2, -0.01]) == "HURTS"
    assert v([-0.01, 0.2]) == v([0.0, 0.2]) == v([float("nan")] * 2) == "INCONCLUSIVE"


def test_analysis_follows_from_the_per_row_losses():
    mod = _script()
    rng = np.random.default_rng(0)
    scores = {}
    for s, shift in ((1, 0.2), (2, 0.25), (3, 0.3)):   # t-interval 0.25 +- 0.124
        full = rng.normal(2.0, 0.1, 40)
        scores[s] = {"full": {"loss": full.tolist(), "recall_loss": full.tolist()},
                     "steps1": {"loss": (full + shift).tolist(), "recall_loss": (full - shift).tolist()},
                     "no_memory": {"loss": full.tolist(), "recall_loss": (full + shift + rng.normal(0, .01, 40)).tolist()}}
    a = mod.analyse(scores, eval_seed=0)
    assert a["per_seed"]["2"]["steps1"]["loss"]["delta"] == pytest.approx(0.25)
    assert a["per_seed"]["1"]["steps1"]["loss"]["n"] == 40
    assert a["across_seeds"]["steps1"]["loss"]["mean"] == pytest.approx(0.25)
    assert mod.across_seeds([0.1, 0.2, 0.3])["t_ci95"][0] < 0   # the same mean spread wider: INCONCLUSIVE
    assert a["verdicts"]["recursion"]["verdict"] == "EARNS ITS PLACE"
    assert a["verdicts"]["memory"]["verdict"] == "EARNS ITS PLACE"
    assert a["across_seeds"]["steps1"]["recall_loss"]["t_ci95"][1] < 0   # the 1-step model recalls better: HURTS
    assert mod.verdict(a["across_seeds"]["steps1"]["recall_loss"]["t_ci95"]) == "HURTS"


def test_bad_input_is_one_error_line(capsys):
    mod = _script()
    assert mod.main(["--variants", "full", "bogus", "--out", "/nonexistent/x"]) == 2
    assert "error: unknown variant(s) bogus" in capsys.readouterr().err
    assert mod.main(["--variants", "steps1", "--out", "/nonexistent/x"]) == 2
    assert "must include 'full'" in capsys.readouterr().err
    assert mod.main(["model.max_steps=2", "--out", "/nonexistent/x"]) == 2
    assert "model.max_steps is set by this script" in capsys.readouterr().err
    assert mod.main(["--model", "m9", "--out", "/nonexistent/x"]) == 2
    assert "error: unknown model 'm9': conf/model/ has m1, m2, m3" in capsys.readouterr().err


def test_a_failed_training_names_its_log(tmp_path, monkeypatch, capsys):
    mod = _script()
    monkeypatch.setattr(mod, "train_command", lambda *a, **k: [sys.executable, "-c",
                                                               "import sys; print('boom'); sys.exit(3)"])
    assert mod.main(["--seeds", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    log = tmp_path / "seed1" / "full" / "train.log"
    assert f"error: training seed=1 variant=full failed (exit 3); its log: {log}" in err and "boom" in err


def _tiny(**kw) -> CognateModel:
    torch.manual_seed(0)
    return CognateModel(CognateConfig(**SMALL, **kw)).eval()


def test_memory_off_config_gives_the_knockouts_logits():
    on, off = _tiny(), _tiny(memory=False)
    off.load_state_dict(on.state_dict())   # the same weights: the module and its shapes are kept
    x = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        with on.ablate(memory=False):
            want = on(x).logits
        got = off(x).logits
        assert torch.equal(got, want) and not torch.equal(on(x).logits, got)
        with off.ablate(steps=1):   # None keeps the configured state, and the exit restores it
            assert off.memory.enabled is False
        with off.ablate(memory=True):
            assert off.memory.enabled is True
        assert off.memory.enabled is False and torch.equal(off(x).logits, want)


def test_memory_off_trains_with_the_memory_unused():
    """The memory's parameters get no gradient (the optimizers skip them: the CLI trains such a model, slow test
    below); every other parameter does."""
    model = _tiny(memory=False).train()
    x = torch.randint(0, 256, (2, 33))
    model(x[:, :-1], x[:, 1:]).loss.backward()
    mem = {id(p) for p in model.memory.parameters()}
    assert all(p.grad is None for p in model.memory.parameters())
    assert all(p.grad is not None for p in model.parameters() if id(p) not in mem)


def test_an_old_config_without_the_memory_key_loads_with_memory_on(tmp_path):
    d = CognateConfig(**SMALL).to_dict()
    assert d.pop("memory") is True
    assert CognateConfig.from_dict(d).memory is True
    save_model(tmp_path / "m", _tiny(), ByteTokenizer())
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    del cfg["model"]["memory"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    model, _, _ = load_model(tmp_path / "m")
    assert model.config.memory is True and model.memory.enabled is True
    save_model(tmp_path / "off", _tiny(memory=False), ByteTokenizer())
    model, _, _ = load_model(tmp_path / "off")
    assert model.config.memory is False and model.memory.enabled is False


def test_models_with_and_without_memory_are_not_merged():
    assert "memory True vs False" in incompatibility(CognateConfig(**SMALL), CognateConfig(**SMALL, memory=False))
    assert "ltm_gate_norm True vs False" in incompatibility(CognateConfig(**SMALL, ltm_gate_norm=True),
                                                            CognateConfig(**SMALL))
    assert incompatibility(CognateConfig(**SMALL, memory=False), CognateConfig(**SMALL, memory=False)) is None


TINY = ["phase.max_epochs=2", "phase.steps_per_epoch=2", "phase.val_rows=4", "phase.eval_examples=2",
        "phase.gen_tokens=4", "data.batch_size=4", "data.seq_len=32"]


@pytest.mark.slow   # six tiny trainings through the real CLI (9.5 min on a 2-core CPU at load 6-8)
def test_end_to_end_two_seeds(tmp_path):
    out = tmp_path / "abl"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--seeds", "1", "2", "--rows", "4", "--out", str(out), *TINY],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done in") == 6 and "verdict recursion" in proc.stdout
    rep = json.loads((out / "train_ablations.json").read_text())
    assert rep["seeds"] == [1, 2] and set(rep["runs"]) == {"1", "2"} and rep["eval"]["n_rows"] == 4
    for s in ("1", "2"):
        runs = rep["runs"][s]
        assert set(runs) == {"full", "steps1", "no_memory"}
        assert (runs["full"]["max_steps"], runs["full"]["memory"]) == (4, True)
        assert (runs["steps1"]["max_steps"], runs["steps1"]["memory"]) == (1, True)
        assert (runs["no_memory"]["max_steps"], runs["no_memory"]["memory"]) == (4, False)
        for r in runs.values():   # what the checkpoint itself says
            model = json.loads((Path(r["checkpoint"]) / "config.json").read_text())["model"]
            assert (model["max_steps"], model["memory"]) == (r["max_steps"], r["memory"])
            assert r["optimizer_steps"] == 4 and r["wall_s"] > 0 and len(r["per_row"]["loss"]) == 4
        for v in ("steps1", "no_memory"):
            for f in ("loss", "recall_loss"):
                c = rep["analysis"]["per_seed"][s][v][f]
                want = np.mean(runs[v]["per_row"][f]) - np.mean(runs["full"]["per_row"][f])
                assert c["delta"] == pytest.approx(want, abs=1e-9) and c["n"] == 4
        mem = load_model(runs["no_memory"]["checkpoint"])[0].memory   # trained unused: still at its initialization
        assert not mem.enabled and torch.equal(mem.out.weight, mem.value.weight.T) and not mem.gate.weight.any()
    for v in ("steps1", "no_memory"):
        for f in ("loss", "recall_loss"):
            a = rep["analysis"]["across_seeds"][v][f]
            assert a["deltas"] == [rep["analysis"]["per_seed"][s][v][f]["delta"] for s in ("1", "2")] and a["K"] == 2
    assert {m["verdict"] for m in rep["analysis"]["verdicts"].values()} <= {"EARNS ITS PLACE", "HURTS", "INCONCLUSIVE"}


def _fmt(x: float, nd: int = 3) -> str:
    return f"{x:+.{nd}f}".replace("-", "−")


CURRENT, STREAM_GATE = "benchmarks/train_ablations_{}_2026-11-28.json", "benchmarks/train_ablations_{}_2026-11-28_stream_gate.json"
GATE_NORM = "benchmarks/gate_norm_{}_2026-11-28.json"


def _analysed(path: str) -> tuple[dict, dict]:
    """(the committed run record, the script's own analysis of its per-row losses, recomputed)."""
    rec = json.loads((ROOT / path).read_text())
    scores = {int(s): {v: run["per_row"] for v, run in runs.items()} for s, runs in rec["runs"].items()}
    return rec, _script().analyse(scores, eval_seed=rec["eval"]["row_seed"])


@pytest.mark.parametrize("model", ["m1", "m2", "m3"])
def test_the_docs_trained_ablation_tables_follow_from_the_committed_per_row_losses(model):
    """docs/cognate.md's two trained-ablation tables (a row per model: the current default first, then the one with the
    memory gate reading the stream itself, history) give the verdicts and across-seed intervals that the script's own
    analysis recomputes from the per-row losses of the runs each quotes: recursion's, the memory's, and the memory's
    test-row cost."""
    rows = [ln for ln in (ROOT / "docs" / "cognate.md").read_text().splitlines() if ln.startswith(f"| {model} | ")]
    assert len(rows) == 2, rows
    for row, path in zip(rows, (CURRENT, STREAM_GATE)):
        rec, again = _analysed(path.format(model))
        assert again["verdicts"] == rec["analysis"]["verdicts"] and len(rec["runs"]) == 8
        cells = row.split(" | ")[1:]
        for cell, (variant, figure), verdict in zip(cells, (("steps1", "loss"), ("no_memory", "recall_loss"),
                                                             ("no_memory", "loss")),
                                                    (again["verdicts"]["recursion"]["verdict"],
                                                     again["verdicts"]["memory"]["verdict"], None)):
            a = again["across_seeds"][variant][figure]
            assert cell.startswith(f"{_fmt(a['mean'])} [{_fmt(a['t_ci95'][0])}, {_fmt(a['t_ci95'][1])}], "
                                   f"{a['n_positive']} of 8 positive"), (path, variant, figure, cell)
            assert verdict is None or f"**{verdict}**" in cell, (path, cell)


@pytest.mark.parametrize("model", ["m1", "m2", "m3"])
def test_the_docs_gate_table_follows_from_the_committed_gate_runs(model):
    """docs/cognate.md's gate table (a row per model: ``| m1, gate | ...``): the gate's mean opening on the recall
    digits and elsewhere with the stream and with its RMS norm as input, and gate_norm - stream over the 8 seeds on
    the test rows and the recall digits (mean [t-interval], seeds positive, BETTER / WORSE / INCONCLUSIVE as the
    interval lies below / above / across 0), recomputed from ``benchmarks/gate_norm_<model>_2026-11-28.json``, whose
    ``full`` and ``no_memory`` runs are the stream-gate ablation's own."""
    mod = _script()
    rec = json.loads((ROOT / GATE_NORM.format(model)).read_text())
    old = json.loads((ROOT / STREAM_GATE.format(model)).read_text())
    seeds = sorted(rec["runs"], key=int)
    assert len(seeds) == 8 and "preregistration" in rec
    for s in seeds:   # the same checkpoints as the stream-gate ablation, scored the same
        for v in ("full", "no_memory"):
            assert rec["runs"][s][v]["per_row"]["loss"] == old["runs"][s][v]["per_row"]["loss"], (s, v)

    def mean(v, f):
        return np.array([np.mean(rec["runs"][s][v]["per_row"][f]) for s in seeds])

    row = next(ln for ln in (ROOT / "docs" / "cognate.md").read_text().splitlines() if ln.startswith(f"| {model}, gate | "))
    cells = row.split(" | ")[1:]
    opening = (f"{mean('full', 'recall_gate_digits').mean():.3f} / {mean('full', 'recall_gate_other').mean():.3f} → "
               f"{mean('gate_norm', 'recall_gate_digits').mean():.3f} / {mean('gate_norm', 'recall_gate_other').mean():.3f}")
    assert cells[0] == opening, (cells[0], opening)
    for cell, fig in zip(cells[1:3], ("loss", "recall_loss")):
        a = mod.across_seeds(list(mean("gate_norm", fig) - mean("full", fig)))
        lo, hi = a["t_ci95"]
        word = "BETTER" if hi < 0 else "WORSE" if lo > 0 else "INCONCLUSIVE"
        assert cell.startswith(f"{_fmt(a['mean'], 4)} [{_fmt(lo, 4)}, {_fmt(hi, 4)}], {a['n_positive']} of 8 positive: "
                               f"**{word}**"), (fig, cell)


def test_the_readmes_mechanism_summary_is_the_committed_runs_verdicts():
    """The README's "What the Cognate mechanisms buy" lists, per mechanism, which models get which verdict
    (``**EARNS ITS PLACE** in m1, m2; **INCONCLUSIVE** in m3``) and where the memory costs on the other test rows
    (``the CI wholly below 0, in m1, m2, m3``): both as the script's analysis of the committed runs gives them."""
    verdicts, costs = {"recursion": {}, "memory": {}}, []
    for model in ("m1", "m2", "m3"):
        _, again = _analysed(CURRENT.format(model))
        for mech in verdicts:
            verdicts[mech].setdefault(again["verdicts"][mech]["verdict"], []).append(model)
        if again["across_seeds"]["no_memory"]["loss"]["t_ci95"][1] < 0:
            costs.append(model)
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## What the Cognate mechanisms buy", 1)[1].split("\n## ", 1)[0]
    lines = {"recursion": next(ln for ln in section.splitlines() if ln.startswith("- recursion (")),
             "memory": next(ln for ln in section.splitlines() if ln.startswith("- the memory on the recall items"))}
    for mech, line in lines.items():
        said = {v: m.split(", ") for v, m in re.findall(r"\*\*([A-Z ]+)\*\* in ([m0-9, ]+?)(?:;|$)", line)}
        assert said == verdicts[mech], (mech, line, verdicts[mech])
    lines = section.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("- the memory on the other test rows"))
    cost_item = " ".join(ln.strip() for ln in lines[i: i + 2])
    assert cost_item.endswith("the CI wholly below 0, in " + ", ".join(costs)) and costs, (cost_item, costs)
    for model in {"m1", "m2", "m3"} - set(costs):
        assert f"in {model} no cost established" in cost_item, (model, cost_item)


def test_a_finished_run_is_not_reused_when_the_same_command_now_sets_something_else(tmp_path):
    """``changed_settings``: a run dir whose saved config and checkpoint are what the command composes today gives
    nothing (reused); a default changed since (here the saved run took ``phase.max_epochs`` 3) is named with its
    old and new value; a model key the checkpoint predates (``ltm_gate_norm``, absent from an older config.json)
    counts as the default it was added with (false), so today's default (true) is a change, and no change in a
    model whose memory is off."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from agentforge.artifacts import cognate_config_from
    from agentforge.main import CONF_DIR

    mod = _script()
    cmd = mod.train_command("m1", 3, "full", [])
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*cmd[3:], "model.ltm_gate_norm=false"])   # what it ran
    GlobalHydra.instance().clear()
    run = tmp_path / "seed3" / "full"
    (run / "runs" / "d" / "t").mkdir(parents=True)
    ckpt = run / "artifacts" / "cognate" / "model1"
    ckpt.mkdir(parents=True)
    arch = cognate_config_from(OmegaConf.to_container(cfg.model)).to_dict()
    del arch["ltm_gate_norm"]                     # a checkpoint written before the key existed
    (ckpt / "config.json").write_text(json.dumps({"model": arch}))
    saved = run / "runs" / "d" / "t" / "config_resolved.yaml"
    OmegaConf.save(cfg, saved)
    old = [*cmd, "model.ltm_gate_norm=false"]         # the command that composes what that checkpoint ran
    assert mod.changed_settings(run, old) == []
    assert mod.changed_settings(run, cmd) == ["model.ltm_gate_norm: False -> True"]   # today's default
    epochs = int(cfg.phase.max_epochs)
    assert epochs != 3
    cfg.phase.max_epochs = 3
    OmegaConf.save(cfg, saved)
    assert mod.changed_settings(run, old) == [f"phase.max_epochs: 3 -> {epochs}"]
    # with the memory off in both, a key that changes nothing there does not count
    arch["memory"] = False
    (ckpt / "config.json").write_text(json.dumps({"model": arch}))
    cfg.phase.max_epochs = epochs
    cfg.model.memory = False
    OmegaConf.save(cfg, saved)
    assert mod.changed_settings(run, [*cmd, "model.memory=false"]) == []



def test_the_docs_gate_ranges_are_the_stream_gate_runs():
    """docs/cognate.md: 'a seed's mean opening was 0.487–0.492, on the digits and elsewhere alike'; 'the gated read
    adds 16.6–25.0 % of the stream's norm on the digits in m1 and m2 and 10.2–11.7 % elsewhere; in m3 10.5–13.3 % and
    10.5–11.7 %' — the seeds' means of the stream-gate full models in ``benchmarks/gate_norm_<model>_2026-11-28.json``."""
    means = {}
    for model in ("m1", "m2", "m3"):
        rec = json.loads((ROOT / GATE_NORM.format(model)).read_text())
        for f in ("recall_gate_digits", "recall_gate_other", "recall_read_share_digits", "recall_read_share_other"):
            means[model, f] = [float(np.mean(r["full"]["per_row"][f])) for r in rec["runs"].values()]

    def span(models, f, scale=1.0, nd=3):
        xs = [x * scale for m in models for x in means[m, f]]
        return f"{min(xs):.{nd}f}–{max(xs):.{nd}f}"
    gates = [x for m in ("m1", "m2", "m3") for f in ("recall_gate_digits", "recall_gate_other") for x in means[m, f]]
    docs = " ".join((ROOT / "docs" / "cognate.md").read_text().split())
    assert f"a seed's mean opening was {min(gates):.3f}–{max(gates):.3f}" in docs
    assert (f"adds {span(('m1', 'm2'), 'recall_read_share_digits', 100, 1)} % of the stream's norm on the digits in m1 "
            f"and m2 and {span(('m1', 'm2'), 'recall_read_share_other', 100, 1)} % elsewhere; in m3 "
            f"{span(('m3',), 'recall_read_share_digits', 100, 1)} % and {span(('m3',), 'recall_read_share_other', 100, 1)} %") in docs


def test_the_docs_gate_confirmation_on_other_rows_is_the_committed_one():
    """docs/cognate.md: 'on 64 other test rows, drawn after the decision and none identical to those ..., gate_norm −
    stream is m1 −0.0021 [...], m2 ..., m3 ..., 0 of 8 seeds positive in each': the t-intervals over the committed
    per-seed deltas, and no row shared with the decision's rows."""
    rec = json.loads((ROOT / "benchmarks" / "gate_norm_confirmation_2026-11-28.json").read_text())
    docs = " ".join((ROOT / "docs" / "cognate.md").read_text().split())
    parts = []
    for model in ("m1", "m2", "m3"):
        assert rec[model]["rows_shared_with_decision_rows"] == 0 and len(rec[model]["per_seed_deltas"]) == 8
        a = _script().across_seeds(rec[model]["per_seed_deltas"])
        assert a["n_positive"] == 0
        parts.append(f"{model} {_fmt(a['mean'], 4)} [{_fmt(a['t_ci95'][0], 4)}, {_fmt(a['t_ci95'][1], 4)}]")
    assert "gate_norm − stream is " + ", ".join(parts) + ", 0 of 8 seeds positive in each" in docs
