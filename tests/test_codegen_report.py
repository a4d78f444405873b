"""phase=codegen's report and stats on hand-made cases: peak training RAM, dropped duplicate chunks, the baseline's
parity claim, timing ranges that are not CIs, dashes for what was not measured, the efficiency bars."""
from __future__ import annotations

import math

from agentforge.codegen.corpus import build_corpus


def test_peak_train_ram_is_the_largest_logged_value():
    """README / report: peak training RAM is the largest system/ram_used_gb the run logged (on a GPU the largest
    system/gpu_memory_used_gb), in MB; NaN when nothing was logged."""
    from agentforge.codegen.training import peak_train_ram_mb

    ram = [(0, 0.5), (1, 0.75), (2, 0.625)]
    assert peak_train_ram_mb({"system/ram_used_gb": ram, "system/gpu_memory_used_gb": []}) == 768.0
    assert peak_train_ram_mb({"system/ram_used_gb": ram, "system/gpu_memory_used_gb": [(0, 2.0), (1, 1.5)]}) == 2048.0
    assert math.isnan(peak_train_ram_mb({"system/ram_used_gb": [], "system/gpu_memory_used_gb": []}))


def test_a_val_chunk_that_is_also_a_train_chunk_is_dropped(tmp_path):
    """Split by file, but a block repeated across files (here the same table in 40 files of different headers)
    would sit on both sides: validation keeps none of the training text."""
    root = tmp_path / "src"
    root.mkdir()
    table = "TABLE = (\\n" + "".join(f"    {i},\\n" for i in range(300)) + ")\\n"
    for i in range(40):
        (root / f"m{i}.py").write_text(f"def f{i}():\\n    return {i}\\n\\n\\n" + table)
    c = build_corpus([], root=root, val_fraction=0.3, chunk_chars=400)
    assert c.stats["val_chunks_in_train_dropped"] > 0 and c.val
    assert not set(c.val) & set(c.train)


def test_a_val_chunk_that_nearly_copies_training_text_is_dropped(tmp_path):
    """Generated tables that differ in a few entries (the stdlib's codec tables) were near copies on both sides:
    a val chunk with at least half of its long lines in the training text is dropped; a chunk of its own stays."""
    from agentforge.codegen.corpus import drop_near_copies

    table = ["    0x%04x: 0x%04x,    # LATIN LETTER NUMBER %d" % (i, i, i) for i in range(20)]
    train = ["DECODING = {\n" + "\n".join(table) + "\n}\n"]
    near = "ENCODING = {\n" + "\n".join(table[:11] + [t.replace("LATIN", "GREEK") for t in table[11:]]) + "\n}\n"
    far = "ENCODING = {\n" + "\n".join(table[:9] + [t.replace("LATIN", "GREEK") for t in table[9:]]) + "\n}\n"
    own = "def parse(text):\n    return [line.split(',') for line in text.splitlines()]\n"
    kept, dropped = drop_near_copies([near, far, own, "x = 1\n"], train)   # 11 of 20 lines seen; 9 of 20; none
    assert kept == [far, own, "x = 1\n"] and dropped == 1


def test_the_baseline_description_claims_training_parity_only_when_both_trained_here():
    """'same data, steps and batch as Cognate' only when Cognate was trained in this run; a Cognate checkpoint from
    elsewhere, or phase.max_epochs=0, says what actually happened."""
    from types import SimpleNamespace

    from agentforge.phases.codegen import _baseline_training

    p = SimpleNamespace(max_epochs=2, steps_per_epoch=5)
    assert "same data, steps and batch as Cognate" in _baseline_training(p, {"cognate": {}, "gpt2_scratch": {}})
    elsewhere = _baseline_training(p, {"gpt2_scratch": {}})
    assert "2 x 5 steps" in elsewhere and "trained elsewhere" in elsewhere and "same data" not in elsewhere
    assert _baseline_training(SimpleNamespace(max_epochs=0, steps_per_epoch=5), {}).startswith("untrained")


def test_a_timing_range_from_too_few_rounds_is_not_called_a_ci():
    from agentforge.codegen.report import efficiency_line

    one = {"threshold": "max_latency_ratio", "value": 3.723, "ci95": [3.723, 3.723], "rounds": 1, "target": 0.54,
           "ok": None, "note": "1 rounds: no decision"}
    assert "CI95" not in efficiency_line(one) and "(range [3.723, 3.723] of 1 rounds)" in efficiency_line(one)
    seven = {**one, "ci95": [0.2, 0.3], "rounds": 7, "ok": True}
    assert efficiency_line(seven) == ("- efficiency max_latency_ratio: 3.723 CI95 [0.2, 0.3] over 7 interleaved "
                                      "rounds vs target 0.54 -> ok")


def test_report_cells_for_figures_not_measured_are_a_dash():
    from agentforge.codegen.report import _f

    assert _f(None) == "–" and _f(float("nan")) == "–" and _f(3) == "3" and _f(True) == "True"


def test_a_pass_at_k_cell_shows_the_models_ci_beside_it():
    from agentforge.codegen.report import _with_ci

    s = {"cognate": 0.3, "cognate_ci95": [0.1467, 0.4933], "gpt2": 0.0}
    assert _with_ci(s, "cognate") == "0.3 [0.147, 0.493]" and _with_ci(s, "gpt2") == "0" and _with_ci({}, "x") == "–"


def test_the_efficiency_bars_leave_out_the_training_ram_of_two_trainings_in_one_process():
    """The bar chart showed a 45x 'peak training RAM' ratio that stats.json calls not comparable (both models train
    in one process, the first pays its one-time allocations), and a literal 'latency of {n} tokens' label."""
    from agentforge.codegen.report import efficiency_ratios

    kpis = {"cognate": {"latency_ms": 50.0, "latency_tokens": 64, "peak_memory_mb": 45.0, "param_count": 10,
                        "memory_shared_process": True},
            "gpt2": {"latency_ms": 100.0, "latency_tokens": 64, "peak_memory_mb": 1.0, "param_count": 20,
                     "memory_shared_process": True}}
    labels, ratios = efficiency_ratios(kpis, "cognate", "gpt2")
    assert labels == ["latency of 64 tokens", "parameters"] and ratios == [0.5, 0.5]
    for m in kpis.values():   # measured in separate processes: the RAM ratio is a comparison again
        m["memory_shared_process"] = False
    assert efficiency_ratios(kpis, "cognate", "gpt2")[0] == ["latency of 64 tokens", "peak training RAM", "parameters"]


def test_the_report_says_which_memory_figure_it_shows():
    """Trained in processes of their own: a true, comparable peak; in one process: not comparable."""
    from agentforge.codegen.report import memory_note

    names = ["cognate", "gpt2_scratch"]
    own = memory_note({n: {"memory_shared_process": False} for n in names}, names)
    shared = memory_note({n: {"memory_shared_process": True} for n in names}, names)
    assert "high-water mark" in own and "comparable between the models" in own and "not comparable" not in own
    assert "not comparable" in shared and "memory ratio decides nothing" in shared
