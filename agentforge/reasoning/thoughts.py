"""Quiet-STaR thoughts (Zelikman et al. 2024, "Quiet-STaR: Language Models Can Teach Themselves to
Think Before Speaking"), on a ``CognateModel``.

For a window of text split into a context c (``context_len`` tokens) and the next ``n_true`` true
tokens t:

1. *Think*: after c, sample ``num_thoughts`` thoughts ``[thinking] z_1..z_L [/endthinking]`` of
   L = ``thought_length`` tokens. Windows taken at several positions of a sequence are stacked in
   the batch, so thoughts at all chosen positions are sampled in parallel (the paper does every
   position at once with a diagonal attention mask; the Cognate model has no mask input, so we sample
   at ``thought_positions`` positions per sequence, each seeing the ``context_len`` tokens before it).
   Sampling uses the KV cache (``thought_cache.py``): the decoder state of each context (in training, the
   one pass over the contexts that the step differentiates, detached), [thinking] as one decode step, the
   state repeated for the K thoughts, then one cached decode step per thought token for all N*K rows at
   once — the same tokens as re-running the model on the growing prefix (a test).
2. *Talk*: teacher-force t after the thought; a mixing head (an MLP on the hidden states with and
   without the thought, starting at w = 0 as in the reference) gives w and the prediction is
   ``w * logits_with + (1 - w) * logits_without``. w is not bounded (the reference's form, kept so the training
   matches it): where w < 0 the thought enters the prediction with a negative weight, so the thought whose own
   post-thought prediction fits the true tokens *worst* gets the highest reward in step 3 (a test). The step logs
   the share of such positions (``rl/mixing_weight_negative_share``) and the gain of the post-thought prediction
   alone, w = 1 (``rl/post_thought_gain``), beside the mixed one (``rl/reward``).
3. *Learn*: the reward of thought j is the log-likelihood of t under the mixed prediction minus its
   mean over the thoughts of the same position (``rewards.py``); REINFORCE on the thought tokens'
   log-probabilities under the distribution they were sampled from (banned tokens masked, divided by
   the temperature), plus the language-model loss, plus ``kl_coef`` x KL to the reference model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from agentforge.models.kv_cache import fill
from agentforge.reasoning import thought_cache


class MixingHead(nn.Module):
    """Quiet-STaR's mixing head: a weight w = MLP([h_with; h_without]) per position.

    As in the reference code (ezelikman/quiet-star, ``modeling_mistral.py``: ``use_complex_talk_head``
    and ``use_weighted_talk_head``, the defaults of its training script) the MLP is Linear(2D, H), ReLU,
    Linear(H, H), ReLU, Linear(H, 1) with no squashing of the output, and its last layer's weight is set
    to zero, so at the start w = 0 at every position: untrained thoughts have no influence on the
    prediction until the head learns to use them. Departure: the last layer has a bias (the reference
    has none), initialised to ``init_weight`` (default 0, i.e. the reference's start), so a fixed
    weight can be set; H defaults to D as in the reference. The mixture is the reference's: it mixes the
    final-norm hidden states and applies the bias-free lm_head, which equals mixing the two logits as ``think``
    does. Second departure, not measured either way: the head reads the Cognate latents before the final norm
    (``CognateOutput.hidden``, what the model returns), the reference's reads the final-norm states, in the
    order [without; with] (the order only permutes the first layer's input columns)."""

    def __init__(self, d_model: int, hidden: int | None = None, init_weight: float = 0.0):
        super().__init__()
        h = hidden or d_model
        self.net = nn.Sequential(nn.Linear(2 * d_model, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.constant_(self.net[-1].bias, init_weight)

    def forward(self, h_with: torch.Tensor, h_without: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([h_with, h_without], -1))


def policy_logits(logits: torch.Tensor, temperature: float = 1.0, banned: list[int] = ()) -> torch.Tensor:
    """The logits of the distribution thoughts are sampled from: banned tokens at -inf, divided by the
    temperature (T <= 0 means greedy sampling; the logits are then left unscaled). REINFORCE must take
    its log-probs from this same distribution, else the gradient is off-policy."""
    logits = logits.float()
    if banned:
        logits = logits.clone()
        logits[..., list(banned)] = float("-inf")
    return logits / temperature if temperature > 0 else logits


@dataclass
class ThoughtBatch:
    """Everything one Quiet-STaR pass computes; N windows, K thoughts each, L thought tokens, n true tokens."""

    windows: torch.Tensor          # [N, C + n] context then true tokens
    thoughts: torch.Tensor         # [N, K, L] sampled thought tokens
    thought_logp: torch.Tensor     # [N, K, L] log-probs of the thought tokens (carry the policy gradient)
    mixed_logits: torch.Tensor     # [N, K, n, V] prediction of the true tokens with thought j
    without_logits: torch.Tensor   # [N, n, V] prediction without any thought
    mix_weight: torch.Tensor       # [N, K, n] the mixing head's w
    base_logits: torch.Tensor      # [N, C + n - 1, V] the model on the window, no thought
    with_inputs: torch.Tensor      # [N*K, C + L + n + 1] context, thought, true tokens (for coherence)
    with_logits: torch.Tensor | None = None     # [N, K, n, V] the post-thought prediction alone (w = 1)
    thought_logits: torch.Tensor | None = None  # [N*K, L, V] the model's raw logits predicting each thought token

    @property
    def true(self) -> torch.Tensor:
        return self.windows[:, -self.without_logits.shape[1]:]

    def true_logp_mixed(self) -> torch.Tensor:
        """[N, K, n] log p(true token | context, thought j), mixed prediction."""
        t = self.true[:, None, :, None].expand(-1, self.mixed_logits.shape[1], -1, 1)
        return F.log_softmax(self.mixed_logits.float(), -1).gather(-1, t).squeeze(-1)

    def true_logp_with(self) -> torch.Tensor:
        """[N, K, n] log p(true token | context, thought j) from the post-thought prediction alone (w = 1)."""
        t = self.true[:, None, :, None].expand(-1, self.with_logits.shape[1], -1, 1)
        return F.log_softmax(self.with_logits.float(), -1).gather(-1, t).squeeze(-1)

    def true_logp_without(self) -> torch.Tensor:
        """[N, n] log p(true token | context), no thought."""
        return F.log_softmax(self.without_logits.float(), -1).gather(-1, self.true[..., None]).squeeze(-1)


def _draw(logits: torch.Tensor, temperature: float, banned, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(next token [M, 1], the policy's logits [M, V]) from the model's last-position logits [M, V]."""
    logits = policy_logits(logits, temperature, banned)
    if temperature > 0:
        nxt = torch.multinomial(F.softmax(logits, -1).cpu(), 1, generator=generator).to(logits.device)
    else:
        nxt = logits.argmax(-1, keepdim=True)
    return nxt, logits


def _sample_from(next_logits, logits: torch.Tensor, length: int, temperature: float, banned, generator,
                 with_logp: bool = False):
    """``length`` tokens from ``logits`` [M, V], each fed back through ``next_logits(token [M])`` except the
    last; returns (tokens [M, length], their log-probs under the policy [M, length] if ``with_logp`` else
    None: the sampling loop spends no log-softmax on log-probs nobody reads)."""
    toks, logps = [], []
    for i in range(length):
        nxt, policy = _draw(logits, temperature, banned, generator)
        toks.append(nxt)
        if with_logp:
            logps.append(F.log_softmax(policy, -1).gather(-1, nxt))
        if i < length - 1:
            logits = next_logits(nxt[:, 0])
    return torch.cat(toks, 1), (torch.cat(logps, 1) if with_logp else None)


@torch.no_grad()
def sample_thoughts(model, prefixes: torch.Tensor, length: int, temperature: float = 1.0,
                    banned: list[int] = (), generator: torch.Generator | None = None, use_cache: bool = True,
                    repeat: int = 1, return_logp: bool = False):
    """[M * repeat, length] tokens sampled after equal-length ``prefixes`` [M, P] (each row ``repeat``
    times, as ``repeat_interleave``), all rows at once; with ``return_logp`` also their log-probs under
    the sampling distribution. The KV cache serves a Cognate model whose prefix + thought fit
    ``max_seq_len`` (``use_cache=False``, or any other model: the model re-run on the growing prefix)."""
    if length < 1:
        empty = prefixes.new_zeros(prefixes.shape[0] * repeat, 0)
        return (empty, empty.float()) if return_logp else empty
    was = model.training
    model.eval()  # sampling must not write the long-term memory
    try:
        if use_cache and thought_cache.cacheable(model, prefixes.shape[1] + length):
            dec, out = thought_cache.prefill(model, prefixes)
            dec = dec.copy(repeat=repeat)
            first, next_logits = out.logits[:, -1].repeat_interleave(repeat, 0), dec.step
        else:
            ids = prefixes.repeat_interleave(repeat, 0)
            state = {"ids": ids}

            def next_logits(tok):
                state["ids"] = torch.cat([state["ids"], tok[:, None]], 1)
                return model(state["ids"][:, -model.config.max_seq_len:]).logits[:, -1]

            first = model(ids[:, -model.config.max_seq_len:]).logits[:, -1]
        toks, logp = _sample_from(next_logits, first, length, temperature, banned, generator, return_logp)
    finally:
        model.train(was)
    return (toks, logp) if return_logp else toks


def think(model, head: MixingHead, windows: torch.Tensor, n_true: int, num_thoughts: int, thought_length: int,
          start_id: int, end_id: int, temperature: float = 1.0, banned: list[int] = (),
          generator: torch.Generator | None = None, thoughts: torch.Tensor | None = None,
          use_cache: bool = True) -> ThoughtBatch:
    """One Quiet-STaR pass over windows [N, C + n_true] (``thoughts`` [N, K, L] may be given instead of sampled).
    The thoughts' log-probs for REINFORCE are taken with gradients from the distribution they were sampled
    from (``policy_logits``).

    With the KV cache (a Cognate model in eval mode, as the phase trains it; ``thought_cache.extendable``) the
    contexts are run once, with gradients, into a decoder (``kv_cache.fill``); a detached copy samples the
    thoughts ([thinking] fed as the first decode step); then one extension of the state (``extend_branches``)
    runs the true tokens (the window's logits without thoughts) and, per thought, [thinking] z [/endthinking]
    true[:-1] (the thoughts' log-probs, the logits and hidden states with the thought). Otherwise (``use_cache=False``,
    the reference): full forward passes over the windows and over context + thought + true tokens per row;
    both give the same tensors and gradients (tests/test_thought_cache.py)."""
    n, width = windows.shape
    c, k = width - n_true, num_thoughts
    if c < 1 or n_true < 1:
        raise ValueError(f"windows of {width} tokens cannot hold a context and n_true={n_true} true tokens")
    length = thought_length if thoughts is None else thoughts.shape[-1]
    ctx_k, true = windows[:, :c].repeat_interleave(k, 0), windows[:, c:].repeat_interleave(k, 0)
    start, end = ctx_k.new_full((n * k, 1), start_id), ctx_k.new_full((n * k, 1), end_id)
    cached = use_cache and thought_cache.extendable(model, width + length + 1)
    if cached:
        dec = model.kv_decoder(n)
        ctx = fill(dec, windows[:, :c])
    else:
        base = model(windows[:, :-1])
        base_logits, base_h = base.logits, base.hidden
    if thoughts is not None:
        flat = thoughts.reshape(n * k, -1)
    elif cached and length > 0:
        flat = sample_after(dec, start[:n, 0], k, length, temperature, banned, generator)
    else:
        prefixes = torch.cat([windows[:, :c], start[:n]], 1)  # one per window, repeated for its k thoughts
        flat = sample_thoughts(model, prefixes, length, temperature, banned, generator, use_cache, repeat=k)
    with_inputs = torch.cat([ctx_k, start, flat, end, true], 1)
    if cached:  # one extension: the true tokens (once per window), [thinking] z [/endthinking] true[:-1] (per thought)
        rest, out = dec.extend_branches((windows[:, c:-1], 1), (with_inputs[:, c:-1], k))
        base_logits, base_h = torch.cat([ctx.logits, rest.logits], 1), torch.cat([ctx.hidden, rest.hidden], 1)
        thought_out, with_logits, with_h = out.logits[:, :length], out.logits[:, length + 1:], out.hidden[:, length + 1:]
    else:
        out = model(with_inputs[:, :-1])  # position c is [thinking]; with_logits from [/endthinking] on
        thought_out, with_logits, with_h = (out.logits[:, c: c + length], out.logits[:, c + length + 1:],
                                            out.hidden[:, c + length + 1:])
    logp = F.log_softmax(policy_logits(thought_out, temperature, banned), -1)
    thought_logp = logp.gather(-1, flat[..., None]).squeeze(-1)
    without_logits, without_h = base_logits[:, c - 1:], base_h[:, c - 1:]
    rep_logits = without_logits.repeat_interleave(k, 0)
    w = head(with_h, without_h.repeat_interleave(k, 0))
    mixed = w * with_logits + (1 - w) * rep_logits
    return ThoughtBatch(windows, flat.view(n, k, length), thought_logp.view(n, k, length),
                        mixed.view(n, k, n_true, -1), without_logits, w.view(n, k, n_true), base_logits, with_inputs,
                        with_logits.view(n, k, n_true, -1), thought_out)


def sample_after(dec, start: torch.Tensor, k: int, length: int, temperature: float, banned, generator):
    """[N * k, length] thoughts sampled from a detached copy of a decoder holding N contexts: [thinking] (``start``
    [N]) fed as its first decode step, the state then repeated for the k thoughts (``sample_thoughts``' draws).
    Under ``torch.inference_mode`` (no autograd bookkeeping at all; the tokens are cloned out of it)."""
    with torch.inference_mode():
        dec = dec.copy(detach=True)
        first = dec.step(start)
        dec = dec.copy(repeat=k)
        toks = _sample_from(dec.step, first.repeat_interleave(k, 0), length, temperature, banned, generator)[0]
    return toks.clone()


def reinforce_loss(thought_logp: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    """REINFORCE (Williams 1992) on the thoughts: -E[A_j * sum_l log p(z_jl)], A held constant."""
    return -(advantage.detach() * thought_logp.sum(-1)).mean()


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(policy || reference) of the next-token distributions (raw logits [..., V]): on the
    window without thoughts, the leash that keeps the policy near the baked model (``rl_step``); on the thought
    positions, the drift of the thought policy, which no leash holds (``rl/kl_divergence_thoughts``, logged only)."""
    log_p = F.log_softmax(logits.float(), -1)
    log_q = F.log_softmax(ref_logits.float(), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


@torch.no_grad()
def generate_with_thoughts(model, head: MixingHead | None, ids: torch.Tensor, max_new_tokens: int, thought_length: int,
                           start_id: int, end_id: int, context_len: int = 64, temperature: float = 1.0,
                           banned: list[int] = (), generator: torch.Generator | None = None,
                           use_cache: bool = True) -> torch.Tensor:
    """Greedy generation where every token is predicted after one sampled thought (mixed by ``head``);
    ``head=None`` generates without thoughts, on the same truncated context, for a like-for-like cost.

    With the KV cache (a Cognate model, context + thought inside ``max_seq_len``), each token costs one
    forward pass over context + [thinking] (which also gives the prediction without the thought), then
    ``thought_length`` + 1 cached decode steps (the thought tokens, [/endthinking]); uncached, it costs
    ``thought_length`` + 2 forward passes over the growing sequence. Both give the same tokens (a test)."""
    was = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            ctx = ids[:, -context_len:]
            if head is None:
                logits = model(ctx).logits[:, -1]
            else:
                with_logits, h_with, base_logits, h_base = _with_and_without_thought(
                    model, ctx, thought_length, start_id, end_id, temperature, banned, generator, use_cache)
                w = head(h_with, h_base)
                logits = w * with_logits + (1 - w) * base_logits
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
    finally:
        model.train(was)
    return ids


def _with_and_without_thought(model, ctx: torch.Tensor, thought_length: int, start_id: int, end_id: int,
                              temperature: float, banned, generator, use_cache: bool):
    """(logits and hidden state after ctx + [thinking] z [/endthinking], logits and hidden state after ctx)
    at the last position, for one thought z sampled after ctx + [thinking]; KV-cached where it serves."""
    start = ctx.new_full((ctx.shape[0], 1), start_id)
    end = ctx.new_full((ctx.shape[0], 1), end_id)
    if use_cache and thought_length > 0 and thought_cache.cacheable(model, ctx.shape[1] + thought_length + 2):
        dec, pre = thought_cache.prefill(model, torch.cat([ctx, start], 1))
        z, _ = _sample_from(dec.step, pre.logits[:, -1], thought_length, temperature, banned, generator)
        for tok in (z[:, -1], end[:, 0]):  # the last thought token, then [/endthinking]
            with_logits = dec.step(tok)
        return with_logits, dec.hidden, pre.logits[:, -2], pre.hidden[:, -2]
    base = model(ctx)
    z = sample_thoughts(model, torch.cat([ctx, start], 1), thought_length, temperature, banned, generator,
                        use_cache=False)
    out = model(torch.cat([ctx, start, z, end], 1))
    return out.logits[:, -1], out.hidden[:, -1], base.logits[:, -1], base.hidden[:, -1]
