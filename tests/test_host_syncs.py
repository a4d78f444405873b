"""Host syncs on the CPU: a counter of the tensor calls that read a value back to the host (on CUDA each is a device
sync), itself tested on each kind it counts; the whole Cognate training step (ACT halting, the memory, QK-clip's
max logit) and KV-cached greedy generation make none (``torch.cuda.set_sync_debug_mode``: test_speed.py's CUDA
tests); the uncached eval-mode forward makes one per recursion step but the last (ACT's early exit)."""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from agentforge.models import CognateConfig, CognateModel
from agentforge.models.generation import generate

SYNCING = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "nonzero", "masked_select",
           "unique", "argwhere", "equal", "allclose", "is_nonzero"}


def _bool_index(idx) -> bool:
    """Whether an index holds a boolean tensor (a mask: the result's size is read back to the host)."""
    parts = idx if isinstance(idx, tuple) else (idx,)
    return any(torch.is_tensor(p) and p.dtype == torch.bool for p in parts)


def _syncs(name: str, args, kwargs) -> bool:
    """Whether a call reads a value back to the host: the names above, indexing with a boolean mask, one-argument
    ``where`` (= nonzero), ``repeat_interleave`` with tensor repeats and no ``output_size``, a copy to the CPU
    (``.cpu()``, ``.to("cpu")``)."""
    if name in SYNCING:
        return True
    if name in ("__getitem__", "__setitem__", "index_put_", "index_put"):
        return len(args) > 1 and _bool_index(args[1])
    if name == "cpu":   # a copy to the host: on CUDA it waits for the value (on the CPU a no-op, still a place to see)
        return True
    if name == "to":
        dev = kwargs.get("device", next((a for a in args[1:] if isinstance(a, (str, torch.device))), None))
        return dev is not None and torch.device(dev).type == "cpu"
    if name == "where":
        return len(args) + len(kwargs) == 1
    if name == "repeat_interleave":
        reps = args[1] if len(args) > 1 else kwargs.get("repeats")
        return torch.is_tensor(reps) and reps.numel() > 1 and kwargs.get("output_size") is None
    return False


class CountHostSyncs(TorchFunctionMode):
    """Counts tensor calls that read a value back to the host (on CUDA each one is a device sync), ``_syncs``."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if _syncs(name, args, kwargs or {}):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def test_the_sync_counter_sees_masks_one_argument_where_tensor_repeats_and_equal():
    x, m = torch.arange(4.0), torch.tensor([True, False, True, False])
    for op, name in ((lambda: x[m], "__getitem__"), (lambda: x.clone().__setitem__(m, 0.0), "__setitem__"),
                     (lambda: torch.where(m), "where"), (lambda: x.repeat_interleave(m.long() + 1), "repeat_interleave"),
                     (lambda: torch.equal(x, x), "equal"), (lambda: x.nonzero(), "nonzero"), (lambda: bool(m[0]), "__bool__"),
                     (lambda: x.cpu(), "cpu"), (lambda: x.to("cpu"), "to"), (lambda: x.to(device="cpu"), "to")):
        with CountHostSyncs() as c:
            op()
        assert c.calls == [name]
    with CountHostSyncs() as c:   # no sync: integer and slice indexing, three-argument where, integer repeats
        x[1:3], x[torch.tensor([0, 2])], torch.where(m, x, -x), x.repeat_interleave(2), x.to(torch.float64)
    assert c.calls == []


def _model(**kw) -> CognateModel:
    torch.manual_seed(0)
    return CognateModel(CognateConfig(max_seq_len=256, **kw))   # window 64, memory chunk 16, 3 recursion steps


def test_a_cognate_training_step_makes_no_host_sync():
    model = _model().train()
    x, y = (torch.randint(0, 256, (2, 96)) for _ in range(2))
    with CountHostSyncs() as c:
        model(x, y).loss.backward()
    assert c.calls == []
    assert model.memory.enabled and any(a.max_logit.max() > 0 for a in model.attention_modules())


def test_kv_cached_generation_makes_no_host_sync_and_the_uncached_forward_syncs_in_acts_early_exit():
    model = _model().eval()
    ids = torch.randint(0, 256, (2, 8))
    with CountHostSyncs() as c:
        cached = generate(model, ids, 80, 256)                 # the window (64) and the memory's chunks passed
    assert c.calls == []
    with CountHostSyncs() as c:
        plain = generate(model, ids, 3, 256, use_cache=False)
    assert c.calls == ["nonzero"] * 2 * 3   # one per step but the last (3 steps), per generated token
    assert torch.equal(plain, cached[:, :11])
