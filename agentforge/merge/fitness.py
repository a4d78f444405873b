"""Fitness of a merged model: real measurements on held-out data, normalized against the input models.

Measured (``measure``): perplexity on held-out rows, task accuracy (multiple-choice ARC/PIQA-format
log-likelihood accuracy, plus GSM8K-format generation when ``gsm8k`` examples are given), forward
throughput in tokens/s, and memory (bytes of parameters and persistent buffers).

Scored (``score``): each measurement becomes a unitless ratio against the mean of the three input
models, oriented so that higher is better and the average input scores about 1 on every term:

    ppl_term    = mean_ref_ppl / ppl
    acc_term    = (acc + f) / (mean_ref_acc + f),  f = 1 / n_examples  (one example's worth, so the
                  ratio stays finite when the references score 0)
    speed_term  = speed_ratio / mean_ref_speed_ratio,  speed_ratio = t_yardstick / t_model
    memory_term = mean_ref_bytes / bytes

and the fitness is their weighted geometric mean (weights w normalized to sum to 1):

    fitness = prod_k term_k ^ (w_k / sum w) = exp( sum_k w_k log(term_k) / sum w )

(default w = 0.4 perplexity, 0.3 accuracy, 0.2 speed, 0.1 memory). Ratios remove the units; the log
makes "twice as good" and "half as good" weigh the same on every term, so a term whose ratio can run
far above 1 (a model with half the layers is several times faster) cannot swamp one that is bounded
(perplexity cannot improve 4x). The perplexity factor is exp(w (ref_loss - loss)): the held-out loss
difference in nats. Fitness 1.0 means "as good as the average input model".

Throughput is a wall-clock measurement on a machine other jobs share, so its absolute value drifts
with the load. The speed term therefore compares forward latencies timed *alternately* with a fixed
yardstick model (one of the inputs): both see the same load, and the ratio of the medians is stable
where tokens/s alone is not. It is still the one noisy term; with its weight set to 0 the fitness is a
deterministic function of the recipe.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import torch

from agentforge.evals import speed, tasks

METRICS = ("perplexity", "accuracy", "tokens_per_s", "speed_ratio", "memory_mb")
DEFAULT_WEIGHTS = {"perplexity": 0.4, "accuracy": 0.3, "speed": 0.2, "memory": 0.1}


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
def measure(model, tokenizer, data: EvalData, yardstick=None) -> dict[str, float]:
    """The four measurements (plus inference time in ms) of one model, in eval mode; the speed is also
    taken relative to ``yardstick`` (default: the model itself, ratio 1)."""
    model.eval()
    loss = tasks.mean_loss(model, data.rows)
    correct = total = 0
    for fmt, records in data.choice.items():
        if records:
            preds = tasks.choice_predictions(model, tokenizer, records, fmt)
            correct += sum(p == r for p, r in preds)
            total += len(preds)
    if data.gsm8k:
        correct += round(tasks.gsm8k_accuracy(model, tokenizer, data.gsm8k, data.gen_tokens) * len(data.gsm8k))
        total += len(data.gsm8k)
    ms, ratio = timed(model, yardstick or model, data)
    return {"loss": loss, "perplexity": float(torch.tensor(min(loss, 50.0)).exp()),
            "accuracy": correct / total if total else 0.0,
            "tokens_per_s": data.speed_batch * data.speed_seq_len / (ms / 1000), "inference_time_ms": ms,
            "speed_ratio": ratio, "memory_mb": speed.param_bytes(model) / 2**20}


def timed(model, yardstick, data: EvalData) -> tuple[float, float]:
    """(median forward ms of model, median of t_yardstick / t_model), the two timed alternately."""
    kw = {"seq_len": data.speed_seq_len, "batch": data.speed_batch, "repeats": 1}
    speed.forward_latency_ms(model, warmup=1, **kw)
    speed.forward_latency_ms(yardstick, warmup=1, **kw)
    ts, ratios = [], []
    for _ in range(data.speed_repeats):
        t = speed.forward_latency_ms(model, warmup=0, **kw)
        ratios.append(speed.forward_latency_ms(yardstick, warmup=0, **kw) / t)
        ts.append(t)
    return statistics.median(ts), statistics.median(ratios)


@dataclass(frozen=True)
class Reference:
    """Mean measurements of the input models: the yardstick of every term."""

    perplexity: float
    accuracy: float
    tokens_per_s: float
    speed_ratio: float
    memory_mb: float
    acc_floor: float

    @classmethod
    def of(cls, measurements: list[dict], n_accuracy_examples: int) -> Reference:
        mean = {k: statistics.fmean(m[k] for m in measurements) for k in METRICS}
        return cls(**mean, acc_floor=1.0 / max(n_accuracy_examples, 1))


def terms(m: dict, ref: Reference) -> dict[str, float]:
    return {"perplexity": ref.perplexity / m["perplexity"],
            "accuracy": (m["accuracy"] + ref.acc_floor) / (ref.accuracy + ref.acc_floor),
            "speed": m["speed_ratio"] / ref.speed_ratio,
            "memory": ref.memory_mb / m["memory_mb"]}


def score(m: dict, ref: Reference, weights: dict[str, float] | None = None) -> float:
    """Weighted geometric mean of the normalized terms (see the module docstring)."""
    w = DEFAULT_WEIGHTS if weights is None else weights
    unknown = set(w) - set(DEFAULT_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown fitness terms {sorted(unknown)}; use {sorted(DEFAULT_WEIGHTS)}")
    total = sum(w.values())
    if total <= 0:
        raise ValueError("fitness weights must have a positive sum")
    t = terms(m, ref)
    return math.exp(sum(w.get(k, 0.0) * math.log(max(t[k], 1e-12)) for k in DEFAULT_WEIGHTS) / total)
