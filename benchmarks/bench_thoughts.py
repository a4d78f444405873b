"""Cost of thinking, in one process, every configuration timed once per round, rounds interleaved, medians
compared; every ratio is the median of the per-round ratios with its 95 % CI and n (``ratio_ci.py``; load and
thread count matter: run with OMP_NUM_THREADS=1 and note ``uptime``).

    python benchmarks/bench_thoughts.py                                  # a fresh tiny-size Cognate model
    python benchmarks/bench_thoughts.py --checkpoint outputs/artifacts/quietstar/reasoning --tokens 16

1. Generation: time per generated token (greedy) with a Quiet-STaR thought before every token ÷ without
   thoughts, on the same model and truncated context — thoughts sampled with the KV cache and without
   it. Uncached, a thought of L tokens costs L + 1 extra forward passes over the growing sequence per
   generated token (L to sample it, one to read the prediction after [/endthinking]): ~L + 2 times no
   thoughts. Cached, it costs one forward pass over context + [thinking] with every recursion step on
   every position (the prefill, which also gives the prediction without the thought) and L + 1 decode
   steps; the breakdown printed (prefill, one decode step, one plain forward) says where the time goes.

2. Training: the time of one Quiet-STaR training step with the longest thought length ÷ the same step
   without thoughts, on the phase's default episode (2 sequences x 2 positions = 4 windows of 32
   context + 4 true tokens, 4 thoughts each; ``--rl-sequences`` sets the sequences), the model in eval mode with gradients on, as the phase
   trains it. The thought step is ``rl_step`` + backward: the contexts run once with gradients into a KV
   cache; the thoughts sampled from a detached copy of it ([thinking] then L - 1 decode steps, under
   inference mode); one extension of the cache (``extend_branches``) with the true tokens (the window's
   logits without thoughts) and, per thought, [thinking] z [/endthinking] true[:-1]; the reference model
   filled once and extended likewise (KL, coherence); the losses. "uncached" is the full-forward reference
   path (``use_cache=False``: sampling re-runs the model on the growing prefix, the forwards re-run the
   context for every thought). The step without thoughts is what a user would otherwise run on the same
   windows: the model's forward on the window, the cross-entropy of the true next tokens, backward. Both
   Its forward runs every recursion step (``model.ablate(halting=False)``), as the thought path's forward
   (``CognateDecoder.extend``) and the model's training forward (targets given: ``train_all``) do; with halting on,
   an eval-mode forward stops once every token halted (a fresh model: ~1.5 of 3 steps), which would compare the
   thought step with a baseline doing about half the work per position. Both
   are timed without the optimizer step, then both with it (the phase's Muon-Grokfast config, plus the
   mixing head's AdamW for the thought step). The breakdown times the cached step's parts on their own:
   sampling the thoughts from a filled cache, the policy's context fill + extension + backward, and the
   reference's fill + extension; the remainder is the losses and coherence.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from ratio_ci import DEFAULT_ROUNDS, ci_text, ratio_ci, ratio_line

from agentforge.artifacts import load_model
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.evals.speed import interleaved_medians, interleaved_times
from agentforge.io import load_tensors
from agentforge.models import CognateConfig, CognateModel
from agentforge.models.kv_cache import fill
from agentforge.optim import build_optimizer
from agentforge.reasoning import thought_cache
from agentforge.reasoning.rl import ThoughtConfig, reference_logits, rl_step, sample_windows
from agentforge.reasoning.thoughts import MixingHead, generate_with_thoughts, sample_after, think
from agentforge.reasoning.tokens import THINK_END, THINK_START, add_reasoning_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="a Cognate checkpoint dir (default: fresh tiny model)")
    ap.add_argument("--tokens", type=int, default=8, help="tokens generated per measurement")
    ap.add_argument("--thought-lengths", default="4,12", help="thought lengths to time, comma-separated")
    ap.add_argument("--context", type=int, default=64, help="context tokens each prediction sees")
    ap.add_argument("--repeats", type=int, default=DEFAULT_ROUNDS, help="interleaved rounds")
    ap.add_argument("--rl-repeats", type=int, default=DEFAULT_ROUNDS, help="training steps timed per case (0: skip)")
    ap.add_argument("--rl-sequences", type=int, default=None,
                    help="sequences per training episode (default: the phase's rl.batch_size; windows = this x "
                         "rl.thought_positions)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    if args.checkpoint:
        model, tok, _ = load_model(args.checkpoint)
    else:
        model, tok = CognateModel(CognateConfig(ltm_gate_norm=True)).eval(), ByteTokenizer()
    tids = add_reasoning_tokens(tok)
    start, end, banned = tids[THINK_START], tids[THINK_END], [256, 257, tids[THINK_START], tids[THINK_END]]
    head = MixingHead(model.config.d_model, init_weight=0.5)  # w = 0.5: the thought changes the prediction
    head_file = args.checkpoint / "mixing_head.safetensors" if args.checkpoint else None
    if head_file and head_file.is_file():
        head.load_state_dict(load_tensors(head_file))
    ids = torch.tensor([tok.encode("Question: Ada has 12 apples. Ada gets 7 more. How many apples does Ada have now?\n"
                                   "Answer:", bos=True)])
    print(f"device: CPU, {torch.get_num_threads()} thread(s); "
          f"model: {args.checkpoint or 'fresh CognateConfig(ltm_gate_norm=True)'} ({model.num_params():,} params), {args.tokens} tokens, context {args.context}, "
          f"{args.repeats} interleaved rounds")

    def gen(h, length, cache, seed=0):
        return lambda: generate_with_thoughts(model, h, ids, args.tokens, length, start, end, args.context, 1.0,
                                              banned, torch.Generator().manual_seed(seed), use_cache=cache)

    lengths = [int(x) for x in args.thought_lengths.split(",")]
    cases = {"no thoughts": gen(None, 0, True)}
    for length in lengths:
        cases[f"L={length} uncached"] = gen(head, length, False)
        cases[f"L={length} cached"] = gen(head, length, True)
    for length in lengths:
        same = torch.equal(gen(head, length, True)(), gen(head, length, False)())
        print(f"L={length}: cached and uncached generate the same tokens: {same}")
    times = interleaved_times(cases, args.repeats, warmup=0)
    for name, ts in times.items():
        print(f"{name:<16} {args.tokens / statistics.median(ts):8.2f} tokens/s  "
              f"{ratio_ci(ts, times['no thoughts'])[0]:6.2f}x the time of no thoughts (median of per-round ratios)")
    for name, ts in times.items():
        if name != "no thoughts":
            print(ratio_line(f"time {name} / no thoughts", ts, times["no thoughts"]))

    with torch.no_grad():  # where the time of a cached thought goes
        ctx = ids[:, -args.context:]
        pre = torch.cat([ctx, torch.full((1, 1), start)], 1)
        dec, _ = thought_cache.prefill(model, pre)
        parts = interleaved_medians({"forward": lambda: model(ctx), "prefill": lambda: thought_cache.prefill(model, pre),
                                     "decode": lambda: (dec.step(ctx[:, -1]), setattr(dec, "pos", dec.pos - 1))},
                                    max(args.repeats, 10), warmup=0)
    print(f"per generated token: plain forward {parts['forward'] * 1e3:.2f} ms; cached thought = prefill "
          f"{parts['prefill'] * 1e3:.2f} ms + (L + 1) x decode step {parts['decode'] * 1e3:.2f} ms "
          f"(model: {model.config.max_steps} recursion steps, every one run by the prefill and each decode step)")

    if args.rl_repeats > 0:
        training_step_ratio(model, head, start, end, banned, max(lengths), args.rl_repeats, args.rl_sequences)


def training_step_ratio(model, head, start: int, end: int, banned: list[int], length: int, repeats: int,
                        sequences: int | None = None) -> None:
    """Time of one Quiet-STaR training step with ``length``-token thoughts ÷ the same step without thoughts
    (interleaved medians; see the module docstring for both definitions) and where the thought step's time goes."""
    rl, optim_cfg = phase_rl_cfg()
    rl["batch_size"] = sequences or rl["batch_size"]
    episode = {f.name: rl[f.name] for f in dataclasses.fields(ThoughtConfig) if f.name in rl}
    tcs = {cache: ThoughtConfig(**{**episode, "kl_coef": optim_cfg["kl_coef"], "thought_length": length,
                                   "use_cache": cache}) for cache in (True, False)}
    tc = tcs[True]
    ref = copy.deepcopy(model).eval()
    stream = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0))
    # the phase's default episode: batch_size sequences x thought_positions positions (conf/phase/quietstar.yaml)
    windows = sample_windows(stream, rl["batch_size"], rl["seq_len"], rl["thought_positions"], tc.context_len,
                             tc.n_true, torch.Generator().manual_seed(0))
    rl_ids = {"start": start, "end": end, "banned": banned}
    model.eval()  # as the phase trains (FrozenPair: eval mode, gradients on)
    opt, _ = build_optimizer(model, optim_cfg, 1000)
    head_opt = torch.optim.AdamW(head.parameters(), lr=opt.param_groups[0]["lr"])

    def finish(loss, step_opt):
        loss.backward()
        if step_opt:
            opt.step()
            head_opt.step()
        opt.zero_grad(set_to_none=True)
        head_opt.zero_grad(set_to_none=True)

    def thoughts(cache, step_opt=False):
        return lambda: finish(rl_step(model, head, ref, windows, tcs[cache], rl_ids,
                                      torch.Generator().manual_seed(0))[0], step_opt)

    def plain(step_opt=False):
        return lambda: finish(baseline_loss(model, windows)[0], step_opt)

    c, k, n = tc.context_len, tc.num_thoughts, len(windows)
    starts = torch.full((n,), start)
    with torch.no_grad():
        filled = model.kv_decoder(n)
        fill(filled, windows[:, :c])

    def sample():
        return sample_after(filled, starts, k, length, 1.0, banned, torch.Generator().manual_seed(0))

    given = sample().view(n, k, -1)

    def forward_backward():
        batch = think(model, head, windows, tc.n_true, k, length, start, end, 1.0, banned, thoughts=given)
        finish(batch.mixed_logits.float().logsumexp(-1).mean() + batch.base_logits.float().logsumexp(-1).mean()
               + batch.thought_logp.sum(), False)

    batch = think(model, head, windows, tc.n_true, k, length, start, end, 1.0, banned, thoughts=given)

    def reference():
        reference_logits(ref, batch, c)  # the KL's window and the coherence's thought logits

    cases = {"none": plain(), "cached": thoughts(True), "uncached": thoughts(False),
             "none+opt": plain(True), "cached+opt": thoughts(True, True),
             "sample": sample, "fwd+bwd": forward_backward, "reference": reference}
    times = interleaved_times(cases, repeats, warmup=1)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    base = times["none"]
    steps = float(baseline_loss(model, windows)[1].mean())
    print(f"Quiet-STaR training step ({n} windows x {k} thoughts x {length} tokens, context {c}, {tc.n_true} true "
          f"tokens; model in eval mode as in the phase), {repeats} interleaved rounds:")
    print(f"  no thoughts (next-token loss forward + backward, recursion steps: mean {steps:.2f} of "
          f"{model.config.max_steps})  {med['none'] * 1e3:7.1f} ms")
    for name in ("cached", "uncached"):
        print(f"  thoughts, {name:<8} (rl_step + backward)  {med[name] * 1e3:7.1f} ms")
        print("  " + ratio_line(f"training step thoughts {name} / no thoughts", times[name], base))
    print(f"  with the optimizer step (Muon-Grokfast + the head's AdamW): no thoughts {med['none+opt'] * 1e3:.1f} ms, "
          f"thoughts {med['cached+opt'] * 1e3:.1f} ms")
    print("  " + ratio_line("training step with the optimizer step, thoughts cached / no thoughts", times["cached+opt"],
                            times["none+opt"]))
    print("  (the parts below: ms, then a ratio to the step without thoughts with its 95% CI)")
    print(f"  where the cached step goes: sampling the thoughts from the filled "
          f"cache ({length} decode steps on {n} then {n * k} rows) {med['sample'] * 1e3:.1f} ms, "
          f"{ci_text(times['sample'], base)}; the policy's context fill + one extension (true tokens on {n} rows, "
          f"thoughts on {n * k}) + backward {med['fwd+bwd'] * 1e3:.1f} ms, {ci_text(times['fwd+bwd'], base)}; the "
          f"reference's fill + extension {med['reference'] * 1e3:.1f} ms, {ci_text(times['reference'], base)}; the "
          f"remainder (losses, coherence; the step minus the three parts' medians, so noisy) "
          f"{(med['cached'] - med['sample'] - med['fwd+bwd'] - med['reference']) * 1e3:.1f} ms")


def baseline_loss(model, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the next-token loss of the step without thoughts, each token's recursion steps): the model's forward on the
    windows with every recursion step run (``ablate(halting=False)``), as the thought path's forward and the model's
    training forward run them, and the cross-entropy of the true next tokens."""
    with model.ablate(halting=False):
        out = model(windows[:, :-1])
    return F.cross_entropy(out.logits.flatten(0, 1), windows[:, 1:].flatten()), out.halting_steps


def phase_rl_cfg() -> tuple[dict, dict]:
    """The phase's RL defaults: (conf/phase/quietstar.yaml's rl section, the optimizer config of its step:
    conf/optimizer/muon_grokfast.yaml with phase.rl.optimizer over it)."""
    conf = Path(__file__).resolve().parents[1] / "conf"
    rl = OmegaConf.to_container(OmegaConf.load(conf / "phase" / "quietstar.yaml").rl)
    return rl, {**OmegaConf.to_container(OmegaConf.load(conf / "optimizer" / "muon_grokfast.yaml")), **rl["optimizer"]}

if __name__ == "__main__":
    main()
