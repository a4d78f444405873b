"""evals.speed.PartTimes: the phases' per-part wall times (exclusive nesting, parts + other = total, CUDA synced at
part boundaries only), on a fake clock."""
from __future__ import annotations

import pytest
import torch


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_part_times_sequential_parts_accumulate_and_other_is_the_rest():
    from agentforge.evals.speed import PartTimes

    clock = FakeClock()
    times = PartTimes(clock)
    clock.t += 1.0                 # before any part: other
    with times("load"):
        clock.t += 2.0
    with times("fit"):
        clock.t += 5.0
    clock.t += 0.5                 # between parts: other
    with times("load"):            # a name used again accumulates
        clock.t += 1.0
    s = times.summary()
    assert s == {"time/load_s": 3.0, "time/fit_s": 5.0, "time/other_s": 1.5, "time/total_s": 9.5}
    assert PartTimes.line(s, "baking") == "baking time (s): load 3.0, fit 5.0, other 1.5 (total 9.5)"
    assert PartTimes.line(s) == "time (s): load 3.0, fit 5.0, other 1.5 (total 9.5)"


def test_part_times_nest_exclusively_so_parts_never_sum_past_the_total():
    from agentforge.evals.speed import PartTimes

    clock = FakeClock()
    times = PartTimes(clock)
    with times("fit"):
        clock.t += 2.0
        with times("validation"):
            clock.t += 3.0
            with times("checkpoint"):
                clock.t += 1.0
            clock.t += 0.5
        clock.t += 4.0
        with times("validation"):
            clock.t += 1.0
    s = times.summary()
    assert s == {"time/fit_s": 6.0, "time/validation_s": 4.5, "time/checkpoint_s": 1.0, "time/other_s": 0.0,
                 "time/total_s": 11.5}


def test_part_times_a_raising_part_records_its_seconds_and_the_exception_propagates():
    """Decided: a part that raises still counts up to the raise (where the time went before a failure), and the
    outer part resumes from there."""
    from agentforge.evals.speed import PartTimes

    clock = FakeClock()
    times = PartTimes(clock)
    with times("fit"):
        clock.t += 1.0
        with pytest.raises(RuntimeError, match="boom"):
            with times("evidence"):
                clock.t += 2.0
                raise RuntimeError("boom")
        clock.t += 3.0
    assert times.seconds == {"fit": 4.0, "evidence": 2.0} and not times._open
    with pytest.raises(ValueError, match="reserved"):
        with times("other"):
            pass


def test_part_times_summary_counts_an_open_part_up_to_now():
    from agentforge.evals.speed import PartTimes

    clock = FakeClock()
    times = PartTimes(clock)
    with times("report"):
        clock.t += 1.0
        with times("save"):
            clock.t += 2.0
        clock.t += 0.5
        s = times.summary()
    assert s == {"time/report_s": 1.5, "time/save_s": 2.0, "time/other_s": 0.0, "time/total_s": 3.5}


def test_part_times_synchronize_cuda_at_part_boundaries_only_and_never_on_the_cpu(monkeypatch):
    from agentforge.evals.speed import PartTimes

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append(1))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)   # a process that has not used CUDA
    times = PartTimes()
    with times("a"):
        with times("b"):
            pass
    times.summary()
    assert calls == []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with times("a"):
        torch.zeros(3).sum()   # work inside a part syncs nothing
        assert len(calls) == 1
    times.summary()
    assert len(calls) == 3     # the part's start and end, the summary's read
    s = times.summary()
    assert all(v >= 0 for v in s.values()) and sum(v for k, v in s.items() if k != "time/total_s") == \
        pytest.approx(s["time/total_s"])


def test_devices_line_says_why_the_evaluations_ran_on_the_cpu():
    from agentforge.tracking.part_times import devices_line

    line = devices_line({"time/fit_device": "cuda:0", "time/eval_device": "cpu"}, "Cognate model1")
    assert line == "Cognate model1 devices: fit on cuda:0, evaluations after it on cpu (hardware.eval_device=cpu)"
    qs = devices_line({"time/fit_device": "cuda:0", "time/eval_device": "cpu"}, "rl", "the phase's reason")
    assert qs == "rl devices: fit on cuda:0, evaluations after it on cpu (the phase's reason)"
    same = devices_line({"time/fit_device": "cpu", "time/eval_device": "cpu"}, "rl")
    assert same == "rl devices: fit on cpu, evaluations after it on cpu"


def test_fit_devices_reads_the_strategy_root_device_and_the_model():
    from types import SimpleNamespace

    from agentforge.tracking.part_times import fit_devices

    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    assert fit_devices(trainer, torch.nn.Linear(2, 2)) == {"time/fit_device": "cuda:0", "time/eval_device": "cpu"}


def test_a_phase_reports_its_cuda_graph_calls_where_the_graph_path_runs(tmp_path, monkeypatch, capsys):
    """On a GPU the memory's scan goes through ``graphs.cached_call``; here a stand-in capture that runs the function
    takes that path on the CPU. The Cognate phase then logs ``cuda_graphs/scan_<outcome>`` in its summary and
    metrics.json and prints them: its fit and evaluations run one scan shape per batch shape, so most scans replay.
    Without the path (the CPU as it is) there are no such keys and no line (``test_cli``'s key list)."""
    import json

    from agentforge.main import run
    from agentforge.models import graphs
    from tests.conftest import TINY, compose_cfg

    with graphs.on_the_cpu():
        run(compose_cfg(["phase=cognate", "model=m1", *TINY], tmp_path))
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("Cognate model1 CUDA graphs: "))
    saved = json.loads(next((tmp_path / "outputs").rglob("cognate/model1/metrics.json")).read_text())
    counts = {k: v for k, v in saved.items() if k.startswith("cuda_graphs/")}
    # the scan (training and evaluation forwards) and the decoder's step (the task accuracies' generations)
    assert set(counts) == {f"cuda_graphs/{k}_{o}" for k in ("scan", "decode_step") for o in graphs.OUTCOMES}, counts
    assert counts["cuda_graphs/scan_replayed"] > counts["cuda_graphs/scan_captured"] > 0
    assert counts["cuda_graphs/decode_step_captured"] > 0
    assert counts["cuda_graphs/scan_eager_failed"] == counts["cuda_graphs/decode_step_eager_failed"] == 0
    assert line == "Cognate model1 " + graphs.counts_line(counts)


def test_to_eval_device_follows_the_fit_unless_told_cpu(monkeypatch):
    """``hardware.eval_device=fit`` gives ``loop_device`` (the GPU where the fit asked for one and one is visible),
    ``cpu`` the CPU, and every module given is moved there. torch.cuda.is_available is faked to reach the GPU branch's
    choice; the move itself is checked with the CPU (a real move to a GPU: tests/test_cli.py's CUDA case)."""
    from agentforge.training import trainer as tr

    m = torch.nn.Linear(2, 2)
    assert tr.to_eval_device({"accelerator": "gpu", "eval_device": "fit"}, m) == torch.device("cpu")  # no GPU here
    assert next(m.parameters()).device == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert tr.loop_device({"accelerator": "gpu"}) == torch.device("cuda")
    assert tr.to_eval_device({"accelerator": "gpu", "eval_device": "cpu"}, m) == torch.device("cpu")
    moved = []
    monkeypatch.setattr(torch.nn.Linear, "to", lambda self, dev: moved.append(dev) or self)
    assert tr.to_eval_device({"accelerator": "gpu"}, m, m) == torch.device("cuda")   # the default: fit
    assert moved == [torch.device("cuda")] * 2
    assert tr.to_eval_device({"accelerator": "cpu"}, m) == torch.device("cpu")


def test_every_hardware_preset_names_its_eval_device():
    from pathlib import Path

    from omegaconf import OmegaConf

    presets = {f.stem: OmegaConf.load(f).eval_device
               for f in (Path(__file__).parents[1] / "conf" / "hardware").glob("*.yaml")}
    assert presets == {"auto": "fit", "cpu": "fit", "gpu": "fit", "ddp": "fit", "fsdp": "cpu"}
