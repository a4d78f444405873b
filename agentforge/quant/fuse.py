"""Sibling fusion of frozen BitLinear layers: layers that read the same input tensor (q/k/v of an attention,
gate/up of a SwiGLU, the memory's query/value/gate) computed as ONE matmul over their concatenated
weights, with one activation quantization and one rescale, in the packed model's decoding steps (inputs of
at most ``BitLinear.decode_rows`` rows; larger inputs run one matmul per layer, see ``bitlinear.py``) when
autograd is off (the concatenated biases are detached: with it on, each layer runs its own matmul).

The model code is untouched: it still calls each layer on its input. The first member called computes
every member's output (``FusedSiblings.compute``: the concatenated codes^T as fp32 and as int8, gamma per
output and bias, the outputs split by columns: views of one result); the others are served from a
one-entry cache keyed like the shared quantization (``bitlinear._LAST``: the input object, its version
counter, the kernel, the group), each member's output at most once per computation, so an input modified
in place, a different input or a second call is computed again. Parameters, state dict and the packed
checkpoint format do not change; the concatenation is built with the layers' plans (``_make_plan``, at the
first frozen call after load, a move or a changed clip) and the members' fp32 codes^T become column
slices of it (no second fp32 copy; the concatenated int8 codes^T are one extra int8 copy).

Groups are found from the module structure in use, at load (``load_packed``) or by calling
``fuse_siblings`` on a converted and frozen model: one forward pass of a short input records which frozen
BitLinear layers receive the same tensor object (forward pre-hooks), in call order. Members must agree on
what the quantization and the kernel read (clip value, activation bits, static scale, in_features,
device); those that do not are left unfused. Numbers: the int8 kernel gives exactly the unfused layers'
outputs (the same integer products and per-element rescale; a missing bias is added as +0); the float
kernel exactly too (its integer sums are exact in fp32, over any number of columns).
"""
from __future__ import annotations

import torch
from torch import nn

from agentforge.quant.bitlinear import BitLinear, clear_caches


class FusedSiblings:
    """The concatenated weights of compatible sibling layers, in the order given."""

    def __init__(self, layers: list[BitLinear]):
        self.sizes = [m.out_features for m in layers]
        # codes^T of all members as fp32 (the float kernel's weight), [in, sum out], contiguous (one matmul over it
        # was faster than over a transposed view); each member's becomes a view of its columns (no second copy)
        self.w_t = torch.cat([m.codes_float_t() for m in layers], 1).contiguous()
        start = 0
        for m, n in zip(layers, self.sizes):
            m._codes_f_t = self.w_t[:, start:start + n]
            start += n
        self.codes_t = torch.cat([m._codes_t for m in layers], 1).contiguous()
        self.gamma = torch.cat([m._gamma_row.expand(n) for m, n in zip(layers, self.sizes)])
        biases = [m.bias for m in layers]
        self.bias = None if all(b is None for b in biases) else torch.cat(
            [b.detach() if b is not None else self.gamma.new_zeros(n) for b, n in zip(biases, self.sizes)])

    def compute(self, layer: BitLinear, x: torch.Tensor, clip, static: bool, kernel: str) -> tuple[torch.Tensor, ...]:
        """Every member's output on x, one matmul (``layer``'s quantization settings, shared by all)."""
        y = layer._ternary_matmul(x, clip, static, kernel, self.w_t, self.codes_t, self.gamma, self.bias)
        return y.split_with_sizes(self.sizes, -1)


class SiblingGroup:
    """Layers found to read the same input; makes every member's plan at once, fusing the compatible ones."""

    def __init__(self, layers: list[BitLinear]):
        self.layers = list(layers)

    def make_plans(self, caller: BitLinear) -> tuple:
        parts: dict[tuple, list[BitLinear]] = {}
        for m in self.layers:
            if not m.frozen:
                m.__dict__["_plan"] = None
                continue
            key = (float(m.act_clip), m.act_bits, m.act_scale, m.in_features, m.codes.device)
            parts.setdefault(key, []).append(m)
        for members in parts.values():
            fused = FusedSiblings(members) if len(members) > 1 and members[0].act_bits is not None else None
            for i, m in enumerate(members):
                m._own_plan((fused, i) if fused is not None else None)
        return caller.__dict__["_plan"]


def find_sibling_groups(model: nn.Module, example: torch.Tensor) -> list[list[str]]:
    """Names of the frozen BitLinear layers of ``model`` that received the same input tensor in one
    no-grad, eval-mode forward pass of ``example``, per group of two or more, in call order. The pass leaves
    no trace: the training flag and every buffer (e.g. a persistent memory bank) are restored after it."""
    names = {m: n for n, m in model.named_modules() if isinstance(m, BitLinear) and m.frozen}
    calls: list[tuple[torch.Tensor, BitLinear]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: calls.append((args[0], mod))) for m in names]
    buffers = [(b, b.clone()) for b in model.buffers()]
    was = model.training
    try:
        with torch.no_grad():
            model.eval()
            model(example)
    finally:
        model.train(was)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for h in hooks:
            h.remove()
    groups: list[list[BitLinear]] = []
    placed: set[BitLinear] = set()
    for i, (x, m) in enumerate(calls):
        if m in placed:
            continue
        group = [m] + [m2 for x2, m2 in calls[i + 1:] if x2 is x and m2 not in placed and m2 is not m]
        group = list(dict.fromkeys(group))
        if len(group) > 1:
            groups.append(group)
            placed.update(group)
    return [[names[m] for m in g] for g in groups]


def fuse_siblings(model: nn.Module, example: torch.Tensor | None = None) -> list[list[str]]:
    """Fuse the sibling groups of ``model``'s frozen BitLinear layers (``find_sibling_groups`` on ``example``,
    default: two token ids for a model with an ``embed``); returns the groups' layer names."""
    if example is None:
        example = torch.zeros(1, 2, dtype=torch.long, device=next(model.parameters()).device)
    unfuse(model)
    groups = find_sibling_groups(model, example)
    for names in groups:
        group = SiblingGroup([model.get_submodule(n) for n in names])
        for m in group.layers:
            m.__dict__["_siblings"] = group
            m.__dict__["_plan"] = None
    clear_caches()
    return groups


def unfuse(model: nn.Module) -> None:
    """Back to one matmul per layer (each layer keeps its own dense weight)."""
    for m in model.modules():
        if isinstance(m, BitLinear) and m.__dict__.get("_siblings") is not None:
            m.__dict__["_siblings"] = m.__dict__["_plan"] = None
            if m._dense is not None:
                m._dense = m._dense.clone()
    clear_caches()
