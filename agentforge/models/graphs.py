"""CUDA-graph replay of pure functions of tensors, shared by the memory's chunk scan (``memory_graph.py``) and the KV
decoder's one-token step (``kv_cache.py``).

Why: at the sizes this project trains, a GPU spends its time launching kernels, not running them (the 25M training
step launched 10,661 kernels; a tiny model's decode step ~400, at ~10 us each on an H100 against ~3 us on the CPU,
so greedy generation ran at half the 2-core CPU's speed). A function that reads and writes no Python state and
never syncs with the host can be recorded once per input shape and replayed (CUDA Graphs, ``torch.cuda.CUDAGraph``):
one launch for all its kernels.

Protocol, per owner (a module or model) and key (the caller's: input shapes and dtypes, every Python value the
function's control flow reads, the autocast and inference-mode state): the first call runs eagerly; the second
warms up once on a side stream (as torch's CUDA-graph notes ask: lazy initialisations must not be captured),
captures, and replays; later calls replay. A replay copies the inputs into the graph's static tensors and copies
the outputs (a pytree of tensors) out of the graph's private pool (the next replay overwrites it), so callers get
ordinary tensors that no later replay touches. At most ``max_graphs`` graphs per owner (and ``max_bytes`` of
static tensors), never evicted: what comes first stays, and varying shapes must not churn captures. A function that
would sync with the host fails in its warm-up (run with sync debug mode "error"), before any capture; a capture that
fails anyway is ended cleanly (``_capturing``). Either way that owner stays eager from then on, with one warning,
and the rest of the process is unaffected (tested on a GPU: stream, generator, later captures).

Used only for CUDA tensors, outside ``torch.compile``, another stream capture and torch function / dispatch modes
(a FLOP counter must see the kernels); off everywhere with ``hardware.cuda_graphs=false`` (``ENABLED``).

Every call through ``cached_call`` is counted by kind (the caller's: ``scan``, ``decode_step``) and outcome —
``replayed``, ``captured`` (a capture and its first replay), ``eager_first`` (a key's first sighting), ``eager_full``
(the owner's graphs or bytes are used up), ``eager_failed`` (its capture failed) — process-wide, for the phases' report
(``counts``, ``reset_counts``): a capture costs a warm-up, a capture and a private memory pool, so captures that are
rarely replayed, or shapes that find no room, cost time instead of saving it.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
import weakref
from collections import Counter

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode
from torch.utils._pytree import tree_flatten, tree_unflatten

log = logging.getLogger(__name__)

ENABLED = True      # hardware.cuda_graphs
COUNTS: Counter = Counter()   # (kind, outcome) -> calls through cached_call (module docstring)
MAX_SEEN = 256      # sighting counts kept per owner (cleared when full)
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # owner -> ({key: Captured}, Counter(key), [bytes])
_FAILED: weakref.WeakSet = weakref.WeakSet()                      # owners whose capture failed: eager from then on


def usable(x: torch.Tensor) -> bool:
    """Whether a call on ``x``'s device may use a graph here: CUDA, enabled, not compiling, not capturing, and no
    torch function or dispatch mode active (e.g. ``FlopCounterMode``, which would not see a replay's kernels)."""
    return (ENABLED and x.is_cuda and not torch.compiler.is_compiling()
            and not torch.cuda.is_current_stream_capturing() and not torch._C._is_torch_function_mode_enabled()
            and _get_current_dispatch_mode() is None)


@contextlib.contextmanager
def switched(on: bool):
    """``ENABLED`` set to ``on`` inside the block and restored after it (A/B timings, eager references in tests)."""
    global ENABLED
    before, ENABLED = ENABLED, on
    try:
        yield
    finally:
        ENABLED = before


def modes(device_type: str) -> tuple:
    """The ambient state a graph's kernels depend on: autocast (on, dtype) and inference mode (a graph's static
    tensors made under inference mode take no ``copy_`` outside it)."""
    return (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type),
            torch.is_inference_mode_enabled())


def metas(tensors) -> tuple:
    return tuple((tuple(x.shape), x.dtype, x.device) for x in tensors)


def _copy_all(dsts: list[torch.Tensor], srcs: list[torch.Tensor]) -> None:
    """dst.copy_(src) for each pair, one ``_foreach_copy_`` per dtype (a launch each, not one per tensor)."""
    groups: dict[torch.dtype, tuple[list, list]] = {}
    for d, s in zip(dsts, srcs):
        ds, ss = groups.setdefault(d.dtype, ([], []))
        ds.append(d)
        ss.append(s)
    for ds, ss in groups.values():
        torch._foreach_copy_(ds, ss)


class Captured:
    """One captured call ``fn(*args)`` (args: tensors; result: a pytree of tensors): static inputs, the graph, and
    its outputs in the graph's pool."""

    def __init__(self, fn, args: tuple[torch.Tensor, ...]):
        self.inputs = [x.detach().clone() for x in args]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad(), _host_syncs_raise():
            fn(*self.inputs)                      # warm-up, not captured
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        _clear_cublas_workspaces()                # the capture's GEMMs get a workspace in this graph's own pool
        try:
            with torch.cuda.stream(side), torch.no_grad(), _capturing(self.graph):
                outputs = fn(*self.inputs)
        finally:
            _clear_cublas_workspaces()            # and no later call, eager or captured, shares that workspace
        self.leaves, self.spec = tree_flatten(outputs)
        if any(x is not None and not torch.is_tensor(x) for x in self.leaves):  # a Python value: frozen at capture
            raise TypeError(f"a graphed function returned a non-tensor: {[type(x).__name__ for x in self.leaves]}")
        self.outputs = [x for x in self.leaves if x is not None]
        self.nbytes = sum(x.numel() * x.element_size() for x in (*self.inputs, *self.outputs))

    def __call__(self, args: tuple[torch.Tensor, ...]):
        _copy_all(self.inputs, list(args))
        self.graph.replay()
        outs = iter([torch.empty_like(x) for x in self.outputs])
        leaves = [None if x is None else next(outs) for x in self.leaves]
        _copy_all([x for x in leaves if x is not None], self.outputs)
        return tree_unflatten(leaves, self.spec)


def cached_call(owner, key: tuple, fn, args: tuple[torch.Tensor, ...], max_graphs: int, max_bytes: float = float("inf"),
                kind: str = "graph"):
    """``fn(*args)``, replayed from ``owner``'s graph for ``key`` where one was captured (see the module docstring);
    the caller checks ``usable`` first. ``kind`` names the caller in ``COUNTS``."""
    if owner in _FAILED:
        COUNTS[kind, "eager_failed"] += 1
        return fn(*args)
    graphs, seen, used = _CACHE.setdefault(owner, ({}, Counter(), [0]))
    graph = graphs.get(key)
    if graph is None:
        if len(seen) >= MAX_SEEN:
            seen.clear()
        seen[key] += 1
        if seen[key] < 2 or len(graphs) >= max_graphs or used[0] >= max_bytes:   # seen once, or no room: eager
            COUNTS[kind, "eager_first" if seen[key] < 2 else "eager_full"] += 1
            return fn(*args)
        try:
            graph = graphs[key] = Captured(fn, args)
            used[0] += getattr(graph, "nbytes", 0)
        except Exception as exc:  # an op that cannot be captured: this owner stays eager
            _FAILED.add(owner)
            graphs.clear()
            log.warning("CUDA graph of %s: capture failed (%s: %s); it runs eagerly", type(owner).__name__,
                        type(exc).__name__, exc)
            COUNTS[kind, "eager_failed"] += 1
            return fn(*args)
        COUNTS[kind, "captured"] += 1
    else:
        COUNTS[kind, "replayed"] += 1
    return graph(args)


OUTCOMES = ("replayed", "captured", "eager_first", "eager_full", "eager_failed")


def counts(prefix: str = "cuda_graphs/") -> dict[str, int]:
    """``COUNTS`` as flat keys, ``{prefix}{kind}_{outcome}``, every outcome of each kind seen (empty where no call
    went through ``cached_call``, e.g. on the CPU)."""
    kinds = sorted({k for k, _ in COUNTS})
    return {f"{prefix}{k}_{o}": COUNTS[k, o] for k in kinds for o in OUTCOMES}


def counts_line(found: dict[str, int], prefix: str = "cuda_graphs/") -> str:
    """'CUDA graphs: scan 746 replayed, 25 captured, 0 eager_first, ...; decode_step ...' of ``counts``' keys."""
    kinds = [k[len(prefix):-len("_replayed")] for k in found if k.endswith("_replayed")]
    parts = [f"{k} " + ", ".join(f"{found[f'{prefix}{k}_{o}']} {o}" for o in OUTCOMES) for k in kinds]
    return "CUDA graphs: " + "; ".join(parts)


def reset_counts() -> None:
    COUNTS.clear()


class RunsEagerly:
    """A stand-in for ``Captured`` that keeps the function and runs it at every replay (a capture costs nothing):
    with ``on_the_cpu`` the cache's policy and ``COUNTS`` run without a GPU (``benchmarks/graph_counts.py``, tests)."""

    nbytes = 0

    def __init__(self, fn, args):
        self.fn = fn

    def __call__(self, args):
        return self.fn(*args)


@contextlib.contextmanager
def on_the_cpu():
    """Inside the block every call that would use a graph on a GPU goes through ``cached_call`` on the CPU too:
    ``usable`` less its CUDA checks, captures by ``RunsEagerly``; both restored after it."""
    global usable, Captured
    saved = usable, Captured
    usable = lambda x: (ENABLED and not torch.compiler.is_compiling()   # noqa: E731
                        and not torch._C._is_torch_function_mode_enabled() and _get_current_dispatch_mode() is None)
    Captured = RunsEagerly
    try:
        yield
    finally:
        usable, Captured = saved


def captured(owner) -> int:
    """How many graphs ``owner`` holds (for tests and the benchmarks' reports)."""
    return len(_CACHE[owner][0]) if owner in _CACHE else 0


def failed(owner) -> bool:
    return owner in _FAILED


def _clear_cublas_workspaces() -> None:
    """Drop cuBLAS's cached per-(handle, stream) workspaces, before and after every capture, as torch's own CUDA-graph
    trees do (``torch/_inductor/cudagraph_trees.py``, ``clear_cublass_cache``). A captured GEMM keeps its workspace's
    raw address. Without the clears, a graph captured on a stream whose workspace was allocated outside the graph's
    pool replays into freed memory once something clears the workspaces — Lightning does, in its CUDA accelerator's
    setup and teardown of every fit (``_clear_cuda_memory``) — and graphs sharing a stream share one workspace, so
    destroying the graph whose pool holds it frees it under the others (pytorch/pytorch#193402). Cleared before the
    capture, the capture allocates its workspace in its own private pool, which lives as long as the graph; cleared
    after, nothing else uses it. The likely cause of an "illegal memory access" in a tiny Quiet-STaR run on an H100
    whose evaluations replayed graphs captured before its fits (reasoned from the code and a CPU simulation of the
    clears, not yet confirmed on a GPU). A no-op on builds without CUDA."""
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()


@contextlib.contextmanager
def _host_syncs_raise():
    """The warm-up runs with ``torch.cuda.set_sync_debug_mode("error")``: an op that synchronizes with the host, the
    usual reason a capture fails, raises here, before any capture has begun."""
    before = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Synchronization debug mode is a prototype")
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
    owner falls back to eager and everything else runs on."""
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
