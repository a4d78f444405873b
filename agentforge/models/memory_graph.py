"""CUDA-graph replay of the memory's no-grad chunk scan (``SurpriseMemory.scan_fresh``).

Why: on a GPU the scan is ~85 tiny kernels per 16-token chunk, 32 chunks per read at seq 512 and a read per
recursion step; the H100 training step of the 25M model was launch-bound (10,661 kernel launches, 206 ms of
device time in ~330 ms of wall time; the model ran 2.4x faster with its memory off). The scan reads and
writes no Python state and never syncs with the host, so it can be recorded once per input shape and
replayed (CUDA Graphs, through ``torch.cuda.CUDAGraph``): one launch for the whole scan.

Protocol, per memory module and key (input shapes and dtypes, ``traced``, the autocast and inference-mode state,
the memory's settings): the first call runs eagerly; the second warms up once on a side stream (as torch's CUDA-graph
notes ask: lazy initialisations must not be captured), captures, and replays; later calls replay. A replay
copies the inputs into the graph's static tensors and clones the outputs out of the graph's private pool (the
next replay overwrites it), so callers get ordinary tensors. At most ``MAX_GRAPHS`` graphs per memory, never
evicted: the training step's shape comes first; evaluation's varying row counts (ACT drops halted rows) must not
churn captures. A scan that would sync with the host fails in its warm-up (run with sync debug mode "error"), before
any capture; a capture that fails anyway is ended cleanly (``_capturing``). Either way that memory stays on the eager
path, with one warning, and the rest of the process is unaffected (tested on a GPU: stream, generator, later captures).

Used only for CUDA tensors, outside ``torch.compile``, another stream capture and torch function / dispatch
modes (a FLOP counter must see the kernels); off everywhere with
``hardware.cuda_graphs=false`` (``ENABLED``). On the CPU nothing changes: ``run`` calls ``scan_fresh``.
"""
from __future__ import annotations

import contextlib
import logging
import weakref
from collections import Counter

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

log = logging.getLogger(__name__)

ENABLED = True      # hardware.cuda_graphs
MAX_GRAPHS = 8      # graphs per memory module; later new shapes run eagerly (none is evicted: no re-capture churn)
MAX_SEEN = 256      # sighting counts kept per memory module (cleared when full)
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # memory module -> ({key: ScanGraph}, Counter(key))
_FAILED: weakref.WeakSet = weakref.WeakSet()                      # memories whose capture failed: eager from then on


class ScanGraph:
    """One captured ``scan_fresh`` call: static inputs, the graph, and its outputs in the graph's pool."""

    def __init__(self, memory, args: tuple[torch.Tensor, ...], traced: bool):
        self.inputs = [x.detach().clone() for x in args]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad(), _host_syncs_raise():
            memory.scan_fresh(*self.inputs, traced)                      # warm-up, not captured
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(side), torch.no_grad(), _capturing(self.graph):
            self.outputs = memory.scan_fresh(*self.inputs, traced)

    def __call__(self, args: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        for static, x in zip(self.inputs, args):
            static.copy_(x)
        self.graph.replay()
        return {name: x.clone() for name, x in self.outputs.items()}


@contextlib.contextmanager
def _host_syncs_raise():
    """The warm-up runs with ``torch.cuda.set_sync_debug_mode("error")``: an op that synchronizes with the host, the
    usual reason a capture fails, raises here, before any capture has begun."""
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(before)


@contextlib.contextmanager
def _capturing(graph: torch.cuda.CUDAGraph):
    """Capture into ``graph`` on the current (side) stream. Unlike the ``torch.cuda.graph`` context manager this
    neither synchronizes nor empties the allocator's cache first (each capture would otherwise make every later
    allocation a fresh ``cudaMalloc``), and a capture that fails leaves the process as it found it: when the body
    raises (e.g. a host sync inside the capture), ``capture_end`` raises too, before torch ends the allocator's
    routing into the graph's pool and the CUDA generator's capture mode; both are ended here (after that failure
    ``torch.randn`` on the GPU raised "Offset increment outside graph capture", measured on an H100), so the
    memory falls back to eager and everything else runs on."""
    device = torch.cuda.current_device()
    gen = torch.cuda.default_generators[device]
    graph.capture_begin(capture_error_mode="thread_local")
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            graph.capture_end()
        with contextlib.suppress(Exception):   # already ended when capture_end got that far
            torch._C._cuda_endAllocateToPool(device, graph.pool())
        with contextlib.suppress(Exception):
            gen.graphsafe_set_state(gen.clone_state())   # the same seed and offset, out of capture mode
        raise
    graph.capture_end()


def usable(x: torch.Tensor) -> bool:
    """Whether a scan on ``x``'s device may use a graph here: CUDA, enabled, not compiling, not capturing, and no
    torch function or dispatch mode active (e.g. ``FlopCounterMode``, which would not see a replay's kernels)."""
    return (ENABLED and x.is_cuda and not torch.compiler.is_compiling()
            and not torch.cuda.is_current_stream_capturing() and not torch._C._is_torch_function_mode_enabled()
            and _get_current_dispatch_mode() is None)


def key(memory, args: tuple[torch.Tensor, ...], traced: bool) -> tuple:
    dev = args[0].device.type
    autocast = torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev)
    return (tuple((tuple(x.shape), x.dtype, x.device) for x in args), traced, autocast,
            torch.is_inference_mode_enabled(),  # a graph's static tensors made under inference mode take no copy_ outside it
            memory.slots, memory.chunk, memory.max_writes, float(memory.surprise_threshold))


def run(memory, args: tuple[torch.Tensor, ...], traced: bool) -> dict[str, torch.Tensor]:
    """The memory's ``scan_fresh(*args, traced)``, replayed from a CUDA graph where ``usable`` and seen before."""
    if not usable(args[0]) or memory in _FAILED:
        return memory.scan_fresh(*args, traced)
    graphs, seen = _CACHE.setdefault(memory, ({}, Counter()))
    k = key(memory, args, traced)
    graph = graphs.get(k)
    if graph is None:
        if len(seen) >= MAX_SEEN:
            seen.clear()
        seen[k] += 1
        if seen[k] < 2 or len(graphs) >= MAX_GRAPHS:   # a shape seen once, or the graphs' room taken: eager
            return memory.scan_fresh(*args, traced)
        try:
            graph = graphs[k] = ScanGraph(memory, args, traced)
        except Exception as exc:  # an op that cannot be captured: this memory stays eager
            _FAILED.add(memory)
            graphs.clear()
            log.warning("memory CUDA graph: capture failed (%s: %s); the memory scan runs eagerly",
                        type(exc).__name__, exc)
            return memory.scan_fresh(*args, traced)
    return graph(args)


def captured(memory) -> int:
    """How many graphs ``memory`` holds (for tests and the benchmark's report)."""
    return len(_CACHE[memory][0]) if memory in _CACHE else 0
