"""Speed and memory measurements shared by every phase (fitness speed term, diversity, eval)."""
from __future__ import annotations

import contextlib
import statistics
import time

import torch


def interleaved_medians(cases: dict, repeats: int, warmup: int = 1, sync=None) -> dict[str, float]:
    """name -> median seconds of ``cases[name]()`` over ``repeats`` rounds, every case timed once per round.

    Rounds interleave the cases, so load from other processes hits all of them alike, and each round starts
    one case later than the previous one (round r runs cases r, r+1, ... cyclically), so no case is always
    timed first, right after a warm cache or a cold one. ``warmup`` untimed rounds run first; ``sync``
    (e.g. ``torch.cuda.synchronize``) is called before and after each timed call where work is asynchronous."""
    return {name: statistics.median(ts) for name, ts in interleaved_times(cases, repeats, warmup, sync).items()}


def interleaved_times(cases: dict, repeats: int, warmup: int = 1, sync=None, prepare=None) -> dict[str, list[float]]:
    """``interleaved_medians``' timings before the median: name -> the seconds of each round, in round order
    (index r is round r for every case, so per-round ratios between cases line up). ``prepare(name)``, when given,
    runs untimed right before every call of that case (warm-up rounds included), e.g. to restore its inputs."""
    names = list(cases)
    if not names or repeats < 1:
        raise ValueError(f"interleaved_medians needs cases and repeats >= 1 (got {len(names)} cases, {repeats})")
    for _ in range(warmup):
        for name in names:
            if prepare is not None:
                prepare(name)
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            if prepare is not None:
                prepare(name)
            if sync is not None:
                sync()
            t0 = time.perf_counter()
            cases[name]()
            if sync is not None:
                sync()
            times[name].append(time.perf_counter() - t0)
    return times


@torch.no_grad()
def interleaved_forward_times(models: list, seq_len: int, repeats: int, batch: int = 1) -> list[list[float]]:
    """Seconds of one forward pass over a [batch, seq_len] input (eval mode) of each model in each of ``repeats``
    interleaved rounds whose order rotates (``interleaved_times``, one untimed round first), so that load from other
    processes hits all of them alike and none is always timed first; ``[i][r]`` is model i in round r, so per-round
    ratios line up. Each model's training flag is restored."""
    ids = torch.randint(0, 256, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    devices = [next(m.parameters()).device for m in models]
    inputs = [ids.to(d) for d in devices]
    cases = {i: (lambda m=m, x=x: m(x)) for i, (m, x) in enumerate(zip(models, inputs))}
    sync = torch.cuda.synchronize if any(d.type == "cuda" for d in devices) else None
    was = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        times = interleaved_times(cases, repeats, sync=sync)
    finally:
        for m, w in zip(models, was):
            m.train(w)
    return [times[i] for i in range(len(models))]


def interleaved_latency_ms(models: list, seq_len: int, repeats: int) -> list[float]:
    """Median forward latency (ms, one [1, seq_len] pass, eval mode) of each model (``interleaved_forward_times``)."""
    return [1e3 * statistics.median(ts) for ts in interleaved_forward_times(models, seq_len, repeats)]


@torch.no_grad()
def forward_latency_ms(model, seq_len: int, batch: int = 1, repeats: int = 5, vocab: int = 256, warmup: int = 1) -> float:
    """Median wall time (ms) of one forward pass over a [batch, seq_len] input, after warmup."""
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    was = model.training
    model.eval()
    times = []
    try:
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(ids)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000)
    finally:
        model.train(was)
    return statistics.median(times)


def forward_tokens_per_second(model, seq_len: int, batch: int = 4, repeats: int = 3, vocab: int = 256) -> float:
    ms = forward_latency_ms(model, seq_len, batch, repeats, vocab)
    return batch * seq_len / (ms / 1000)


def param_bytes(model) -> int:
    """Bytes of parameters and buffers, persistent or not (the model's memory footprint at run time: a Cognate
    model's RoPE tables and QK-clip maxima, ~64 KiB for the tiny m1, are not in its checkpoint but are in memory)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(b.numel() * b.element_size() for b in model.buffers())
    return total


@torch.no_grad()
def halting_distribution(model, rows: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Per-token ACT halting counts over [N, T+1] rows (flattened), in eval mode."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        out = [model(rows[i: i + batch_size, :-1].to(device)).halting_steps.flatten().cpu()
               for i in range(0, len(rows), batch_size)]
    finally:
        model.train(was)
    return torch.cat(out)


def latency_fit(model, new_tokens: int, prompt_len: int = 8) -> tuple[int, bool]:
    """(tokens ``generation_latency_ms`` generates: ``new_tokens`` capped at ``config.max_seq_len`` - ``prompt_len``,
    the most the KV cache holds; whether they are decoded with the KV cache: the model has a ``kv_decoder``).
    Past the cap ``models.generation.generate`` re-runs the whole context every token, several times slower per
    token, so uncapped figures of different lengths would measure different decoding paths."""
    limit = getattr(getattr(model, "config", None), "max_seq_len", None)
    n = int(new_tokens) if limit is None else max(0, min(int(new_tokens), int(limit) - int(prompt_len)))
    return n, getattr(model, "kv_decoder", None) is not None


def warmup_runs(model) -> int:
    """Whole untimed runs a timing of ``model``'s decoding needs first: 2 where its decoder's steps replay CUDA graphs
    (``graphs.usable``: a step's graph is captured on its key's second sighting, so a timed run after one warm-up
    would still hold every capture and the eager first steps), else 1."""
    from agentforge.models import graphs

    return 2 if graphs.usable(next(model.parameters())) else 1


@torch.no_grad()
def generation_latency_ms(model, new_tokens: int = 512, prompt_len: int = 8, vocab: int = 256) -> float:
    """Wall time (ms) to greedily generate ``new_tokens`` tokens (no EOS stop) after a short prompt, capped to
    what the KV cache holds (``latency_fit``: callers record the count it gives).

    Measured once, after a 1-token warm-up; where the decoder's steps replay CUDA graphs, after two whole untimed
    generations instead (``warmup_runs``: without them the timed run would hold the eager first steps and every
    capture, not the steady decoding it reports; ``benchmarks/bench_generation.py`` also warms up). The model's own ``generate`` is used when it has one.
    """
    from agentforge.evals.tasks import generate

    new_tokens = latency_fit(model, new_tokens, prompt_len)[0]
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(0)).to(device)
    was = model.training
    model.eval()
    try:
        runs = warmup_runs(model)
        for _ in range(runs):
            generate(model, ids, new_tokens if runs > 1 else 1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = generate(model, ids, new_tokens)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    finally:
        model.train(was)
    if out.shape[1] - prompt_len != new_tokens:
        raise RuntimeError(f"generation stopped after {out.shape[1] - prompt_len} of {new_tokens} tokens")
    return elapsed * 1000


class PeakMemory:
    """Peak memory (MB) of a block of code: CUDA's allocator peak on GPU; on CPU, the process's
    resident set size sampled every ``interval`` s by a background thread (the peak RSS seen)."""

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.005):
        self.device, self.interval = torch.device(device), interval
        self.peak_mb = 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        import threading

        import psutil

        proc, self._stop = psutil.Process(), threading.Event()
        self.peak_mb = proc.memory_info().rss / 2**20

        def poll():
            while not self._stop.is_set():
                self.peak_mb = max(self.peak_mb, proc.memory_info().rss / 2**20)
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
        return False


def memory_regime(device, finetuned_in_process) -> dict:
    """What besides the model shapes a ``PeakMemory`` figure, recorded with ``phase=eval``'s results so that two
    stages' peaks are compared only where it is the same: what was measured (CUDA's allocator peak on a GPU, the
    process's peak RSS elsewhere: different quantities; None when the device is not recorded) and whether the process
    fine-tuned before measuring (its RSS, or the allocator's peak, then also holds what the fine-tune left behind)."""
    kind = torch.device(device).type if device else None
    return {"measure": None if kind is None else "CUDA allocator peak" if kind == "cuda" else "process RSS",
            "finetuned_in_process": bool(finetuned_in_process)}


def cuda_sync() -> None:
    """Wait for the CUDA work this process has queued; nothing where it has not used CUDA (the CPU: no sync)."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


class PartTimes:
    """Wall seconds of the named parts of a run, from its construction (the run's start) to ``summary()``.

    ``with times("fit"): ...`` adds the block's seconds to ``seconds["fit"]``; a name used again accumulates. Parts
    nest exclusively: while an inner part runs the outer one is paused, so every second counts in one part at most
    and the parts never sum past the total; what no part covers is ``other`` in ``summary``. A part whose block
    raises still records its seconds up to the raise, and the exception propagates. Where this process has used
    CUDA the device is synchronized at each part boundary, and only there, so a part's seconds include the kernels
    it queued (on the CPU nothing is synchronized)."""

    RESERVED = ("other", "total")

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.t0 = clock()
        self.seconds: dict[str, float] = {}
        self._open: list[list] = []   # [name, perf_counter when it last (re)started], innermost last

    @contextlib.contextmanager
    def __call__(self, name: str):
        if name in self.RESERVED:
            raise ValueError(f"part name {name!r} is reserved for the summary")
        now = self._now()
        if self._open:   # the outer part pauses
            outer = self._open[-1]
            self.seconds[outer[0]] = self.seconds.get(outer[0], 0.0) + now - outer[1]
        self.seconds.setdefault(name, 0.0)   # the summary lists the parts in the order they first started
        self._open.append([name, now])
        try:
            yield self
        finally:
            now = self._now()
            _, since = self._open.pop()
            self.seconds[name] = self.seconds.get(name, 0.0) + now - since
            if self._open:   # the outer part resumes
                self._open[-1][1] = now

    def _now(self) -> float:
        cuda_sync()
        return self.clock()

    def summary(self, prefix: str = "time/") -> dict[str, float]:
        """``{prefix}<part>_s`` for each part in the order the parts first started, then ``{prefix}other_s`` (the
        seconds no part covered) and ``{prefix}total_s`` (since construction); the parts and other sum to the total.
        A part still open counts up to now."""
        now = self._now()
        total, parts = now - self.t0, dict(self.seconds)
        if self._open:   # the innermost open part runs (the outer ones are paused, their seconds already added)
            name, since = self._open[-1]
            parts[name] = parts.get(name, 0.0) + now - since
        parts["other"] = max(0.0, total - sum(parts.values()))
        return {**{f"{prefix}{k}_s": v for k, v in parts.items()}, f"{prefix}total_s": total}

    @staticmethod
    def line(summary: dict[str, float], label: str = "", prefix: str = "time/") -> str:
        """One line of a ``summary``: '[label ]time (s): load 1.2, fit 8.3, other 0.2 (total 9.7)'."""
        items = [(k[len(prefix):-2], v) for k, v in summary.items() if k.startswith(prefix) and k.endswith("_s")]
        parts = ", ".join(f"{k} {v:.1f}" for k, v in items if k != "total")
        return f"{label + ' ' if label else ''}time (s): {parts} (total {summary[prefix + 'total_s']:.1f})"


def timed(times: PartTimes | None, name: str):
    """``times(name)``, or a no-op context where nothing is timed (``times`` None): for code that runs timed inside a
    phase and untimed elsewhere (callbacks, Lightning modules, the control bake)."""
    return contextlib.nullcontext() if times is None else times(name)
