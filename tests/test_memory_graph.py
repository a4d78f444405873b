"""The memory's chunk scan replayed as a CUDA graph (``models/memory_graph.py``): a pure function of tensors on the
CPU (the precondition of a capture), and on a GPU the same outputs, gradients and statistics as the eager scan,
with a failed capture falling back to eager."""
from __future__ import annotations

import pytest
import torch

from agentforge.models import graphs, memory_graph
from agentforge.models.memory import SurpriseMemory

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _args(mem, h):
    q, k, v = mem.project(h)
    return q, k, v, mem.keys, mem.values, mem.filled, mem.log_beta.detach()


@pytest.mark.parametrize("traced", [True, False])
def test_scan_fresh_reads_and_writes_no_python_state(traced):
    """A graph replays kernels only: whatever the scan did to Python state at capture would not happen again. So
    ``scan_fresh`` must leave the module's statistics and buffers alone and give the same outputs every call."""
    torch.manual_seed(0)
    mem = SurpriseMemory(8, 6, 4, 0.1, max_writes=2, chunk=4).train()
    h = torch.randn(2, 19, 8)
    with torch.no_grad():
        a = mem.scan_fresh(*_args(mem, h), traced)
        stats, bank = dict(mem.stats), [b.clone() for b in mem.buffers()]
        b = mem.scan_fresh(*_args(mem, h), traced)
    assert mem.stats == stats and all(torch.equal(x, y) for x, y in zip(bank, mem.buffers()))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert int(a["writes"]) > 0 and ("src" in a) == traced and ("r" in a) != traced
    assert not graphs.usable(h)  # the CPU never takes the graph path


def test_capture_policy_second_sighting_bounded_and_failure_falls_back(monkeypatch):
    """The cache's rules with the capture stubbed (the real one needs a GPU, below): a shape is captured on its
    second sighting, at most MAX_GRAPHS per memory and none evicted; a capture that raises leaves the memory eager."""
    made = []

    class FakeGraph:
        def __init__(self, fn, args):
            made.append(tuple(args[0].shape))
            self.fn = fn

        def __call__(self, args):
            return self.fn(*args)

    monkeypatch.setattr(graphs, "usable", lambda x: True)
    monkeypatch.setattr(graphs, "Captured", FakeGraph)
    monkeypatch.setattr(memory_graph, "MAX_GRAPHS", 2)
    mem = SurpriseMemory(8, 6, 4, 0.1, max_writes=2, chunk=4)
    with torch.no_grad():
        for t in (5, 5, 5, 6, 7, 6, 7, 7):
            mem.read(torch.randn(1, t, 8))
    assert made == [(1, 5, 4), (1, 6, 4)] and graphs.captured(mem) == 2   # t=7 seen twice, no room left
    args = (torch.zeros(1, 5, 4),) * 3 + (mem.keys, mem.values, mem.filled, mem.log_beta.detach())
    with torch.inference_mode():  # Lightning validates under inference mode: its graphs must not serve no_grad reads
        inference_key = memory_graph.key(mem, args, False)
    assert inference_key != memory_graph.key(mem, args, False)

    def broken(*a):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs, "Captured", broken)
    other, h = SurpriseMemory(8, 6, 4, 0.1, max_writes=2, chunk=4), torch.randn(2, 9, 8)
    with torch.no_grad():
        outs = [other.read(h)[0] for _ in range(3)]
    assert other in graphs._FAILED and graphs.captured(other) == 0
    assert all(torch.equal(o, outs[0]) for o in outs)


def _read(mem, h, graphed: bool, autocast: bool):
    with graphs.switched(graphed), torch.autocast("cuda", torch.bfloat16, enabled=autocast):
        out, s = mem.read(h)
    grads = torch.autograd.grad(out.float().pow(2).sum(), [h, *mem.parameters()]) if h.requires_grad else ()
    return out, s, grads


@cuda
@pytest.mark.parametrize("autocast,grad,persist", [(True, True, False), (False, True, False), (True, False, False),
                                                   (False, False, True)])
def test_cuda_graph_replay_equals_the_eager_scan(autocast, grad, persist):
    """Four reads of fresh inputs (eager, captured, replayed, replayed) against the eager path on the same inputs
    and the same starting bank: outputs, surprise, gradients, write counts, usage and the persistent bank."""
    torch.manual_seed(0)
    graphed = SurpriseMemory(64, 32, 16, 0.1, max_writes=4, chunk=8).cuda().train()
    eager = SurpriseMemory(64, 32, 16, 0.1, max_writes=4, chunk=8).cuda().train()
    eager.load_state_dict(graphed.state_dict())
    graphed.persist = eager.persist = persist
    for i in range(4):
        h = torch.randn(3, 45, 64, device="cuda", requires_grad=grad)
        with torch.set_grad_enabled(grad):
            got, ref = _read(graphed, h, True, autocast), _read(eager, h, False, autocast)
        for g, r in zip(got[:2], ref[:2]):
            torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)
        for g, r in zip(got[2], ref[2]):  # bf16 gradients: scatter-add (gather's backward) sums in any order on a GPU
            tol = 2 ** -7 * float(r.abs().max()) if autocast else 1e-5
            torch.testing.assert_close(g, r, atol=tol, rtol=1e-4 if not autocast else 2 ** -6)
        assert int(graphed.stats["writes"]) == int(eager.stats["writes"]) > 0
        torch.testing.assert_close(graphed.usage, eager.usage)
        torch.testing.assert_close(graphed.keys, eager.keys)
        assert graphs.captured(graphed) == (1 if i >= 1 else 0)   # captured on the second sighting
    assert graphs.captured(eager) == 0


@cuda
def _healthy_after_a_failure():
    """After a failed capture the process runs on: the current stream is the default one, the CUDA generator
    draws, and another memory captures and replays its scan, equal to the eager scan."""
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    torch.randn(3, device="cuda")
    torch.manual_seed(1)
    other = SurpriseMemory(64, 32, 16, 0.1, max_writes=4, chunk=8).cuda().eval()
    h = torch.randn(2, 24, 64, device="cuda")
    with torch.no_grad():
        outs = [other.read(h)[0] for _ in range(3)]
    assert graphs.captured(other) == 1 and other not in graphs._FAILED
    with graphs.switched(False), torch.no_grad():
        eager = other.read(h)[0]
    for o in outs:
        torch.testing.assert_close(o, eager)


@cuda
@pytest.mark.parametrize("when", ["capture", "always"])
def test_cuda_a_failed_capture_leaves_the_memory_eager_and_the_process_healthy(monkeypatch, caplog, when):
    """A host sync only inside the capture fails the capture itself (torch ends neither its allocator routing nor the
    generator's capture mode then: ``_capturing`` does); one in every call is caught by the warm-up, before any
    capture begins. Either way: eager from then on, the same results, one warning, and a healthy process."""
    torch.manual_seed(0)
    mem = SurpriseMemory(64, 32, 16, 0.1, max_writes=4, chunk=8).cuda().train()
    scan = mem.scan_fresh

    def syncing_scan(*args):  # a host sync is not allowed while a stream is captured
        if when == "always" or torch.cuda.is_current_stream_capturing():
            float(args[0].sum())
        return scan(*args)

    monkeypatch.setattr(mem, "scan_fresh", syncing_scan)
    h = torch.randn(2, 40, 64, device="cuda")
    with torch.no_grad():
        outs = [mem.read(h)[0] for _ in range(3)]
    assert mem in graphs._FAILED and graphs.captured(mem) == 0
    assert caplog.text.count("capture failed") == 1
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0])
    _healthy_after_a_failure()


def test_hardware_cuda_graphs_is_on_in_every_preset_and_switches_the_process(monkeypatch):
    from pathlib import Path

    from omegaconf import OmegaConf

    from agentforge.main import apply_cuda_graphs

    presets = sorted((Path(__file__).parents[1] / "conf" / "hardware").glob("*.yaml"))
    assert presets and all(OmegaConf.load(f).cuda_graphs is True for f in presets)
    monkeypatch.setattr(graphs, "ENABLED", True)
    apply_cuda_graphs(OmegaConf.create({"hardware": {"cuda_graphs": False}}))
    assert graphs.ENABLED is False
    apply_cuda_graphs(OmegaConf.create({"hardware": {"cuda_graphs": True}}))
    assert graphs.ENABLED is True


def test_a_bad_cuda_graphs_value_is_one_error_line(tmp_path):
    from tests.conftest import run_cli

    proc = run_cli(["phase=cognate", "hardware.cuda_graphs=sometimes", "logger=none"], tmp_path, timeout=60)
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode != 0 and len(err) == 1 and "hardware.cuda_graphs" in err[0], proc.stderr


@cuda
def test_cuda_graphs_made_under_inference_mode_do_not_serve_no_grad_reads():
    """Lightning validates under ``torch.inference_mode``; an ablation then reads under ``no_grad`` with the same
    shapes: each gets its own graph (an inference-mode graph's static tensors cannot be written outside it)."""
    torch.manual_seed(0)
    mem = SurpriseMemory(64, 32, 16, 0.1, max_writes=4, chunk=8).cuda().eval()
    h = torch.randn(2, 40, 64, device="cuda")
    with graphs.switched(False), torch.no_grad():
        ref = mem.read(h)[0]
    outs = []
    for mode in (torch.inference_mode, torch.inference_mode, torch.no_grad, torch.no_grad, torch.inference_mode):
        with mode():
            outs.append(mem.read(h)[0].clone())
    assert graphs.captured(mem) == 2
    for o in outs:
        torch.testing.assert_close(o, ref)


def test_graphs_are_not_used_when_disabled_capturing_or_under_a_flop_counter(monkeypatch):
    """``usable`` for a CUDA tensor (a stand-in: this test runs without a GPU, CUDA's capture query stubbed): yes by
    default; no with hardware.cuda_graphs=false, under torch.compile, inside another capture, or under a dispatch /
    function mode (a FLOP counter would not see a replay's kernels)."""
    from types import SimpleNamespace

    from torch.overrides import TorchFunctionMode
    from torch.utils.flop_counter import FlopCounterMode

    capturing = [False]
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    x = SimpleNamespace(is_cuda=True)
    assert graphs.usable(x) and memory_graph.MAX_GRAPHS == 8
    with FlopCounterMode(display=False):
        assert not graphs.usable(x)
    with TorchFunctionMode():
        assert not graphs.usable(x)
    capturing[0] = True
    assert not graphs.usable(x)
    capturing[0] = False
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)   # traced by torch.compile: stays eager
    assert not graphs.usable(x)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    monkeypatch.setattr(graphs, "ENABLED", False)
    assert not graphs.usable(x)


def test_switched_sets_the_graphs_switch_inside_and_restores_it():
    with graphs.switched(False):
        assert graphs.ENABLED is False
        with graphs.switched(True):
            assert graphs.ENABLED is True
        assert graphs.ENABLED is False
    assert graphs.ENABLED is True
