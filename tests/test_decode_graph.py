"""The KV decoder's one-token step replayed as a CUDA graph (``CognateDecoder.graphed_step`` through ``graphs.py``):
on the CPU with a stand-in capture that runs the function from static copies of its inputs (what a replay does), and
on a GPU for real: the same tokens and logits as the eager step, graphs reused once the window is full."""
from __future__ import annotations

import pytest
import torch
from torch.utils._pytree import tree_map

from agentforge.models import CognateConfig, CognateModel, graphs
from agentforge.models.kv_cache import CognateDecoder

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _model(device="cpu"):
    torch.manual_seed(0)
    return CognateModel(CognateConfig(max_seq_len=512)).to(device).eval()   # window 64, memory chunk 16


def _greedy(model, ids, n):
    """(tokens [B, n], logits of every step) of greedy decoding through the decoder's ``step``."""
    dec = CognateDecoder(model, ids.shape[0])
    logits, toks, seen = dec.prefill(ids), [], []
    for _ in range(n):
        tok = logits.argmax(-1)
        toks.append(tok)
        logits = dec.step(tok)
        seen.append(logits)
    return torch.stack(toks, 1), torch.stack(seen, 1), dec


def static_copies(made: list, replays: list):
    """A stand-in for ``graphs.Captured`` that runs on the CPU: a replay copies the inputs into tensors made at
    capture and the outputs out; ``made`` and ``replays`` count captures and replays."""
    class StaticCopies:
        def __init__(self, fn, args):
            made.append(1)
            self.fn, self.inputs = fn, [x.clone() for x in args]

        def __call__(self, args):
            replays.append(1)
            for s, x in zip(self.inputs, args):
                s.copy_(x)
            return tree_map(lambda x: x.clone() if torch.is_tensor(x) else x, self.fn(*self.inputs))
    return StaticCopies


def test_graphed_step_from_static_inputs_equals_the_step_and_reuses_graphs_after_the_window(monkeypatch):
    made, replays = [], []
    StaticCopies = static_copies(made, replays)

    model, ids = _model(), torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        ref_toks, ref_logits, ref_dec = _greedy(model, ids, 200)
        monkeypatch.setattr(graphs, "usable", lambda x: True)
        monkeypatch.setattr(graphs, "Captured", StaticCopies)
        toks, logits, dec = _greedy(model, ids, 200)
        assert torch.equal(toks, ref_toks)
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
        # positions 16..63 fill the window (a key each, seen once); from 64 on the key cycles with the memory's
        # 16-position chunk: the first cycle runs eagerly, the second captures its 16 graphs, every step since replays
        assert len(made) == 16 and len(replays) == 200 - 48 - 16
        # the state after graphed steps (the chunk count now a 0-d tensor) branches and extends like the eager one
        tok = toks[:, -1].repeat_interleave(3)
        torch.testing.assert_close(dec.copy(repeat=3).step(tok), ref_dec.copy(repeat=3).step(tok), atol=1e-5, rtol=1e-5)
        ext, ref_ext = dec.extend(toks[:, :5]), ref_dec.extend(toks[:, :5])
        torch.testing.assert_close(ext.logits, ref_ext.logits, atol=1e-5, rtol=1e-5)


def test_the_graphed_step_is_keyed_on_the_weights_and_not_used_in_training(monkeypatch):
    """A model whose parameters were replaced (``.to``, a reload by assignment) must not replay graphs that read the old
    ones; a training-mode model (its memory counts statistics, a Python side effect) never takes the graph path."""
    keys = []
    real = graphs.cached_call

    def spy(owner, key, *a, **k):
        keys.append(key)
        return real(owner, key, *a, **k)

    monkeypatch.setattr(graphs, "usable", lambda x: True)
    monkeypatch.setattr(graphs, "cached_call", spy)
    model, ids = _model(), torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        dec = CognateDecoder(model, 1)
        dec.prefill(ids)
        dec.copy().step(ids[:, -1])
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.clone())
        dec.copy().step(ids[:, -1])
        assert len(keys) == 2 and keys[0][:-1] == keys[1][:-1] and keys[0][-1] != keys[1][-1]
        model.train()
        dec.step(ids[:, -1])
    assert len(keys) == 2


@cuda
@pytest.mark.parametrize("autocast", [False, True])
def test_cuda_graphed_decoding_gives_the_eager_tokens_and_logits(autocast):
    model, ids = _model("cuda"), torch.randint(0, 256, (3, 16), device="cuda")
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=autocast):
        with graphs.switched(False):
            ref_toks, ref_logits, _ = _greedy(model, ids, 160)
        for _ in range(2):   # the second run replays graphs captured in the first
            toks, logits, _ = _greedy(model, ids, 160)
            assert torch.equal(toks, ref_toks)
            torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    assert 16 <= graphs.captured(model) <= 64 and not graphs.failed(model)


def test_cached_call_bounds_graphs_by_count_and_bytes_and_copies_per_dtype(monkeypatch):
    """``graphs.cached_call``: a key is captured on its second sighting, until the owner holds ``max_graphs`` graphs or
    ``max_bytes`` of static tensors; ``_copy_all`` copies a mixed-dtype list with one ``_foreach_copy_`` per dtype."""
    class Owner:
        pass

    class Sized:
        def __init__(self, fn, args):
            self.fn, self.nbytes = fn, 100

        def __call__(self, args):
            return self.fn(*args)

    monkeypatch.setattr(graphs, "Captured", Sized)
    x = torch.ones(2)
    for max_graphs, max_bytes, want in ((2, float("inf"), 2), (10, 250, 3)):
        owner = Owner()
        for k in range(5):
            for _ in range(2):
                assert torch.equal(graphs.cached_call(owner, (k,), lambda t: t * 2, (x,), max_graphs, max_bytes), x * 2)
        assert graphs.captured(owner) == want   # 250 bytes: the third capture crosses it, none after

    calls = []
    real = torch._foreach_copy_
    monkeypatch.setattr(torch, "_foreach_copy_", lambda d, s: (calls.append(len(d)), real(d, s)))
    dsts = [torch.zeros(3), torch.zeros(2, dtype=torch.long), torch.zeros(1), torch.zeros(2, dtype=torch.bool)]
    srcs = [torch.ones(3), torch.full((2,), 7), torch.full((1,), 2.0), torch.ones(2, dtype=torch.bool)]
    graphs._copy_all(dsts, srcs)
    assert sorted(calls) == [1, 1, 2] and all(torch.equal(d, s) for d, s in zip(dsts, srcs))


def test_cached_call_counts_each_call_by_kind_and_outcome(monkeypatch):
    """``graphs.COUNTS``: a key's first sighting runs eagerly (eager_first), its second captures (captured), later ones
    replay; a new key with no room left runs eagerly (eager_full); an owner whose capture failed stays eager
    (eager_failed). ``counts`` flattens them for the phases' summary, ``counts_line`` prints them."""
    class Owner:
        pass

    class Fails:
        def __init__(self, fn, args):
            raise RuntimeError("an op that cannot be captured")

    graphs.reset_counts()
    x, owner = torch.ones(2), Owner()
    monkeypatch.setattr(graphs, "Captured", graphs.RunsEagerly)
    for key in ("a", "a", "a", "a", "b", "b"):   # room for one graph: "b" never gets one
        graphs.cached_call(owner, (key,), lambda t: t + 1, (x,), max_graphs=1, kind="scan")
    monkeypatch.setattr(graphs, "Captured", Fails)
    other = Owner()
    for _ in range(3):
        graphs.cached_call(other, ("c",), lambda t: t + 1, (x,), max_graphs=4, kind="decode_step")
    found = graphs.counts()
    assert found == {"cuda_graphs/decode_step_replayed": 0, "cuda_graphs/decode_step_captured": 0,
                     "cuda_graphs/decode_step_eager_first": 1, "cuda_graphs/decode_step_eager_full": 0,
                     "cuda_graphs/decode_step_eager_failed": 2,
                     "cuda_graphs/scan_replayed": 2, "cuda_graphs/scan_captured": 1, "cuda_graphs/scan_eager_first": 2,
                     "cuda_graphs/scan_eager_full": 1, "cuda_graphs/scan_eager_failed": 0}
    assert graphs.counts_line(found) == ("CUDA graphs: decode_step 0 replayed, 0 captured, 1 eager_first, 0 eager_full, "
                                         "2 eager_failed; scan 2 replayed, 1 captured, 2 eager_first, 1 eager_full, "
                                         "0 eager_failed")
    graphs.reset_counts()
    assert graphs.counts() == {}


def test_the_latency_figure_times_replayed_steps_only_where_graphs_are_used(monkeypatch):
    """``generation_latency_ms`` warms up with two whole generations where the decoder replays graphs, so the timed
    generation holds no eager first sighting and no capture (with the 1-token warm-up it held both)."""
    from agentforge.evals import speed

    monkeypatch.setattr(graphs, "usable", lambda x: True)
    monkeypatch.setattr(graphs, "Captured", static_copies([], []))
    at_reads = []
    real = speed.time.perf_counter
    monkeypatch.setattr(speed.time, "perf_counter", lambda: at_reads.append(graphs.counts()) or real())
    model = _model()
    speed.generation_latency_ms(model, 100)
    before, after = at_reads[-2], at_reads[-1]
    timed = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert timed["cuda_graphs/decode_step_replayed"] + timed["cuda_graphs/decode_step_eager_full"] == 99   # prefill + 99
    assert timed["cuda_graphs/decode_step_replayed"] > 80    # eager_full: keys past the graph cap, run eagerly by design
    assert timed["cuda_graphs/decode_step_captured"] == 0 and timed["cuda_graphs/decode_step_eager_first"] == 0


def test_a_capture_gets_its_own_cublas_workspace_cleared_before_and_after(monkeypatch):
    """``graphs.Captured`` on fakes of the CUDA calls: warm-up, clear cuBLAS's workspaces, capture, clear (also when
    the capture fails), so a captured GEMM's workspace lives in its own graph's pool (``_clear_cublas_workspaces``)."""
    import contextlib

    log = []

    class Stream:
        def wait_stream(self, other):
            pass

    class Graph:
        pass

    @contextlib.contextmanager
    def capturing(graph):
        log.append("capture_begin")
        yield
        log.append("capture_end")

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", Stream)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(graphs, "_capturing", capturing)
    monkeypatch.setattr(graphs, "_host_syncs_raise", contextlib.nullcontext)
    monkeypatch.setattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: log.append("clear"), raising=False)

    def fn(x):
        log.append("fn")
        return x * 2

    graphs.Captured(fn, (torch.ones(2),))
    assert log == ["fn", "clear", "capture_begin", "fn", "capture_end", "clear"]   # warm-up, then the capture
    log.clear()

    def fails(x):
        log.append("fn")
        if log.count("fn") == 2:
            raise RuntimeError("operation not permitted when stream is capturing")
        return x

    with pytest.raises(RuntimeError):
        graphs.Captured(fails, (torch.ones(2),))
    assert log == ["fn", "clear", "capture_begin", "fn", "clear"]


def test_codegens_latency_rounds_time_replayed_steps_only_where_graphs_are_used(monkeypatch):
    """``codegen.evaluate.efficiency`` times interleaved rounds after an untimed warm-up; where the Cognate decoder
    replays graphs, a second untimed round (``speed.warmup_runs``): its first timed round held every capture."""
    from agentforge.codegen import models
    from agentforge.codegen.evaluate import efficiency
    from agentforge.evals import speed

    monkeypatch.setattr(graphs, "usable", lambda x: True)
    monkeypatch.setattr(graphs, "Captured", static_copies([], []))
    reads = []
    real = speed.time.perf_counter
    monkeypatch.setattr(speed.time, "perf_counter", lambda: reads.append(graphs.counts()) or real())
    lm = models.byte_lm("cognate", "", _model(), 512)
    kpis = efficiency([lm], {}, 100, {"cognate": {"sampling_tokens_per_sec": 1.0}}, rounds=3)
    assert len(reads) == 6 and kpis["cognate"]["device"] == "cpu"   # the CPU-only targets read it
    for before, after in zip(reads[::2], reads[1::2]):
        timed = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        assert timed["cuda_graphs/decode_step_captured"] == 0 and timed["cuda_graphs/decode_step_eager_first"] == 0
        assert timed["cuda_graphs/decode_step_replayed"] > 0
