"""Layer-level merges over Cognate state dicts: FrankenMerge (passthrough stacking) and DFS.

A Cognate layer is the set of keys ``blocks.{i}.*`` (attn q/k/v/o, attn_norm, mlp gate/up/down,
mlp_norm); everything else (embeddings, lm_head, final norm, halting head, memory) is taken from the
``base`` state dict. Both functions return a new state dict whose layers are renumbered 0..L'-1, so
the caller builds the model with ``n_layers = L'``.

* FrankenMerge = mergekit's ``passthrough`` with ``slices`` for the layers: layer ranges [start, end) of several
  models stacked in order (the "frankenmerge" of Goliath-120B / SOLAR's depth up-scaling, Kim et al. 2023). Not
  for the rest: mergekit takes the embeddings from the first slice's model and the final norm and lm_head from the
  last slice's; here every non-layer tensor comes from ``base`` (the stage-2 merge θ_T), so those tensors are
  merged too, as in the evolutionary recipes of Akiba et al.
* DFS = data-flow-space merging of Akiba et al. 2024, "Evolutionary Optimization of Model Merging
  Recipes" (Sakana AI): the token's path is a sequence of layers drawn from any of the models, and
  the input to each hop is multiplied by a scale that the evolutionary search tunes. Simplified from theirs:
  they search an indicator over a fixed, repeated layer order with an M x M matrix W of scales between layer
  pairs; here the recipe lists its (model, layer) hops directly, one free scale per hop (normalised to a
  product of 1), and the parameter-space weights and density are global, not per layer.

How a per-hop input scale becomes weights, exactly. A Cognate block is pre-norm,

    B(x) = u + M(N_m(u)),   u = x + A(N_a(x)),

and RMSNorm is scale invariant (N(s x) = N(x) for s > 0, up to its epsilon). Hence for S > 0

    B(S x) = S * B^(1/S)(x),

where B^(c) is B with its branch outputs multiplied by c, i.e. ``attn.o_proj.weight`` and
``mlp.down.weight`` scaled by c. For a path with input scales s_1..s_L and h_k = B_k(s_k h_{k-1}),
induction gives h_k = S_k g_k with S_k = s_1...s_k and g_k = B_k^(1/S_k)(g_{k-1}), g_0 = h_0. The stack's
output h_L = S_L g_L is reproduced exactly by the folded blocks when S_L = 1. The common factor S_L
cannot be folded (the memory gate and the halting head after the stack are not scale invariant), so
``dfs`` applies the scales up to that factor: it divides them by their geometric mean (making S_L = 1).
Only the ratios between hops' scales matter, which is what the search tunes.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch

_LAYER = re.compile(r"^blocks\.(\d+)\.(.+)$")
BRANCH_OUTPUTS = ("attn.o_proj.weight", "mlp.down.weight")

State = Mapping[str, torch.Tensor]


def n_layers_of(state: State) -> int:
    idx = {int(m.group(1)) for k in state if (m := _LAYER.match(k))}
    return max(idx) + 1 if idx else 0


def layer_tensors(state: State, i: int) -> dict[str, torch.Tensor]:
    """{suffix: tensor} of layer i, e.g. {"attn.q_proj.weight": ...}."""
    out = {m.group(2): v for k, v in state.items() if (m := _LAYER.match(k)) and int(m.group(1)) == i}
    if not out:
        raise ValueError(f"layer {i} not in the state dict (it has {n_layers_of(state)} layers)")
    return out


def _non_layer(base: State) -> dict[str, torch.Tensor]:
    return {k: v for k, v in base.items() if not _LAYER.match(k)}


def stack_layers(base: State, layers: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The base's non-layer tensors plus the given layers renumbered 0..len-1 (tensors are cloned)."""
    if not layers:
        raise ValueError("a merged model needs at least one layer")
    out = {k: v.clone() for k, v in _non_layer(base).items()}
    for i, layer in enumerate(layers):
        for suffix, v in layer.items():
            out[f"blocks.{i}.{suffix}"] = v.clone()
    return out


def frankenmerge(slices: Sequence[tuple[State, int, int]], base: State) -> dict[str, torch.Tensor]:
    """Passthrough stacking: for each slice (state, start, end) append layers start..end-1 of state.

    The result has sum(end - start) layers; non-layer tensors come from ``base``.
    """
    layers = []
    for state, start, end in slices:
        n = n_layers_of(state)
        if not 0 <= start < end <= n:
            raise ValueError(f"layer range [{start}, {end}) is outside a model of {n} layers")
        layers += [layer_tensors(state, i) for i in range(start, end)]
    return stack_layers(base, layers)


def normalized_scales(scales: Sequence[float]) -> list[float]:
    """s_k / (s_1...s_L)^(1/L): the scales with product 1 that ``dfs`` applies (see the module doc)."""
    if not scales or any(not (s > 0 and math.isfinite(s)) for s in scales):
        raise ValueError(f"DFS scales must be positive and finite, got {list(scales)}")
    log_mean = sum(math.log(s) for s in scales) / len(scales)
    return [s / math.exp(log_mean) for s in scales]


def dfs(path: Sequence[tuple[State, int]], scales: Sequence[float], base: State) -> dict[str, torch.Tensor]:
    """Data-flow merge: hop k runs layer ``path[k][1]`` of model ``path[k][0]`` on its input times s_k.

    The scales are normalized to product 1 and folded into the weights: hop k's ``attn.o_proj`` and
    ``mlp.down`` are multiplied by 1 / (s_1...s_k), which computes exactly the scaled path.
    """
    if len(path) != len(scales):
        raise ValueError(f"{len(path)} hops but {len(scales)} scales")
    cum, layers = 1.0, []
    for (state, i), s in zip(path, normalized_scales(scales)):
        cum *= s
        layer = dict(layer_tensors(state, i))
        for key in BRANCH_OUTPUTS:
            layer[key] = (layer[key].float() / cum).to(layer[key].dtype)
        layers.append(layer)
    return stack_layers(base, layers)
