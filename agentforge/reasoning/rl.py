"""One Quiet-STaR training step and its held-out evaluation (see ``thoughts.py`` for the algorithm).

loss = REINFORCE(thought tokens; reward = gain over the mean thought)
     + LM loss (NLL of the true tokens under the mixed prediction, as in Quiet-STaR, plus the plain
       next-token loss of the window without thoughts, so the model keeps its language modelling)
     + kl_coef * KL(policy || reference) on the window without thoughts

The leash (``kl_coef``) covers only the window without thoughts: the distribution the thought tokens are sampled
from, which REINFORCE trains, has none. Its drift from the reference is logged, not penalised
(``thought_figures``: ``rl/kl_divergence_thoughts``, KL(policy || reference) per thought position, from the logits
the step already has); adding it to the loss would change the training and the default run's numbers.

Figures (``rl_step``; W&B keys in ``training/rl_module.py``): ``reward`` (``rl/reward``) is the mean per-token
log-likelihood gain of the true tokens under the *mixed* prediction over no thought, 0 while w = 0; it is not the
REINFORCE reward (each thought's summed log-likelihood minus its siblings' mean, ``rewards.advantages``), and with
w < 0 it can rise while thoughts that predict worst are rewarded. ``lm_loss`` = ``mixed_nll`` (the true tokens' NLL
under the mixed prediction) + ``base_ce`` (the window's next-token CE without thoughts), so it is about twice a
plain LM loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from agentforge.errors import ConfigError
from agentforge.models.kv_cache import fill
from agentforge.reasoning import anti_theater, coherence, rewards, thought_cache
from agentforge.reasoning.thoughts import kl_to_reference, reinforce_loss, think


@dataclass
class ThoughtConfig:
    num_thoughts: int = 4
    thought_length: int = 12
    n_true: int = 4
    context_len: int = 32
    temperature: float = 1.0
    kl_coef: float = 0.1
    use_cache: bool = True       # the KV-cached step (same tensors and gradients; ``thoughts.think``)


def sample_windows(stream: torch.Tensor, n_seqs: int, seq_len: int, positions: int, context_len: int, n_true: int,
                   generator: torch.Generator) -> torch.Tensor:
    """[n_seqs * positions, context_len + n_true]: ``positions`` thought positions in each of ``n_seqs`` random
    sequences of ``seq_len`` tokens of the (training) token stream, their starts drawn with replacement, so
    sequences may overlap. The evaluation's windows are ``document_windows``."""
    if seq_len < context_len + n_true or len(stream) <= seq_len:
        raise ValueError(f"seq_len={seq_len} must hold context_len + n_true = {context_len + n_true} and fit the stream "
                         f"of {len(stream)} tokens")
    starts = torch.randint(0, len(stream) - seq_len, (n_seqs,), generator=generator)
    lo, hi = context_len, seq_len - n_true  # a thought at p sees seq[p-C:p] and predicts seq[p:p+n]
    out = []
    for s in starts.tolist():
        seq = stream[s: s + seq_len]
        picks = torch.randperm(hi - lo + 1, generator=generator)[:positions] + lo
        out.extend(seq[p - context_len: p + n_true] for p in picks.tolist())
    return torch.stack(out)


def seen_windows(stream: torch.Tensor, width: int) -> set[bytes]:
    """Every run of ``width`` consecutive tokens of ``stream`` (as bytes): what a held-out window must not be."""
    a = stream.to(torch.int32).numpy()
    return {a[i: i + width].tobytes() for i in range(len(a) - width + 1)}


def clean_positions(doc: torch.Tensor, context_len: int, n_true: int, seen: set[bytes] | None = None) -> list[int]:
    """The thought positions p of ``doc`` whose window doc[p - context_len: p + n_true] is not in ``seen``."""
    a = doc.to(torch.int32).numpy()
    return [p for p in range(context_len, len(doc) - n_true + 1)
            if seen is None or a[p - context_len: p + n_true].tobytes() not in seen]


def document_windows(docs: list[torch.Tensor], n: int, context_len: int, n_true: int,
                     generator: torch.Generator, seen: set[bytes] | None = None) -> torch.Tensor:
    """[n, context_len + n_true]: one window in each of ``n`` documents drawn without replacement from those able to
    hold one, at a uniform position among the document's windows that are not in ``seen`` (``seen_windows`` of the
    training stream; a document with none is passed over). The evaluation's units: windows of one stream that merely
    shared no token still came from the same documents (64 windows touched 56 documents and formed 39 clusters
    linked by a shared one, in an audit), so they were not the independent units the CIs assume; one document each,
    with documents that are distinct problems (``synthetic.generate``), they are. Distinct problems still share
    template text: before ``seen``, 12 of the 64 default windows (seed 42) occurred word for word, true tokens
    included, in the RL training stream (an audit)."""
    width = context_len + n_true
    fit, out = [d for d in docs if len(d) >= width], []
    for i in torch.randperm(len(fit), generator=generator).tolist():   # the long-enough documents, in random order
        if len(out) == n:
            break
        if positions := clean_positions(fit[i], context_len, n_true, seen):
            p = positions[int(torch.randint(0, len(positions), (1,), generator=generator))]
            out.append(fit[i][p - context_len: p + n_true])
    if len(out) < n:
        raise ValueError(f"{n} windows of {width} tokens need {n} held-out documents that long with a window not in "
                         f"the training stream; there are {len(out)}")
    return torch.stack(out)


def window_capacity(docs: list[torch.Tensor], context_len: int, n_true: int, seen: set[bytes] | None = None) -> int:
    """How many documents can each hold one window of ``context_len + n_true`` tokens (not in ``seen``)."""
    return sum(bool(clean_positions(d, context_len, n_true, seen)) for d in docs)   # a short one has no position


def check_sizes(r, max_seq_len: int, val_docs: list[torch.Tensor], seen: set[bytes] | None = None) -> None:
    """A ConfigError naming the ``phase.rl`` key (r) whose size the model or the held-out documents cannot hold: a
    window with its thought (context, [thinking], thought, [/endthinking], true tokens) must fit the model's
    ``max_seq_len``; a training sequence must be shorter than the held-out documents together, and
    ``eval_windows`` windows need that many held-out documents long enough for one not in ``seen`` (the training
    stream's windows: ``document_windows``)."""
    c, length, n, seq, k = (int(r[x]) for x in ("context_len", "thought_length", "n_true", "seq_len", "eval_windows"))
    need = c + length + n + 1
    if need > max_seq_len:
        raise ConfigError(f"phase.rl.context_len ({c}) + phase.rl.thought_length ({length}) + phase.rl.n_true ({n}) + 1 "
                          f"= {need} exceeds the input model's max_seq_len={max_seq_len}: lower them")
    val_len = sum(len(d) for d in val_docs)
    if seq >= val_len:
        raise ConfigError(f"phase.rl.seq_len={seq} must be below the held-out stream's {val_len} tokens")
    if k > (fit := window_capacity(val_docs, c, n, seen)):
        raise ConfigError(f"phase.rl.eval_windows={k} windows (one per held-out document, each of phase.rl.context_len "
                          f"+ phase.rl.n_true = {c + n} tokens, not in the training stream) need {k} documents that "
                          f"hold one; {fit} of the {len(val_docs)} held-out documents do: lower phase.rl.eval_windows "
                          "or phase.rl.context_len")


def reference_logits(ref, batch, context_len: int, use_cache: bool = True, window: bool = True):
    """The reference model's (logits over the window without thoughts [N, C + n - 1, V] for the KL, or None
    unless ``window``; logits predicting each thought token [N*K, L, V] from context + [thinking] + the thought's
    earlier tokens, for the syntactic coherence). With the KV cache (``thought_cache.extendable``): one pass over
    the contexts, then one extension (``extend_branches``): the true tokens, and per thought [thinking] z[:-1]; else full
    forward passes over the window and over the with-thought rows cut after the last thought token. Under
    ``torch.inference_mode``; the logits are cloned out of it (the KL's backward reads them)."""
    windows, (n, k, length) = batch.windows, batch.thoughts.shape
    with torch.inference_mode():
        if use_cache and thought_cache.extendable(ref, windows.shape[1] + length):
            dec = ref.kv_decoder(n)
            ctx = fill(dec, windows[:, :context_len]).logits
            branches = [(batch.with_inputs[:, context_len: context_len + length], k)]
            *rest, thought = dec.extend_branches(*[(windows[:, context_len:-1], 1)] * window, *branches)
            win, thought = (torch.cat([ctx, rest[0].logits], 1) if window else None), thought.logits
        else:
            thought = ref(batch.with_inputs[:, : context_len + length]).logits[:, context_len:]
            win = ref(windows[:, :-1]).logits if window else None
    return (None if win is None else win.clone()), thought.clone()


def coherence_scores(model, ref, batch, context_len: int, ref_thought_logits: torch.Tensor | None = None,
                     use_cache: bool = True, gain: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """[N, K] semantic, syntactic, predictive, combined and prior coherence of each thought (``coherence.py``).
    Semantic and syntactic (hence ``prior``) read only the context and the thought: the reference model's
    logits of the thought tokens (``reference_logits``; given, or computed here), the embeddings only the context.
    ``gain``: the mixed prediction's likelihood gain over no thought, when the caller has it (else computed here)."""
    with torch.no_grad():
        if ref_thought_logits is None:
            ref_thought_logits = reference_logits(ref, batch, context_len, use_cache, window=False)[1]
        if gain is None:
            gain = rewards.likelihood_gain(batch.true_logp_mixed(), batch.true_logp_without())
        s = {"semantic": coherence.semantic(model.embed.weight.detach(), batch.thoughts, batch.windows[:, :context_len]),
             "syntactic": coherence.syntactic(ref_thought_logits, batch.thoughts, 0),
             "predictive": coherence.predictive(gain)}
    s["coherence"] = coherence.combine(s)
    s["prior"] = coherence.prior(s)
    return s


@torch.no_grad()
def thought_figures(batch, ref_thought_logits: torch.Tensor, logp_without: torch.Tensor | None = None) -> dict[str, float]:
    """What the thoughts do that the loss does not show (no gradients, no extra forward): the mean mixing weight w,
    the share of positions with w < 0 (where the advantage ranks thoughts opposite to their own prediction), the
    mean per-token log-likelihood gain of the true tokens from the post-thought prediction alone (w = 1) over no
    thought, and KL(policy || reference) per thought position on the raw logits predicting the thought tokens
    (before the ban and temperature; same direction and averaging as the leash, which does not cover them)."""
    w = batch.mix_weight
    post = rewards.likelihood_gain(batch.true_logp_with(),
                                   batch.true_logp_without() if logp_without is None else logp_without)
    kl = kl_to_reference(batch.thought_logits, ref_thought_logits) if batch.thought_logits.numel() else torch.zeros(())
    values = torch.stack([w.mean().float(), (w < 0).float().mean(), post.mean().float(),
                          kl.float().to(w.device)]).tolist()   # one host sync for the four
    return dict(zip(("mix_weight", "mix_weight_negative_share", "post_thought_gain", "kl_thoughts"), values))


def rl_step(model, head, ref, windows: torch.Tensor, cfg: ThoughtConfig, ids: dict, generator) -> tuple[torch.Tensor, dict]:
    """(total loss, figures) for one episode on ``windows``; ids: start, end, banned."""
    batch = think(model, head, windows, cfg.n_true, cfg.num_thoughts, cfg.thought_length, ids["start"], ids["end"],
                  cfg.temperature, ids["banned"], generator, use_cache=cfg.use_cache)
    logp_mixed = batch.true_logp_mixed()
    adv = rewards.advantages(rewards.thought_rewards(logp_mixed))
    policy = reinforce_loss(batch.thought_logp, adv)
    mixed_nll = -logp_mixed.mean()
    base_ce = F.cross_entropy(batch.base_logits.flatten(0, 1).float(), windows[:, 1:].flatten())
    ref_window, ref_thought = reference_logits(ref, batch, cfg.context_len, cfg.use_cache)
    kl = kl_to_reference(batch.base_logits, ref_window)
    loss = policy + mixed_nll + base_ce + cfg.kl_coef * kl
    logp_without = batch.true_logp_without().detach()
    gain = rewards.likelihood_gain(logp_mixed.detach(), logp_without)
    coh = coherence_scores(model, ref, batch, cfg.context_len, ref_thought, gain=gain)
    figures = {"reward": float(gain.mean()), "policy_loss": policy.item(), "lm_loss": (mixed_nll + base_ce).item(),
               "mixed_nll": mixed_nll.item(), "base_ce": base_ce.item(), "kl": kl.item(),
               **thought_figures(batch, ref_thought, logp_without),
               "diversity": rewards.thought_diversity(batch.thoughts),
               "coherence": {k: v.flatten().tolist() for k, v in coh.items()}}
    return loss, figures


@torch.no_grad()
def evaluate(model, head, ref, windows: torch.Tensor, cfg: ThoughtConfig, ids: dict, generator) -> dict:
    """Anti-theater metrics (with n and 95 % CIs) and coherence on held-out windows (model in eval mode,
    nothing learned); the correlation uses the prior coherence, which never sees the true tokens."""
    was = model.training
    model.eval()
    try:
        batch = think(model, head, windows, cfg.n_true, cfg.num_thoughts, cfg.thought_length, ids["start"],
                      ids["end"], cfg.temperature, ids["banned"], generator, use_cache=cfg.use_cache)
        coh = coherence_scores(model, ref, batch, cfg.context_len, use_cache=cfg.use_cache)
        res = anti_theater.theater_metrics(batch.mixed_logits, batch.without_logits, batch.true, coh["prior"])
    finally:
        model.train(was)
    res["coherence"] = float(coh["coherence"].mean())
    res["accuracy_with"] = float((batch.mixed_logits.argmax(-1) == batch.true[:, None]).float().mean())
    res["accuracy_without"] = float((batch.without_logits.argmax(-1) == batch.true).float().mean())
    return res
