"""The grokking task and its small transformer (Power et al. 2022, "Grokking: Generalization Beyond
Overfitting on Small Algorithmic Datasets"; the setting Grokfast, Lee et al. 2024, benchmarks on).

Every equation ``a ∘ b = c (mod p)`` is a 3-token sequence ``[a, b, EQ]`` whose label is c (the format of
Nanda et al. 2023, "Progress measures for grokking via mechanistic interpretability"); a fixed
fraction of all p*p pairs is the training set, the rest the validation set. The model is a decoder of the
project's own ``Block`` (RMSNorm, RoPE attention that records max logits for QK-clip, SwiGLU) read at the
last position. ``train_grokking`` is the whole experiment for one optimizer config (the phase and the
benchmark both call it), a plain loop with no files or loggers.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from agentforge.models.layers import Block, RMSNorm, rope_cache
from agentforge.optim import build_optimizer

OPERATIONS = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    "div": lambda a, b, p: (a * pow(b, p - 2, p)) % p,   # b^-1 by Fermat; b = 0 is left out
}


def modular_dataset(p: int, operation: str, train_fraction: float, seed: int):
    """((x_train [N,3], y_train [N]), (x_val, y_val)): all pairs, shuffled with ``seed``, split once."""
    if operation not in OPERATIONS:
        raise ValueError(f"operation {operation!r} not in {sorted(OPERATIONS)}")
    eq_tok = p
    rows, labels = [], []
    for a in range(p):
        for b in range(1 if operation == "div" else 0, p):
            rows.append([a, b, eq_tok])
            labels.append(OPERATIONS[operation](a, b, p))
    x, y = torch.tensor(rows), torch.tensor(labels)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_train = round(train_fraction * len(x))
    tr, va = perm[:n_train], perm[n_train:]
    return (x[tr], y[tr]), (x[va], y[va])


class GrokkingTransformer(nn.Module):
    """Embedding -> n_layers x Block -> RMSNorm -> head, logits at the last position [B, p]."""

    def __init__(self, p: int, d_model: int = 128, n_layers: int = 2, n_heads: int = 4, ffn_hidden: int = 512,
                 seq_len: int = 3):
        super().__init__()
        self.embed = nn.Embedding(p + 1, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, seq_len, ffn_hidden) for _ in range(n_layers))
        self.norm = RMSNorm(d_model)
        self.head = nn.Linear(d_model, p, bias=False)
        cos, sin = rope_cache(seq_len, d_model // n_heads, 10000.0)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def attention_modules(self):
        return [b.attn for b in self.blocks]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for blk in self.blocks:
            h = blk(h, self.rope_cos, self.rope_sin)
        return self.head(self.norm(h[:, -1]))


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy: the share of examples whose highest logit is the label."""
    return float((logits.argmax(-1) == labels).float().mean())


def grokking_optimizer_cfg(optimizer: dict, overrides: dict) -> dict:
    """The optimizer preset with the task's overrides on top (same name and builder)."""
    return {**optimizer, **(overrides or {})}


def train_grokking(task: dict, opt_cfg: dict, seed: int, device: str = "cpu", on_eval=None) -> dict:
    """Train one optimizer on the task; returns steps to the target and the accuracy curves.

    ``task`` holds the phase keys (modulus, operation, ...); ``on_eval(step, metrics)`` is called at
    each evaluation (the phase logs there)."""
    torch.manual_seed(seed)
    p = int(task["modulus"])
    (xt, yt), (xv, yv) = modular_dataset(p, task["operation"], float(task["train_fraction"]), seed)
    xt, yt, xv, yv = (t.to(device) for t in (xt, yt, xv, yv))
    model = GrokkingTransformer(p, int(task["d_model"]), int(task["n_layers"]), int(task["n_heads"]),
                                int(task["ffn_hidden"])).to(device)
    max_steps, every, target = int(task["max_steps"]), int(task["eval_every"]), float(task["target_accuracy"])
    opt, sched = build_optimizer(model, opt_cfg, max_steps)
    bs = int(task["batch_size"]) or len(xt)
    gen = torch.Generator(device=device).manual_seed(seed)
    curve = {"step": [], "train_accuracy": [], "val_accuracy": [], "train_loss": [], "val_loss": []}
    reached = {"train": None, "val": None}
    t0, step = time.perf_counter(), 0
    for step in range(1, max_steps + 1):
        model.train()
        for attn in model.attention_modules():
            attn.reset_max_logit()
        idx = torch.randint(0, len(xt), (bs,), generator=gen, device=device) if bs < len(xt) else slice(None)
        loss = F.cross_entropy(model(xt[idx]), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % every and step != max_steps:
            continue
        model.eval()
        with torch.no_grad():
            lt, lv = model(xt), model(xv)
        m = {"grokking/train_accuracy": accuracy(lt, yt), "grokking/val_accuracy": accuracy(lv, yv),
             "grokking/train_loss": float(F.cross_entropy(lt, yt)), "grokking/val_loss": float(F.cross_entropy(lv, yv)),
             "grokking/step": step, "train/learning_rate": float(opt.param_groups[0]["lr"])}
        if callable(getattr(opt, "metrics", None)):
            m.update(opt.metrics())
        for k in ("step", "train_accuracy", "val_accuracy", "train_loss", "val_loss"):
            curve[k].append(m[f"grokking/{k}"])
        for split in ("train", "val"):
            if reached[split] is None and m[f"grokking/{split}_accuracy"] >= target:
                reached[split] = step
        if on_eval is not None:
            on_eval(step, m)
        if reached["val"] is not None and task.get("stop_at_target", True):
            break
    return {"optimizer": opt_cfg["name"], "steps_to_target_val": reached["val"],
            "steps_to_target_train": reached["train"], "steps_run": step, "target_accuracy": target,
            "final_val_accuracy": curve["val_accuracy"][-1], "final_train_accuracy": curve["train_accuracy"][-1],
            "seconds": time.perf_counter() - t0, "params": sum(q.numel() for q in model.parameters()),
            "curve": curve}
