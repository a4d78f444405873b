"""Muon-Grokfast: Muon on the hidden matrices, AdamW on the rest, a Grokfast filter on every gradient,
and QK-clip on the attention heads after each step. One ``torch.optim.Optimizer`` so that one LambdaLR
schedules every group and one ``state_dict`` saves (and resumes) all of its state.

* Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks"; lr scaling
  "match_rms_adamw" from Liu et al. 2025, "Muon is Scalable for LLM Training"): momentum, Nesterov,
  quintic Newton-Schulz orthogonalization. We use ``torch.optim.Muon`` itself, not a re-derivation.
* AdamW (Loshchilov & Hutter 2019) via ``torch.optim.AdamW`` for embeddings, output heads, norms, biases.
* Grokfast (Lee et al. 2024), see ``grokfast.py``; QK-clip (Kimi K2, 2025), see ``qk_clip.py``.

How the pieces share state: the inner Muon and AdamW are built on the *same* param-group dicts as this
optimizer (so the scheduler's lr reaches them) and their ``state`` is rebound to this optimizer's
``state`` (params are disjoint), so momentum, Adam moments and the Grokfast buffers all live in one
per-parameter dict of tensors that ``torch.load(weights_only=True)`` can read back.
"""
from __future__ import annotations

import math

import torch

from agentforge.optim.grokfast import ema_filter_, ma_filter_
from agentforge.optim.qk_clip import qk_clip_


class MuonGrokfast(torch.optim.Optimizer):
    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], *, lr: float, adamw_lr: float | None = None,
                 weight_decay: float = 0.0, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 adjust_lr_fn: str | None = "match_rms_adamw", betas=(0.9, 0.95), eps: float = 1e-8,
                 grokfast: str = "ema", grokfast_alpha: float = 0.98, grokfast_lambda: float = 0.0,
                 grokfast_window: int = 100, qk_clip: float | None = None, attention_modules=()):
        if grokfast not in ("ema", "ma", "none"):
            raise ValueError(f"optimizer.grokfast must be ema, ma or none, got {grokfast!r}")
        for g in muon_groups:
            g["kind"] = "muon"
        for g in adamw_groups:
            g["kind"] = "adamw"
        self._muon = (torch.optim.Muon(muon_groups, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                       nesterov=nesterov, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
                      if muon_groups else None)
        self._adamw = (torch.optim.AdamW(adamw_groups, lr=lr if adamw_lr is None else adamw_lr, betas=tuple(betas),
                                         eps=eps, weight_decay=weight_decay, foreach=True)
                       if adamw_groups else None)
        groups = (self._muon.param_groups if self._muon else []) + (self._adamw.param_groups if self._adamw else [])
        super().__init__(groups, {})
        self.grokfast, self.grokfast_alpha = grokfast, float(grokfast_alpha)
        self.grokfast_lambda, self.grokfast_window = float(grokfast_lambda), int(grokfast_window)
        self.qk_clip = float(qk_clip) if qk_clip else None
        self.attention_modules = list(attention_modules)
        self._last: dict[str, float] = {}
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
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        self._init_adam_state()
        filtered, slow_ratio = 0, 0.0
        if params and self.grokfast_lambda > 0 and self.grokfast != "none":
            states = [self.state[p] for p in params]
            raw_norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params]))))
            if self.grokfast == "ema":
                ema_filter_(params, states, self.grokfast_alpha, self.grokfast_lambda)
                filtered = sum(p.grad.numel() for p in params)
                slow = [st["grokfast_ema"] for st in states]
            else:
                filtered = ma_filter_(params, states, self.grokfast_window, self.grokfast_lambda)
                slow = [st["grokfast_ma"].mean(0) for st in states] if filtered else []
            if slow:
                slow_norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(slow))))
                slow_ratio = self.grokfast_lambda * slow_norm / max(raw_norm, 1e-12)
        used_lr = {f"optimizer/{k}_lr": self.lr_of(k) for k in ("muon", "adamw") if self.lr_of(k) is not None}
        if self._muon is not None:
            self._muon.step()
        if self._adamw is not None:
            self._adamw.step()
        clipped, largest = (qk_clip_(self.attention_modules, self.qk_clip)
                            if self.qk_clip and self.attention_modules else (0, float("nan")))
        self._last = {"optimizer/slow_gradients_filtered": float(filtered),
                      "optimizer/grokfast_slow_ratio": slow_ratio,
                      "optimizer/qk_clipped_heads": float(clipped), **used_lr}
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
        out.update(self._last)
        return out
