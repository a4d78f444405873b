"""Fitness of a merged model: real measurements on held-out data, normalized against the input models.

Measured (``measure``): perplexity on held-out rows, task accuracy (multiple-choice ARC/PIQA-format
log-likelihood accuracy, plus GSM8K-format generation when ``gsm8k`` examples are given), forward
FLOPs per token (counted by ``evals.flops`` over the same held-out rows as the perplexity: matmuls and attention;
the selection rows while evolving, the test rows in ``heldout.compare_on_test``), forward time against a
yardstick model, and memory (bytes of parameters and persistent buffers).

Scored (``score``): each measurement becomes a unitless ratio against the mean of the three input
models, oriented so that higher is better and the average input scores about 1 on every term:

    ppl_term    = mean_ref_ppl / ppl
    acc_term    = (acc + f) / (mean_ref_acc + f),  f = 1 / n_examples  (one example's worth, so the
                  ratio stays finite when the references score 0)
    speed_term  = mean_ref_flops_per_token / flops_per_token              (speed="flops", the default)
                  speed_ratio / mean_ref_speed_ratio, speed_ratio = t_yardstick / t_model  (speed="timed")
    memory_term = mean_ref_bytes / bytes

and the fitness is their weighted geometric mean (weights w normalized to sum to 1):

    fitness = prod_k term_k ^ (w_k / sum w) = exp( sum_k w_k log(term_k) / sum w )

(default w = 0.4 perplexity, 0.3 accuracy, 0.2 speed, 0.1 memory). Ratios remove the units; the log
makes "twice as good" and "half as good" weigh the same on every term, so a term whose ratio can run
far above 1 (a model with half the layers is several times faster) cannot swamp one that is bounded
(perplexity cannot improve 4x). The perplexity factor is exp(w (ref_loss - loss)): the held-out loss
difference in nats. Fitness 1.0 means "as good as the average input model".

Determinism. With ``speed="flops"`` every term is a deterministic function of the weights and the data (the FLOP
count of the forward pass over the held-out rows, the bytes, the losses and answers on fixed data), so timing
noise cannot win a selection: measuring one model twice gives the same fitness bit for bit. The FLOPs depend on
the input (ACT stops a row once all its tokens halted), so they are counted on the data's own rows: until
2026-11-28 they were counted on one fixed batch of random byte ids, the same for selection and test, where a
model's ratio to another's differed from the test rows' (1.996 against 1.650 in an audit).
``speed="timed"`` scores wall-clock speed instead, measured as the median over ``speed_repeats`` of
forward passes timed in interleaved rounds with a fixed yardstick model (the order rotating each round, so
both see the same load and neither is always first); it stays noisy (issue 13 timed an exact copy against its original 15 times on the shared 2-core
CPU, with the earlier strictly alternating timer: speed ratios 0.78-1.38, moving fitness by about +-6 %; the
rotating rounds are no steadier: 0.83-1.21 over 60 such trials of tiny m1 at load 0.7, against 0.84-1.11 for
the alternating timer in the same runs; ``benchmarks/bench_merge.py`` prints this spread), which is why it is
not the default. Either way the forward time is measured and logged (``inference_time_ms``).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import torch

from agentforge.evals import speed, tasks
from agentforge.evals.flops import count_flops, counting_flops

METRICS = ("perplexity", "accuracy", "tokens_per_s", "speed_ratio", "memory_mb", "flops_per_token")
DEFAULT_WEIGHTS = {"perplexity": 0.4, "accuracy": 0.3, "speed": 0.2, "memory": 0.1}
SPEED_MODES = ("flops", "timed")


@dataclass
class EvalData:
    rows: torch.Tensor                          # [N, T+1] held-out token rows for perplexity
    choice: dict[str, list[dict]] = field(default_factory=dict)  # {"arc": [...], "piqa": [...]}
    gsm8k: list[dict] = field(default_factory=list)
    gen_tokens: int = 16
    speed_seq_len: int = 64
    speed_batch: int = 2
    speed_repeats: int = 3

    def n_accuracy_examples(self) -> int:
        return sum(len(v) for v in self.choice.values()) + len(self.gsm8k)


@torch.no_grad()
def measure(model, tokenizer, data: EvalData, yardstick=None, keep_examples: bool = False) -> dict:
    """The measurements of one model, in eval mode; the speed is also taken relative to ``yardstick``
    (default: the model itself, ratio 1). ``keep_examples`` adds the per-example scores the paired
    statistics need: ``row_losses`` (mean nats/token of each row) and ``correct`` (0/1 per question)."""
    model.eval()
    with counting_flops(model) as fc:   # the perplexity's forward pass is the one counted (``forward_flops``)
        lm = tasks.lm_metrics(model, data.rows)
    flops = fc.get_total_flops()
    correct: list[int] = []
    for fmt, records in data.choice.items():
        if records:
            correct += tasks.choice_correct(model, tokenizer, records, fmt)
    if data.gsm8k:
        correct += tasks.gsm8k_correct(tasks.gsm8k_generations(model, tokenizer, data.gsm8k, data.gen_tokens),
                                       data.gsm8k)
    ms, ratio = timed(model, yardstick or model, data)
    loss = statistics.fmean(lm["row_losses"])  # rows have one length: the mean over every token
    out = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)),
           "accuracy": sum(correct) / len(correct) if correct else 0.0,
           "tokens_per_s": data.speed_batch * data.speed_seq_len / (ms / 1000), "inference_time_ms": ms,
           "speed_ratio": ratio, "memory_mb": speed.param_bytes(model) / 2**20,
           "flops_per_token": flops / data.rows[:, :-1].numel()}
    if keep_examples:
        out.update(row_losses=list(lm["row_losses"]), correct=correct)
    return out


@torch.no_grad()
def forward_flops(model, data: EvalData) -> int:
    """FLOPs of the forward pass over the held-out rows' inputs (``data.rows[:, :-1]``), counted by
    ``evals.flops.count_flops`` (matmuls and attention, the latter as SDPA's math path computes it, on every
    device): what ``measure`` counts during its perplexity pass (tested equal)."""
    device = next(model.parameters()).device
    return count_flops(lambda: model(data.rows[:, :-1].to(device)), model)


def timed(model, yardstick, data: EvalData) -> tuple[float, float]:
    """(median forward ms of model, median over rounds of t_yardstick / t_model): the two timed in interleaved rounds
    whose order rotates (``speed.interleaved_forward_times``), so neither is always the one timed first."""
    t_model, t_yard = speed.interleaved_forward_times([model, yardstick], data.speed_seq_len, data.speed_repeats,
                                                      batch=data.speed_batch)
    return 1e3 * statistics.median(t_model), statistics.median(y / t for y, t in zip(t_yard, t_model))


@dataclass(frozen=True)
class Reference:
    """Mean measurements of the input models: the yardstick of every term."""

    perplexity: float
    accuracy: float
    tokens_per_s: float
    speed_ratio: float
    memory_mb: float
    flops_per_token: float
    acc_floor: float

    @classmethod
    def of(cls, measurements: list[dict], n_accuracy_examples: int) -> Reference:
        mean = {k: statistics.fmean(m[k] for m in measurements) for k in METRICS}
        return cls(**mean, acc_floor=1.0 / max(n_accuracy_examples, 1))


def terms(m: dict, ref: Reference, speed_mode: str = "flops") -> dict[str, float]:
    if speed_mode not in SPEED_MODES:
        raise ValueError(f"speed mode must be one of {SPEED_MODES}, got {speed_mode!r}")
    fast = (ref.flops_per_token / m["flops_per_token"] if speed_mode == "flops"
            else m["speed_ratio"] / ref.speed_ratio)
    return {"perplexity": ref.perplexity / m["perplexity"],
            "accuracy": (m["accuracy"] + ref.acc_floor) / (ref.accuracy + ref.acc_floor),
            "speed": fast,
            "memory": ref.memory_mb / m["memory_mb"]}


def check_weights(weights: dict[str, float]) -> float:
    """The sum of the fitness weights; ValueError for unknown terms or a non-positive sum."""
    unknown = set(weights) - set(DEFAULT_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown fitness terms {sorted(unknown)}; use {sorted(DEFAULT_WEIGHTS)}")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("fitness weights must have a positive sum")
    return total


def score(m: dict, ref: Reference, weights: dict[str, float] | None = None, speed_mode: str = "flops") -> float:
    """Weighted geometric mean of the normalized terms (see the module docstring)."""
    w = DEFAULT_WEIGHTS if weights is None else weights
    total = check_weights(w)
    t = terms(m, ref, speed_mode)
    return math.exp(sum(w.get(k, 0.0) * math.log(max(t[k], 1e-12)) for k in DEFAULT_WEIGHTS) / total)
