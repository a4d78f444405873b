"""Phase 3 step 2, Quiet-STaR RL (``reasoning/rl.py``), as a LightningModule with manual optimization.

Two optimizers step each episode: the model's (``build_optimizer``, as everywhere) and the mixing
head's (AdamW at the same learning rate). The loss of ``rl.rl_step`` is back-propagated with
``manual_backward`` (so DDP all-reduces it); LMModule's ``_gradients_finite`` then checks the raw gradients of
model and head and logs their norm as ``train/gradient_norm`` (before the Grokfast filter and the clip, as in every
other phase), the two are clipped together to ``gradient_clip`` (after the Grokfast filter, ``optim.clip_grad_norm_``),
and LMModule's hooks give QK-clip's rank sync and the optimizer metrics. A non-finite loss or gradient follows
``on_nonfinite`` as in LMModule: ``stop`` raises; ``skip`` leaves the step nothing to do (no gradients, so no weight
moves, the head's included, and nothing reaches the Grokfast filter) while the episode still counts as a step
(``global_step``, the schedule), as a skipped automatic step does.

An epoch is ``anti_theater_every`` episodes (the last one may be shorter): the anti-theater check runs
in validation at each epoch's end, before the epoch checkpoint is written, so a resumed run carries
every check, reward and coherence value of the episodes before it. Episode e draws its windows with a
generator seeded by (seed, e, rank).

Logged each episode (the seed spec's keys, and beside them): ``rl/avg_thought_length`` is the configured
``thought_length``, not a measurement (the end token is banned while sampling, so every thought has that length);
``rl/lm_loss`` = ``rl/mixed_nll`` + ``rl/base_ce`` (``reasoning/rl.py``); ``rl/reward`` is the mixed prediction's
per-token log-likelihood gain over no thought, not the REINFORCE reward; ``rl/mixing_weight_negative_share`` and
``rl/post_thought_gain`` show whether thoughts enter with a negative weight (then REINFORCE rewards the thoughts
that predict worst); ``rl/kl_divergence`` is the leash on the window without thoughts,
``rl/kl_divergence_thoughts`` the unleashed thought policy's drift (``rl.thought_figures``).
"""
from __future__ import annotations

import math

import torch

from agentforge.evals.tasks import choice_correct, gsm8k_correct, gsm8k_generations
from agentforge.optim import build_optimizer, clip_grad_norm_
from agentforge.reasoning.rl import ThoughtConfig, evaluate, rl_step, sample_windows
from agentforge.training.baking_module import FrozenPair, gpu_memory

CHECK_KEYS = ("divergence", "ablation_drop", "correlation")


def task_accuracy(model, tok, evals: dict, gen_tokens: int) -> dict:
    """GSM8K/ARC-format accuracy, answered directly (greedy, no thoughts: generating with a thought per
    token costs thought_length + 2 forward passes a token — see benchmarks/bench_thoughts.py)."""
    correct = gsm8k_correct(gsm8k_generations(model, tok, evals["gsm8k"], gen_tokens), evals["gsm8k"])
    arc = choice_correct(model, tok, evals["arc"], "arc")
    return {"gsm8k": sum(correct) / max(len(correct), 1), "gsm8k_correct": correct,   # per question: for paired tests
            "arc": sum(arc) / max(len(arc), 1), "arc_correct": arc}


def check_metrics(res: dict) -> dict:
    """The W&B keys of one anti-theater check (seed's names, plus n and the CI bounds)."""
    out = {"anti_theater/divergence": res["divergence"], "anti_theater/divergence_passed": res["divergence_passed"],
           "anti_theater/ablation_drop": res["ablation_drop"], "anti_theater/ablation_passed": res["ablation_passed"],
           "anti_theater/correlation": res["correlation"], "anti_theater/correlation_passed": res["correlation_passed"],
           "anti_theater/all_passed": res["all_passed"], "anti_theater/n_windows": res["n_windows"],
           "rl/divergence_from_direct": res["divergence"], "rl/ablation_accuracy_drop": res["ablation_drop"],
           "rl/gsm8k_accuracy": res["gsm8k"], "rl/arc_accuracy": res["arc"]}
    out.update({f"anti_theater/{k}_ci95_{end}": res[f"{k}_ci95"][i] for k in CHECK_KEYS
                for i, end in enumerate(("low", "high"))})
    return out


class QuietStarModule(FrozenPair):
    def __init__(self, model, ref, head, train_stream: torch.Tensor, eval_windows: torch.Tensor, evals: dict, tok,
                 tc: ThoughtConfig, tids: dict, r, optim_cfg: dict, gradient_clip: float, on_nonfinite: str, seed: int):
        """r: phase.rl; tids: start / end / banned token ids; evals: held-out GSM8K/ARC-format examples."""
        super().__init__(model, ref, optim_cfg, int(r.num_episodes), on_nonfinite, seed)
        self.automatic_optimization = False
        self.head, self.train_stream, self.eval_windows = head, train_stream, eval_windows
        self.evals, self.tok, self.tc, self.tids, self.r = evals, tok, tc, tids, r
        self.gradient_clip = gradient_clip
        self.every, self.episodes = int(r.anti_theater_every), int(r.num_episodes)
        self.history = {"reward": [], "coherence": [], "checks": [], "mix_weight": [], "mix_weight_negative_share": [],
                        "post_thought_gain": []}

    @staticmethod
    def epochs(r) -> int:
        return math.ceil(int(r.num_episodes) / int(r.anti_theater_every))

    def check(self, episode: int) -> dict:
        """Anti-theater check and task accuracy at ``episode`` (the same held-out windows and draw each time)."""
        with self.part("anti_theater"):
            res = evaluate(self.model, self.head, self.frozen, self.eval_windows.to(self.device), self.tc, self.tids,
                           torch.Generator().manual_seed(self.seed + 2))
        with self.part("accuracy"):
            res.update(episode=episode, **task_accuracy(self.model, self.tok, self.evals, int(self.r.gen_tokens)))
        return res

    # -- data: the count of episodes per epoch --------------------------------------------------------------
    def train_dataloader(self):
        return self.steps_loader(min(self.every, self.episodes - self.current_epoch * self.every))

    def val_dataloader(self):
        return self.steps_loader(1)

    # -- optimizers -----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        opt, sched = build_optimizer(self.model, self.optim_cfg, self.total_steps)
        head_opt = torch.optim.AdamW(self.head.parameters(), lr=float(self.optim_cfg["lr"]))
        return [opt, head_opt], [{"scheduler": sched, "interval": "step"}]

    def training_step(self, batch, batch_idx):
        opt, head_opt = self.optimizers()
        episode = self.current_epoch * self.every + batch_idx + 1
        _, _, gen = self.generators(batch_idx, self.every)
        r, tc = self.r, self.tc
        windows = sample_windows(self.train_stream, int(r.batch_size), int(r.seq_len), int(r.thought_positions),
                                 tc.context_len, tc.n_true, gen).to(self.device)
        loss, fig = rl_step(self.model, self.head, self.frozen, windows, tc, self.tids, gen)
        opt.zero_grad(set_to_none=True)
        head_opt.zero_grad(set_to_none=True)
        params = [*self.model.parameters(), *self.head.parameters()]
        finite = bool(torch.isfinite(loss))
        if finite:
            self.manual_backward(loss)
            stepped = self._gradients_finite(params)   # raw gradients: before the filter's EMA and the clip see them
        else:
            self._nonfinite(f"Quiet-STaR loss is {float(loss)}")   # stop: raises; skip: no gradients
            stepped = False
        if stepped and self.gradient_clip > 0:
            clip_grad_norm_(opt.optimizer, params, self.gradient_clip)
        opt.step()   # also when skipped (no gradients: nothing moves): global_step = episodes, as LMModule counts
        if stepped:
            head_opt.optimizer.step()  # the raw optimizer: one LightningOptimizer step per episode
        lr = opt.param_groups[0]["lr"]   # the rate this episode's step used: read before the schedule moves it on
        self.lr_schedulers().step()
        if not finite:
            return None
        rewards = self.history["reward"] = [*self.history["reward"], fig["reward"]]
        coh = fig["coherence"]
        self.history["coherence"] = [*self.history["coherence"], *coh["coherence"]]
        for k in ("mix_weight", "mix_weight_negative_share", "post_thought_gain"):   # .get: a checkpoint from before
            self.history[k] = [*self.history.get(k, []), fig[k]]
        mean = lambda xs: sum(xs) / max(len(xs), 1)  # noqa: E731
        self.log_dict({"rl/episode": float(episode), "rl/reward": fig["reward"], "rl/avg_reward": mean(rewards[-100:]),
                       "rl/avg_coherence_score": mean(coh["coherence"]), "rl/semantic_coherence": mean(coh["semantic"]),
                       "rl/syntactic_coherence": mean(coh["syntactic"]),
                       "rl/predictive_coherence": mean(coh["predictive"]), "rl/avg_thought_length": float(tc.thought_length),
                       "rl/thought_diversity": fig["diversity"], "rl/kl_divergence": fig["kl"],
                       "rl/policy_loss": fig["policy_loss"], "rl/lm_loss": fig["lm_loss"], "rl/mixing_weight": fig["mix_weight"],
                       "rl/mixed_nll": fig["mixed_nll"], "rl/base_ce": fig["base_ce"],
                       "rl/mixing_weight_negative_share": fig["mix_weight_negative_share"],
                       "rl/post_thought_gain": fig["post_thought_gain"], "rl/kl_divergence_thoughts": fig["kl_thoughts"],
                       "rl/learning_rate": lr, **gpu_memory()}, on_step=True, on_epoch=False)
        self.log("reward", fig["reward"], prog_bar=True, logger=False)

    def on_before_optimizer_step(self, optimizer):
        """QK-clip's rank sync only: ``training_step`` has checked and logged the raw gradients (model and head) and
        run the filter; LMModule's check here would see the filtered, clipped gradients of the model alone."""
        self._sync_max_logits()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        metrics_fn = getattr(self.optimizers()[0].optimizer, "metrics", None)
        if callable(metrics_fn):
            self.log_dict({k: float(v) for k, v in metrics_fn().items()}, on_step=True, on_epoch=False)

    # -- the anti-theater check ends each epoch, before the epoch checkpoint is written ---------------------
    def on_validation_epoch_start(self):
        pass

    def validation_step(self, batch, batch_idx):
        res = self.check(min((self.current_epoch + 1) * self.every, self.episodes))
        self.history["checks"] = [*self.history["checks"], res]
        self.log_dict({k: float(v) for k, v in check_metrics(res).items()}, on_step=False, on_epoch=True,
                      rank_zero_only=True)

    def on_validation_epoch_end(self):
        pass
