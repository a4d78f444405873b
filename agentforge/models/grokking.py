"""The grokking task and its two small transformers (Power et al. 2022, "Grokking: Generalization Beyond
Overfitting on Small Algorithmic Datasets"; the setting Grokfast, Lee et al. 2024, arXiv:2405.20233,
benchmarks on).

Every equation ``a ∘ b = c (mod p)`` is a pair ``(a, b)`` with label c; a fixed fraction of all pairs is
the training set, the rest the validation set. For a commutative operation (add, mul) the split is made
over *unordered* pairs, so ``(a, b)`` and ``(b, a)`` always land on the same side: otherwise about half
of the validation pairs have their swap in training and a model that only learned the symmetry sits at
a ~50 % "memorisation" floor, which is not generalisation.

Two models read the pair and predict c at the last position:
* ``ReferenceDecoder`` — the Grokfast reference code's ``Decoder`` (github.com/ironjr/grokfast, main.py:
  input ``[a, op, b, =]``, learned positions, LayerNorm, causal multi-head attention with biases, GELU
  MLP, 2 layers, width 128, 4 heads, vocabulary p + 2), re-written with separate q/k/v projections so
  Muon and QK-clip can act on them, initialised as ``nn.MultiheadAttention`` is (Xavier-uniform over the
  stacked q/k/v matrix, zero biases). Its block keeps the reference's quirk: the attention residual is
  added to the *normalised* input (``x = ln_1(x); x = x + attn(x)``).
* ``GrokkingTransformer`` — the project's own ``Block`` (RMSNorm, RoPE, SwiGLU), input ``[a, b, =]``.

``train_grokking`` is the whole experiment for one optimizer config (the phase and the benchmark both
call it), a plain loop with no files or loggers; ``resolve_task`` turns the phase config into one task.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from agentforge.models.layers import Block, RMSNorm, rope_cache, update_max_logit
from agentforge.optim import build_optimizer

OPERATIONS = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    "div": lambda a, b, p: (a * pow(b, p - 2, p)) % p,   # b^-1 by Fermat; b = 0 is left out
}
COMMUTATIVE = {"add", "mul"}
TASK_KEYS = ("modulus", "operation", "train_fraction", "model", "d_model", "n_layers", "n_heads", "ffn_hidden",
             "batch_size", "max_steps", "eval_every")


def modular_dataset(p: int, operation: str, train_fraction: float, seed: int):
    """((x_train [N,2], y_train [N]), (x_val, y_val)): rows (a, b), label a∘b mod p, split once with ``seed``.

    The split shuffles *equivalence classes* — ``{a, b}`` for a commutative operation, ``(a, b)`` otherwise —
    and fills the training set class by class up to ``round(train_fraction * rows)`` rows."""
    if operation not in OPERATIONS:
        raise ValueError(f"operation {operation!r} not in {sorted(OPERATIONS)}")
    rows = [(a, b) for a in range(p) for b in range(1 if operation == "div" else 0, p)]

    def key(a: int, b: int) -> tuple[int, int]:
        return (min(a, b), max(a, b)) if operation in COMMUTATIVE else (a, b)

    keys = sorted({key(a, b) for a, b in rows})
    order = torch.randperm(len(keys), generator=torch.Generator().manual_seed(seed)).tolist()
    n_train, taken, train_keys = round(train_fraction * len(rows)), 0, set()
    for i in order:
        k = keys[i]
        size = 1 if k[0] == k[1] or operation not in COMMUTATIVE else 2
        if taken + size > n_train:
            continue
        train_keys.add(k)
        taken += size
    is_train = [key(a, b) in train_keys for a, b in rows]
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed + 1))
    x = torch.tensor(rows)[perm]
    y = torch.tensor([OPERATIONS[operation](a, b, p) for a, b in rows])[perm]
    mask = torch.tensor(is_train)[perm]
    return (x[mask], y[mask]), (x[~mask], y[~mask])


class GrokkingTransformer(nn.Module):
    """The project's blocks: embedding of [a, b, =] -> n_layers x Block -> RMSNorm -> head at the last position."""

    def __init__(self, p: int, d_model: int = 128, n_layers: int = 2, n_heads: int = 4, ffn_hidden: int = 512):
        super().__init__()
        self.p = p
        self.embed = nn.Embedding(p + 1, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, 3, ffn_hidden) for _ in range(n_layers))
        self.norm = RMSNorm(d_model)
        self.head = nn.Linear(d_model, p, bias=False)
        cos, sin = rope_cache(3, d_model // n_heads, 10000.0)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def attention_modules(self):
        return [b.attn for b in self.blocks]

    def forward(self, ab: torch.Tensor) -> torch.Tensor:
        x = torch.cat([ab, torch.full_like(ab[:, :1], self.p)], dim=1)
        h = self.embed(x)
        for blk in self.blocks:
            h = blk(h, self.rope_cos, self.rope_sin)
        return self.head(self.norm(h[:, -1]))


class ReferenceAttention(nn.Module):
    """Causal multi-head attention with biases (``nn.MultiheadAttention``'s math and init), recording each
    head's largest pre-softmax logit on training steps for QK-clip (``qk_clip.py``)."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d_model, d_model) for _ in range(3))
        self.o_proj = nn.Linear(d_model, d_model)
        bound = math.sqrt(6.0 / (d_model + 3 * d_model))   # xavier_uniform_ of the stacked [3d, d] in_proj
        for lin in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(lin.bias)
        nn.init.zeros_(self.o_proj.bias)
        self.register_buffer("max_logit", torch.zeros(n_heads), persistent=False)
        self.record_max_logit = True   # off when the optimizer does not clip (optim.record_max_logits)

    def reset_max_logit(self) -> None:
        self.max_logit.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        if self.record_max_logit and self.training and torch.is_grad_enabled():
            update_max_logit(self, q, k, t)   # a window of t: plain causal attention
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, d))


class ReferenceBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, ffn_hidden: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = ReferenceAttention(d_model, n_heads)
        self.mlp = nn.Sequential(nn.Linear(d_model, ffn_hidden), nn.GELU(), nn.Linear(ffn_hidden, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_1(x)                 # as in the reference: the residual stream is the normalised x
        x = x + self.attn(x)
        return x + self.mlp(self.ln_2(x))


class ReferenceDecoder(nn.Module):
    """The Grokfast reference decoder over [a, op, b, =] (op = p + 1, = is p), logits over p + 2 tokens."""

    def __init__(self, p: int, d_model: int = 128, n_layers: int = 2, n_heads: int = 4, ffn_hidden: int = 512):
        super().__init__()
        self.p = p
        self.token_embeddings = nn.Embedding(p + 2, d_model)
        self.position_embeddings = nn.Embedding(4, d_model)
        self.layers = nn.ModuleList(ReferenceBlock(d_model, n_heads, ffn_hidden) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, p + 2, bias=False)

    def attention_modules(self):
        return [b.attn for b in self.layers]

    def forward(self, ab: torch.Tensor) -> torch.Tensor:
        a, b = ab[:, :1], ab[:, 1:2]
        x = torch.cat([a, torch.full_like(a, self.p + 1), b, torch.full_like(a, self.p)], dim=1)
        h = self.token_embeddings(x) + self.position_embeddings.weight[None, :4]
        for layer in self.layers:
            h = layer(h)
        return self.head(self.ln_f(h[:, -1]))


MODELS = {"reference": ReferenceDecoder, "project": GrokkingTransformer}


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy: the share of examples whose highest logit is the label."""
    return float((logits.argmax(-1) == labels).float().mean())


def resolve_task(phase: dict) -> dict:
    """The task ``phase['task']`` names from ``phase['tasks']``, with every top-level key of TASK_KEYS
    that is not null laid over it (``phase.max_steps=500`` changes whichever task runs)."""
    tasks, name = phase.get("tasks") or {}, phase.get("task")
    if name not in tasks:
        raise KeyError(f"phase.task must be one of {sorted(tasks)}, got {name!r}")
    task = {**tasks[name], "task": name}
    task.update({k: phase[k] for k in TASK_KEYS if phase.get(k) is not None})
    for k in ("target_accuracy", "stop_at_target"):
        task[k] = phase.get(k, task.get(k))
    return task


def task_optimizer_cfg(task: dict, preset: dict, use_task_settings: bool = True) -> dict:
    """The optimizer preset with the task's settings for that optimizer (``task.optimizers[name]``) on top."""
    if not use_task_settings:
        return dict(preset)
    return {**preset, **((task.get("optimizers") or {}).get(preset["name"]) or {})}


def _batches(n: int, batch_size: int, gen: torch.Generator):
    """Endless epoch-shuffled minibatch index tensors (the last batch of an epoch may be smaller), as the
    reference loops over ``torch.split(train[:, randperm], batch_size)``; batch_size 0 = full batch."""
    while True:
        if batch_size <= 0 or batch_size >= n:
            yield None
            continue
        yield from torch.randperm(n, generator=gen).split(batch_size)


def train_grokking(task: dict, opt_cfg: dict, seed: int, device: str = "cpu", on_eval=None,
                   time_limit_s: float | None = None) -> dict:
    """Train one optimizer on the task; returns steps to the target, the accuracy curves and steps/s.

    ``task`` holds the task keys (modulus, operation, model, ...); ``on_eval(step, metrics)`` is called at
    each evaluation (the phase logs there). Validation accuracy is checked every ``eval_every`` steps, so
    a step count is exact to that resolution. ``time_limit_s`` ends the run at the first evaluation past
    it (``stopped_by_time``); a run that has not reached the target then says only "more than steps_run"."""
    torch.manual_seed(seed)
    p = int(task["modulus"])
    (xt, yt), (xv, yv) = modular_dataset(p, task["operation"], float(task["train_fraction"]), seed)
    xt, yt, xv, yv = (t.to(device) for t in (xt, yt, xv, yv))
    model = MODELS[task.get("model", "project")](p, int(task["d_model"]), int(task["n_layers"]), int(task["n_heads"]),
                                                  int(task["ffn_hidden"])).to(device)
    max_steps, every, target = int(task["max_steps"]), int(task["eval_every"]), float(task["target_accuracy"])
    opt, sched = build_optimizer(model, opt_cfg, max_steps)
    batches = _batches(len(xt), int(task["batch_size"]), torch.Generator().manual_seed(seed))
    curve = {"step": [], "train_accuracy": [], "val_accuracy": [], "train_loss": [], "val_loss": []}
    reached = {"train": None, "val": None}
    t0, step, stopped_by_time = time.perf_counter(), 0, False
    for step in range(1, max_steps + 1):
        model.train()
        for attn in model.attention_modules():
            attn.reset_max_logit()
        idx = next(batches)
        xb, yb = (xt, yt) if idx is None else (xt[idx.to(device)], yt[idx.to(device)])
        loss = F.cross_entropy(model(xb), yb)
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
        if time_limit_s is not None and time.perf_counter() - t0 > time_limit_s:
            stopped_by_time = True
            break
    seconds = time.perf_counter() - t0
    return {"optimizer": opt_cfg["name"], "steps_to_target_val": reached["val"],
            "steps_to_target_train": reached["train"], "steps_run": step, "target_accuracy": target,
            "final_val_accuracy": curve["val_accuracy"][-1], "final_train_accuracy": curve["train_accuracy"][-1],
            "stopped_by_time": stopped_by_time, "seconds": seconds, "steps_per_second": step / max(seconds, 1e-9),
            "params": sum(q.numel() for q in model.parameters()), "n_train": len(xt), "n_val": len(xv), "curve": curve}
