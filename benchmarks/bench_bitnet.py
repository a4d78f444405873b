"""BitNet b1.58 storage and CPU speed: bits per quantized weight (limit log2 3 ~ 1.585), whole-model
bytes on disk against the fp16 and fp32 files of the same model, and inference tokens/s of the model
loaded from the packed file against the fp32 one (same process, interleaved timings, medians).

    python benchmarks/bench_bitnet.py [--input CKPT_DIR] [--size tiny|small] [--threads 1]

Without --input a randomly initialised Cognate model of --size is compressed (storage and speed do not
depend on training; the weights only change the sparsity). The compressed model computes its ternary
layers with the kernel chosen at load per regime (prefill / decode, ``select_kernel``): an int8 x int8 ->
int32 matmul (torch._int_mm) or the float kernel (gamma * codes cached as a dense fp32 matrix), with sibling
layers (q/k/v, gate/up, memory query/value/gate) fused into one matmul (``quant/fuse.py``); in decoding
steps also the native kernel (``quant/native.py``: quantization and matmul in one C++ op, built here unless
--no-native). The forced int8 and float kernels and the unfused model are timed too. Greedy generation is KV-cached (one row per decoding step) for every model.

The forward is timed twice per model: as trained (halting stops a row once its tokens halted) and at equal compute
(every token to max_steps: the halting decisions of the packed and the fp32 model differ, and so would their work).
Generation is timed once: the KV decoder runs every recursion step for every token whatever the halting head says,
so its work is the same in both modes (equal FLOPs, tested). Every ratio is the median of the per-round ratios
with its 95 % CI and n (``ratio_ci.py``).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import statistics
import tempfile
from pathlib import Path

import torch
from ratio_ci import DEFAULT_ROUNDS, ci_short, ci_text, ratio_line

from agentforge.artifacts import load_model
from agentforge.data.tokenizer import RESERVED_VOCAB, ByteTokenizer
from agentforge.evals.compare import MIN_TIMING_ROUNDS
from agentforge.evals.speed import interleaved_times
from agentforge.io import save_tensors
from agentforge.models import CognateConfig, CognateModel
from agentforge.quant import BitLinear, native
from agentforge.quant.calibrate import activation_stats, apply_clips
from agentforge.quant.checkpoint import kernel_summary, load_packed, save_packed
from agentforge.quant.convert import bitlinear_layers, convert_to_bitlinear
from agentforge.quant.packing import packed_size

SIZES = {"tiny": dict(d_model=128, n_layers=2, n_heads=4, ffn_hidden=352, window=64, ltm_key_dim=32),
         "small": dict(d_model=256, n_layers=4, n_heads=4, ffn_hidden=688, window=128, ltm_key_dim=64)}


@torch.no_grad()
def speed(models: dict, seq_len: int, batch: int, gen_tokens: int, repeats: int) -> dict:
    """Per-round seconds of each model's (name -> (model, kernel or None)) forward over [batch, seq_len] as trained
    ("fwd") and with every token to max_steps ("fwd, equal compute": ``full_recursion``), and of its greedy generation
    of ``gen_tokens`` ("gen", once: the KV decoder runs every step in both modes); every case once per round, rounds
    interleaved with a rotating order (``evals.speed.interleaved_times``, one untimed round first). Also "halt"
    (name -> mean halting steps of the forward as trained)."""
    device = next(iter(models.values()))[0].embed.weight.device
    ids = torch.randint(0, 256, (batch, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    prompt = ids[:1, :16]

    def case(m, kernel, fn):
        def run():
            set_kernel(m, kernel)
            fn(m)
        return run

    cases = {}
    for name, (m, kernel) in models.items():
        full = full_recursion(m)
        cases[name, "fwd"] = case(m, kernel, lambda m: m(ids))
        cases[name, "fwd, equal compute"] = case(full, kernel, lambda m: m(ids))
        cases[name, "gen"] = case(m, kernel, lambda m: m.generate(prompt, gen_tokens))
    times = interleaved_times(cases, repeats, sync=torch.cuda.synchronize if device.type == "cuda" else None)
    for name, (m, kernel) in models.items():
        set_kernel(m, kernel)
        times[name, "halt"] = float(m(ids).halting_steps.mean())
    return times


def set_kernel(model, kernel: str | None) -> None:
    """Put every frozen BitLinear of model on ``kernel`` ("int8" / "float") in both regimes; None keeps the
    per-regime choice made at load."""
    chosen = getattr(model, "bitnet_kernel", None) or {}
    for m in model.modules():
        if isinstance(m, BitLinear):
            m.kernel = kernel or chosen.get("kernel", "int8")
            m.kernel_decode = kernel or chosen.get("decode_kernel", m.kernel)


def full_recursion(model):
    """A copy that never halts early (ACT threshold out of reach): every model does max_steps steps."""
    m = copy.deepcopy(model)
    m.config = dataclasses.replace(m.config, act_threshold=1e9)
    return m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", help="a Cognate checkpoint dir (default: a random model of --size)")
    ap.add_argument("--size", default="tiny", choices=sorted(SIZES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--gen-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=DEFAULT_ROUNDS, help="interleaved rounds")
    ap.add_argument("--no-native", action="store_true",
                    help="do not build the native decode kernel (quant/native.py; first build ~30 s)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: the packed model runs the float kernel (torch._int_mm here is the CPU one)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA GPU is visible")
    torch.set_num_threads(args.threads)
    if args.device == "cpu" and not args.no_native:
        native.build()  # a decode-kernel candidate for load_packed's select_kernel once built
    if args.input:
        model, tok, _ = load_model(args.input)
        what = args.input
    else:
        torch.manual_seed(0)
        model, tok = CognateModel(CognateConfig(vocab_size=RESERVED_VOCAB, **SIZES[args.size], ltm_gate_norm=True)).eval(), ByteTokenizer()
        what = f"random {args.size} Cognate model"
    print(f"model: {what}, {model.num_params():,} parameters; {args.threads} thread(s)")
    qmodel = copy.deepcopy(model)
    names = convert_to_bitlinear(qmodel)
    rows = torch.randint(0, 256, (16, args.seq_len + 1), generator=torch.Generator().manual_seed(1))
    apply_clips(qmodel, activation_stats(model, rows, names, batch_size=8))
    n_quant = sum(m.weight.numel() for _, m in bitlinear_layers(qmodel))
    n_scales = sum(m.ternary()[1].numel() for _, m in bitlinear_layers(qmodel))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        state = model.state_dict()
        f32 = save_tensors(tmp / "fp32.safetensors", {k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        f16 = save_tensors(tmp / "fp16.safetensors", {k: v.half() if v.is_floating_point() else v for k, v in state.items()})
        b32, b16 = f32.stat().st_size, f16.stat().st_size
        print(f"\n{n_quant:,} quantized weights in {len(names)} layers; limit log2(3) = {math.log2(3):.4f} bits/weight")
        print(f"{'packing':8} {'bits/w (codes)':>15} {'bits/w (+scales)':>17} {'file bytes':>11} {'vs fp32':>8} {'vs fp16':>8}")
        packed_dirs = {}
        for scheme in ("base3", "2bit"):
            for dtype in ("float16", "float32"):
                d = save_packed(tmp / f"{scheme}-{dtype}", qmodel, tok, scheme=scheme, preserved_dtype=dtype)
                packed_dirs[(scheme, dtype)] = d
                size = (d / "model.safetensors").stat().st_size
                code_bytes = sum(packed_size(m.weight.numel(), scheme) for _, m in bitlinear_layers(qmodel))
                print(f"{scheme:8} {8 * code_bytes / n_quant:15.4f} {(8 * code_bytes + 32 * n_scales) / n_quant:17.4f} "
                      f"{size:11,} {b32 / size:7.2f}x {b16 / size:7.2f}x   (preserved tensors {dtype})")
        print(f"{'fp32':8} {32:15.4f} {'':17} {b32:11,}\n{'fp16':8} {16:15.4f} {'':17} {b16:11,}")
        loaded, _, _ = load_packed(packed_dirs[("base3", "float16")], map_location=args.device)
        unfused = load_packed(packed_dirs[("base3", "float16")], map_location=args.device, choose_kernel=False,
                              fuse=False)[0]
        unfused.bitnet_kernel = loaded.bitnet_kernel  # the same kernels, one matmul per layer
    model = model.to(args.device)
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"\ndevice: {device}; {torch.get_num_threads()} thread(s); sibling groups fused at load: "
          f"{len(loaded.bitnet_groups)} ({', '.join('/'.join(n.rsplit('.', 1)[-1] for n in g) for g in loaded.bitnet_groups)})")
    info = loaded.bitnet_kernel or {"kernel": "float", "int8_ms": float("nan"), "float_ms": float("nan")}
    print(f"kernels chosen at load (interleaved medians): {kernel_summary(info)}")
    chosen = f"bitnet (chosen {info['kernel']}/{info.get('decode_kernel', info['kernel'])})"
    models = {"fp32": (model, None), chosen: (loaded, None), "bitnet chosen, unfused": (unfused, None),
              "bitnet int8 kernel": (loaded, "int8"), "bitnet float kernel": (loaded, "float")}
    t = speed(models, args.seq_len, args.batch, args.gen_tokens, args.repeats)
    fwd_tok, gen_tok = args.batch * args.seq_len, args.gen_tokens
    few = "" if args.repeats >= MIN_TIMING_ROUNDS else f"; under {MIN_TIMING_ROUNDS} rounds the range, covering less"
    print(f"\n{device} inference, {args.repeats} interleaved rounds (rotating order): forward [{args.batch}, "
          f"{args.seq_len}] as trained and at equal compute (every token to max_steps); greedy generation of "
          f"{args.gen_tokens} tokens (the KV decoder runs every step for every token: one figure). tok/s: medians; "
          f"vs fp32: median of the per-round ratios [95% CI{few}], n = {args.repeats}")
    print(f"{'model (prefill/decode)':28} {'forward tok/s':>13} {'vs fp32':>18} {'equal compute':>13} {'vs fp32':>18} "
          f"{'generate tok/s':>14} {'vs fp32':>18} {'halt steps':>10}")
    for k in models:
        print(f"{k:28} {fwd_tok / statistics.median(t[k, 'fwd']):13,.0f} {ci_short(t['fp32', 'fwd'], t[k, 'fwd']):>18} "
              f"{fwd_tok / statistics.median(t[k, 'fwd, equal compute']):13,.0f} "
              f"{ci_short(t['fp32', 'fwd, equal compute'], t[k, 'fwd, equal compute']):>18} "
              f"{gen_tok / statistics.median(t[k, 'gen']):14,.1f} {ci_short(t['fp32', 'gen'], t[k, 'gen']):>18} "
              f"{t[k, 'halt']:10.2f}")
    where = f"{device}, {torch.get_num_threads()} thread(s)"
    print(ratio_line(f"packed/fp32 forward tokens/s, as trained ({where})", t["fp32", "fwd"], t[chosen, "fwd"]))
    print(ratio_line(f"packed/fp32 forward tokens/s, equal compute ({where})", t["fp32", "fwd, equal compute"],
                     t[chosen, "fwd, equal compute"]))
    print(ratio_line(f"packed/fp32 greedy tokens/s ({where}; kernels prefill {info['kernel']}, decode "
                     f"{info.get('decode_kernel', info['kernel'])})", t["fp32", "gen"], t[chosen, "gen"]))
    print(f"the unfused packed model's greedy tokens/s vs fp32: {ci_text(t['fp32', 'gen'], t['bitnet chosen, unfused', 'gen'])}"
          f" (fusion serves the int8/float decode kernels; native runs one op per layer)")


if __name__ == "__main__":
    main()
