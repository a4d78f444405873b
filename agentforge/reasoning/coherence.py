"""Thought coherence, from measurable quantities (no learned scorer), each in [0, 1]:

* semantic   = (1 + cos(e_thought, e_context)) / 2: cosine between the mean input embedding of the
               thought's tokens and that of the context it was sampled after (never the true tokens
               that follow) — is the thought about the same things as the text?
* syntactic  = exp(mean log p_ref(z_l | c, z_<l)): per-token geometric-mean likelihood of the thought
               under the frozen reference (baked) model — does the thought read as language?
* predictive = sigmoid(per-token log-likelihood gain of the true tokens with the thought over without)
               — does it help predict what comes next? (0.5 = no effect)
* coherence  = 0.4 semantic + 0.3 syntactic + 0.3 predictive (the seed's weights)
* prior      = (0.4 semantic + 0.3 syntactic) / 0.7: the part computable before the future is seen,
               the quality the anti-theater correlation uses (predictive is the likelihood gain on the
               true tokens, so correlating it with accuracy on those tokens would be circular)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

WEIGHTS = {"semantic": 0.4, "syntactic": 0.3, "predictive": 0.3}


def semantic(embed: torch.Tensor, thoughts: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """[N, K] from the embedding table [V, D], thoughts [N, K, L], contexts [N, C]."""
    e_t = embed[thoughts].mean(-2)                # [N, K, D]
    e_w = embed[context].mean(-2)[:, None, :]     # [N, 1, D]
    return (1 + F.cosine_similarity(e_t, e_w, dim=-1)) / 2


def syntactic(ref_logits: torch.Tensor, thoughts: torch.Tensor, context_len: int) -> torch.Tensor:
    """[N, K] from the reference model's logits [N*K, T >= C + L, V] over the ``with_inputs`` rows."""
    n, k, length = thoughts.shape
    logp = F.log_softmax(ref_logits[:, context_len: context_len + length].float(), -1)
    tok = logp.gather(-1, thoughts.reshape(n * k, length, 1)).squeeze(-1)
    return tok.mean(-1).exp().view(n, k)


def predictive(gain: torch.Tensor) -> torch.Tensor:
    """[N, K] sigmoid of the per-token likelihood gain (``rewards.likelihood_gain``)."""
    return torch.sigmoid(gain)


def combine(scores: dict[str, torch.Tensor], weights: dict[str, float] = WEIGHTS) -> torch.Tensor:
    return sum(weights[k] * scores[k] for k in weights)


def prior(scores: dict[str, torch.Tensor]) -> torch.Tensor:
    """Semantic and syntactic coherence only, with the seed's weights renormalised to sum to 1."""
    weights = {k: WEIGHTS[k] for k in ("semantic", "syntactic")}
    return combine(scores, weights) / sum(weights.values())
