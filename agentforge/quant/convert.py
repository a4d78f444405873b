"""Turning a trained model into a BitNet b1.58 one by module swap, and the per-layer accounting.

Every plain ``nn.Linear`` whose dotted name matches none of the ``preserved`` patterns (fnmatch globs tried on
the full name and on its last part, e.g. ``embed``, ``lm_head``, ``*norm``) is replaced by a ``BitLinear``
holding the same weights; everything else — embeddings, the output head, norms, memory banks, and Linear
subclasses such as the Cognate halting head (``HaltHead``: its forward RMS-normalizes the input first, which a
BitLinear would drop) — keeps its full-precision weights untouched, as in the paper (Ma et al. 2024 keep
embeddings/head in high precision).
"""
from __future__ import annotations

from fnmatch import fnmatch

import torch
from torch import nn

from agentforge.quant.bitlinear import BitLinear
from agentforge.quant.packing import packed_size

DEFAULT_PRESERVED = ("embed", "lm_head", "*norm")


def is_preserved(name: str, patterns) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return any(fnmatch(name, p) or fnmatch(leaf, p) for p in patterns)


def unmatched_patterns(model: nn.Module, patterns) -> tuple[list[str], list[str]]:
    """(the patterns that preserve no module of ``model``, the distinct last parts of its module names): a pattern
    that matches nothing preserves nothing, so a typo silently quantizes the layer it meant to keep."""
    names = [n for n, _ in model.named_modules() if n]
    unused = [p for p in patterns if not any(is_preserved(n, [p]) for n in names)]
    return unused, sorted({n.rsplit(".", 1)[-1] for n in names})


def layer_kind(name: str, module: nn.Module) -> str:
    """The row of the compression-breakdown table a layer belongs to."""
    leaf = name.rsplit(".", 1)[-1]
    if isinstance(module, nn.Embedding) or "embed" in leaf:
        return "Embeddings"
    if leaf == "lm_head":
        return "LM Head"
    if "norm" in leaf.lower():
        return "Layer Norm"
    if ".attn." in f".{name}.":
        return "Attention"
    if ".mlp." in f".{name}.":
        return "FFN"
    if name.startswith("memory"):
        return "Memory"
    if "halt" in leaf:
        return "Halting"
    return "Other"


def parameter_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own parameters or ternary codes directly, in definition order."""
    out = []
    for name, mod in model.named_modules():
        own = any(p is not None for p in mod._parameters.values())
        if own or isinstance(mod, BitLinear):
            out.append((name, mod))
    return out


def convert_to_bitlinear(model: nn.Module, preserved=DEFAULT_PRESERVED, **quant) -> list[str]:
    """Swap the quantizable nn.Linear layers for trainable BitLinear ones in place; returns their names."""
    # a weight tied to a non-linear module (e.g. lm_head tied to the embedding) stays full precision
    shared = {id(p) for m in model.modules() if type(m) is not nn.Linear for p in m.parameters(recurse=False)}
    targets = [(n, m) for n, m in model.named_modules()
               if type(m) is nn.Linear and not is_preserved(n, preserved) and id(m.weight) not in shared]
    for name, lin in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, BitLinear.from_linear(lin, **quant))
    return [n for n, _ in targets]


def bitlinear_layers(model: nn.Module) -> list[tuple[str, BitLinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BitLinear)]


def freeze(model: nn.Module) -> None:
    """Every BitLinear keeps only its ternary codes and scale."""
    for _, layer in bitlinear_layers(model):
        layer.freeze()


@torch.no_grad()
def layer_stats(model: nn.Module, scheme: str = "base3", preserved_itemsize: int = 2) -> list[dict]:
    """Per parameter-owning layer: params (original / quantized / preserved), sparsity, bytes, ratio.

    Stored bytes are what the packed checkpoint spends on the layer: packed codes + float32 scales +
    the activation clip, and ``preserved_itemsize`` bytes per preserved value (bias, embedding, norm).
    The ratio is the layer's float32 bytes over its stored bytes.
    """
    rows = []
    for name, mod in parameter_layers(model):
        direct = [p for p in mod._parameters.values() if p is not None]
        if isinstance(mod, BitLinear):
            codes, gamma = mod.ternary()
            quantized = codes.numel()
            preserved = mod.bias.numel() if mod.bias is not None else 0
            zeros = int((codes == 0).sum())
            stored = packed_size(quantized, scheme) + 4 * gamma.numel() + 4 + preserved * preserved_itemsize
        else:
            quantized, preserved = 0, sum(p.numel() for p in direct)
            zeros = sum(int((p == 0).sum()) for p in direct)
            stored = preserved * preserved_itemsize
        original = quantized + preserved
        rows.append({"name": name, "kind": layer_kind(name, mod), "quantized": isinstance(mod, BitLinear),
                     "original_params": original, "quantized_params": quantized, "preserved_params": preserved,
                     "zero_params": zeros,
                     "sparsity": zeros / max(quantized if isinstance(mod, BitLinear) else original, 1),
                     "fp32_bytes": 4 * original, "stored_bytes": stored,
                     "compression_ratio": 4 * original / max(stored, 1)})
    return rows


@torch.no_grad()
def zero_counts(model: nn.Module) -> dict[str, int]:
    """Exact zeros of the whole model and of its ternary weights alone: {"params", "zeros", "ternary_params",
    "ternary_zeros"}. Every parameter is counted once, as ``model.parameters()`` counts it (a tied lm_head is the
    embedding's tensor), so ``params`` is the model's parameter count. A BitLinear's weight counts as its ternary
    codes, latent or frozen (gamma >= 1e-5, so a weight computes as 0 exactly where its code is 0); its bias and
    every preserved parameter (embedding, lm_head, norms, halting head, memory) count as their stored values."""
    seen, out = set(), dict.fromkeys(("params", "zeros", "ternary_params", "ternary_zeros"), 0)
    for mod in model.modules():
        codes = mod.ternary()[0] if isinstance(mod, BitLinear) else None
        for key, p in mod._parameters.items():
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            ternary = codes is not None and key in ("weight", "codes")
            zeros = int(((codes if ternary else p) == 0).sum())
            out["params"] += p.numel()
            out["zeros"] += zeros
            if ternary:
                out["ternary_params"] += p.numel()
                out["ternary_zeros"] += zeros
    return out
