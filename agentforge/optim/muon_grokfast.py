"""Muon-Grokfast: Muon on the hidden matrices, AdamW on the rest, a Grokfast filter on every gradient,
and QK-clip on the attention heads after each step. One ``torch.optim.Optimizer`` so that one LambdaLR
schedules every group and one ``state_dict`` saves (and resumes) all of its state.

* Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks"; lr scaling
  "match_rms_adamw" from Liu et al. 2025, "Muon is Scalable for LLM Training"): momentum, Nesterov,
  quintic Newton-Schulz orthogonalization: ``torch.optim.Muon``'s update, by default through ``GroupedMuon``
  (``grouped_muon.py``: the same-shape matrices in one batched Newton-Schulz; the same state and checkpoints),
  or ``torch.optim.Muon`` itself (``muon_impl="torch"``).
* AdamW (Loshchilov & Hutter 2019) via ``torch.optim.AdamW`` for embeddings, output heads, norms, biases.
* Grokfast (Lee et al. 2024), see ``grokfast.py``; QK-clip (Kimi K2, 2025), see ``qk_clip.py``.

Weight decay: ``weight_decay_mode="decoupled"`` (default) lets Muon and AdamW shrink the weights
themselves, ``p <- p - lr*wd*p`` (Loshchilov & Hutter 2019); ``"coupled"`` is L2 regularisation as in
``torch.optim.Adam(weight_decay=wd)``: ``g <- g + wd*p`` is added to the (filtered, clipped) gradient
inside ``step`` and then goes through the optimizer's normalisation. The Grokfast reference
(github.com/ironjr/grokfast, main.py) trains with ``torch.optim.Adam`` and coupled wd 0.005 on every parameter.
Which parameters decay is set by the groups the caller passes (each group's ``weight_decay``; the builders in
``agentforge.optim`` choose them by ``optimizer.weight_decay_scope``: ``matrices`` or ``all``).

Order of one update (Grokfast, then clipping, then L2, then the optimizer):
1. ``filter_gradients_()`` low-pass filters the *raw* gradients and adds lambda * slow part. Callers that
   clip (Lightning's ``gradient_clip_val``, a hand loop's ``clip_grad_norm_``) call it first —
   ``LMModule.on_before_optimizer_step`` does, which Lightning runs before it clips — so the filter state
   sees raw gradients and the gradient the optimizer uses respects the clip norm (with decoupled decay: coupled
   L2, step 3, comes after the clip, so it can exceed it by up to wd*|p|). ``step()`` calls it
   itself when nobody did (no clipping), and never twice for one step.
2. the caller clips (optional);  3. coupled L2, if chosen;  4. Muon / AdamW step;  5. QK-clip.

How the pieces share state: the inner Muon and AdamW are built on the *same* param-group dicts as this
optimizer (so the scheduler's lr reaches them) and their ``state`` is rebound to this optimizer's
``state`` (params are disjoint), so momentum, Adam moments and the Grokfast buffers all live in one
per-parameter dict of tensors that ``torch.load(weights_only=True)`` can read back.
"""
from __future__ import annotations

import math

import torch

from agentforge.optim.grokfast import count_dominated, ema_filter_, ma_filter_
from agentforge.optim.grouped_muon import GroupedMuon
from agentforge.optim.qk_clip import qk_clip_

MUON_IMPLS = {"grouped": GroupedMuon, "torch": torch.optim.Muon}


class MuonGrokfast(torch.optim.Optimizer):
    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], *, lr: float, adamw_lr: float | None = None,
                 weight_decay: float = 0.0, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 adjust_lr_fn: str | None = "match_rms_adamw", betas=(0.9, 0.95), eps: float = 1e-8,
                 grokfast: str = "ema", grokfast_alpha: float = 0.98, grokfast_lambda: float = 0.0,
                 grokfast_window: int = 100, qk_clip: float | None = None, attention_modules=(),
                 weight_decay_mode: str = "decoupled", muon_impl: str = "grouped"):
        if grokfast not in ("ema", "ma", "none"):
            raise ValueError(f"optimizer.grokfast must be ema, ma or none, got {grokfast!r}")
        if weight_decay_mode not in ("decoupled", "coupled"):
            raise ValueError(f"optimizer.weight_decay_mode must be decoupled or coupled, got {weight_decay_mode!r}")
        if muon_impl not in MUON_IMPLS:
            raise ValueError(f"optimizer.muon_impl must be one of {sorted(MUON_IMPLS)}, got {muon_impl!r}")
        coupled = weight_decay_mode == "coupled"
        for kind, gs in (("muon", muon_groups), ("adamw", adamw_groups)):
            for g in gs:
                wd = float(g.get("weight_decay", weight_decay))
                g.update(kind=kind, l2=wd if coupled else 0.0, weight_decay=0.0 if coupled else wd)
        self._muon = (MUON_IMPLS[muon_impl](muon_groups, lr=lr, momentum=momentum,
                                        nesterov=nesterov, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
                      if muon_groups else None)
        self._adamw = (torch.optim.AdamW(adamw_groups, lr=lr if adamw_lr is None else adamw_lr, betas=tuple(betas),
                                         eps=eps, foreach=True)
                       if adamw_groups else None)
        groups = (self._muon.param_groups if self._muon else []) + (self._adamw.param_groups if self._adamw else [])
        super().__init__(groups, {})
        self.grokfast, self.grokfast_alpha = grokfast, float(grokfast_alpha)
        self.grokfast_lambda, self.grokfast_window = float(grokfast_lambda), int(grokfast_window)
        self.qk_clip = float(qk_clip) if qk_clip else None
        self.attention_modules = list(attention_modules)
        self.weight_decay_mode = weight_decay_mode
        self._last: dict[str, float | torch.Tensor] = {}  # tensors stay on the device until metrics()
        self._filter_stats: dict[str, torch.Tensor] = {}
        self._filtered = False   # filter_gradients_ already ran for the coming step
        self._bind()

    def _bind(self) -> None:
        """Point the inner optimizers at this optimizer's groups and state (again after a load)."""
        for inner, kind in ((self._muon, "muon"), (self._adamw, "adamw")):
            if inner is not None:
                inner.param_groups = [g for g in self.param_groups if g["kind"] == kind]
                inner.state = self.state

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self._bind()

    @torch.no_grad()
    def filter_gradients_(self) -> None:
        """Apply the Grokfast filter to the current (raw) gradients, in place, once per step.

        Records what it did for ``metrics()``: the norm of the raw gradient, of the slow component
        (EMA, or the window mean for MA), their ratio lambda*|slow|/|raw|, and how many gradient entries
        the amplified slow part dominates (|lambda*slow| > |raw|), the seed's ``slow_gradients_filtered``."""
        if self._filtered:
            return
        self._filtered = True
        self._filter_stats = {}
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        lamb = self.grokfast_lambda
        if not params or lamb <= 0 or self.grokfast == "none":
            return
        self._init_adam_state()
        states = [self.state[p] for p in params]
        raw_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))
        if self.grokfast == "ema":
            ema_filter_(params, states, self.grokfast_alpha, lamb)
            slow = [st["grokfast_ema"] for st in states]
        else:
            slow = [st["grokfast_ma"].mean(0) for st in states] if ma_filter_(params, states, self.grokfast_window, lamb) else []
        self._filter_stats = {"optimizer/grokfast_raw_grad_norm": raw_norm}
        if not slow:   # MA window still filling: the gradients pass unchanged
            return
        slow_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(slow)))
        dominated = count_dominated([p.grad for p in params], slow, lamb)
        self._filter_stats.update({"optimizer/grokfast_slow_norm": slow_norm,
                                   "optimizer/grokfast_slow_ratio": lamb * slow_norm / raw_norm.clamp(min=1e-30),
                                   "optimizer/slow_gradients_filtered": dominated})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._init_adam_state()
        self.filter_gradients_()
        for g in self.param_groups:   # coupled L2 (torch.optim.Adam's weight_decay): g <- g + wd * p
            ps = [p for p in g["params"] if p.grad is not None]
            if g.get("l2", 0.0) and ps:
                torch._foreach_add_([p.grad for p in ps], ps, alpha=g["l2"])
        used_lr = {f"optimizer/{k}_lr": self.lr_of(k) for k in ("muon", "adamw") if self.lr_of(k) is not None}
        if self._muon is not None:
            self._muon.step()
        if self._adamw is not None:
            self._adamw.step()
        self._filtered = False
        clipped, largest = (qk_clip_(self.attention_modules, self.qk_clip)
                            if self.qk_clip and self.attention_modules else (0, float("nan")))
        self._last = {**self._filter_stats, "optimizer/qk_clipped_heads": float(clipped), **used_lr}
        if self.attention_modules and math.isfinite(largest):
            self._last["optimizer/max_attention_logit"] = largest
        return loss

    def _init_adam_state(self) -> None:
        """Adam creates its moments only for a param whose state is empty, so let it do so before the
        Grokfast buffers land in the same per-parameter dict."""
        if self._adamw is None:
            return
        for g in self._adamw.param_groups:
            if any(p.grad is not None and not self.state[p] for p in g["params"]):
                self._adamw._init_group(g, [], [], [], [], [], [])

    def lr_of(self, kind: str) -> float | None:
        return next((float(g["lr"]) for g in self.param_groups if g["kind"] == kind), None)

    def metrics(self) -> dict[str, float]:
        """What the last step did, under the seed's keys (LMModule logs this after every step); the
        learning rates are the ones that step used (the scheduler may have moved on since)."""
        out = {"optimizer/grokfast_lambda": self.grokfast_lambda if self.grokfast != "none" else 0.0,
               "optimizer/grokfast_alpha": self.grokfast_alpha}
        for kind in ("muon", "adamw"):
            lr = self.lr_of(kind)
            if lr is not None:
                out[f"optimizer/{kind}_lr"] = lr
        if self.qk_clip:
            out["optimizer/qk_clip_tau"] = self.qk_clip
        out.update({k: float(v) for k, v in self._last.items()})
        return out
