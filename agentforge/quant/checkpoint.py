"""The packed BitNet checkpoint: ternary codes packed 5 trits/byte (or 2 bits), float32 scales, and the
preserved tensors, in one safetensors file + config.json written by ``agentforge.io.save_checkpoint``.

Tensors per quantized layer NAME: ``NAME.codes_packed`` (uint8), ``NAME.gamma`` (float32, [] or [out, 1]),
``NAME.act_clip`` (float32), ``NAME.bias`` (preserved dtype, when the layer has one). Every other entry of
the model's state dict is stored as is, floats cast to ``preserved_dtype`` (float32 where a value would not fit it:
``_preserved``), each storage once (``unique_state``:
a tied lm_head, ``model.tie_embeddings``, is the embedding's tensor, re-tied on loading). ``config.json`` meta.quant
records the scheme, the layers and their shapes, and a SHA-256 of every stored tensor, so a corrupt file
fails with one line instead of loading wrong weights (truncation is caught by safetensors itself).
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch

from agentforge.artifacts import check_config_fits, checked_model_config, checked_tokenizer
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.io import WEIGHTS_FILE, CheckpointError, check_dtypes, load_checkpoint, save_checkpoint
from agentforge.models import CognateModel
from agentforge.quant.bitlinear import KERNEL_MARGIN, BitLinear, select_kernel
from agentforge.quant.convert import bitlinear_layers
from agentforge.quant.fuse import fuse_siblings
from agentforge.quant.packing import SCHEMES, pack, unpack

ARCHITECTURE = "TRM-Titans-MAG-bitnet1.58"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def unique_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with every storage once: a key whose tensor shares memory with an earlier key's (a tied
    lm_head is the embedding's weight) is left out. Both the fp32 reference the compression ratio is measured
    against and the packed file are written from it (with both keys, a tied model's embedding counted twice in each:
    5.38x where storing it once gives ~7.2x)."""
    seen, out = set(), {}
    for k, v in model.state_dict().items():
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if v.numel() and ptr in seen:
            continue
        seen.add(ptr)
        out[k] = v
    return out


def packed_tensors(model: CognateModel, scheme: str = "base3",
                   preserved_dtype: str = "float16") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors to store, {layer name: {shape, bias}}) of a model whose quantized layers are BitLinear."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown packing {scheme!r}; choose from {sorted(SCHEMES)}")
    dtype = DTYPES[preserved_dtype]
    tensors, layers = {}, {}
    for name, layer in bitlinear_layers(model):
        codes, gamma = layer.ternary()
        tensors[f"{name}.codes_packed"] = pack(codes, scheme)
        tensors[f"{name}.gamma"] = gamma.detach().float().cpu()
        tensors[f"{name}.act_clip"] = layer.act_clip.detach().float().cpu()
        if layer.bias is not None:
            tensors[f"{name}.bias"] = _preserved(layer.bias, dtype)
        layers[name] = {"shape": list(codes.shape), "bias": layer.bias is not None}
    owned = tuple(f"{n}." for n in layers)
    for k, v in unique_state(model).items():
        if not k.startswith(owned):
            tensors[k] = _preserved(v, dtype) if v.is_floating_point() else v.detach().cpu()
    return tensors, layers


def _preserved(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``v`` stored in the preserved dtype, or in float32 where a finite value of it would not fit there: float16
    tops out at 65 504, and the memory's per-slot read mass (its ``usage`` buffer) passes that in a long run — cast, it
    became +inf, and the loader refuses a non-finite tensor (a mutation audit's case: usage 70 000)."""
    v = v.detach().cpu()
    if dtype != torch.float32 and v.numel() and float(v.float().abs().max()) > torch.finfo(dtype).max:
        return v.float()
    return v.to(dtype)


def save_packed(directory: str | Path, model: CognateModel, tokenizer: ByteTokenizer, *, scheme: str = "base3",
                preserved_dtype: str = "float16", meta: dict | None = None) -> Path:
    """Write the packed checkpoint directory (atomic; complete once config.json exists)."""
    tensors, layers = packed_tensors(model, scheme, preserved_dtype)
    any_layer = next((m for _, m in bitlinear_layers(model)), None)
    quant = {"method": "bitnet-1.58bit", "packing": scheme, "preserved_dtype": preserved_dtype, "layers": layers,
             "threshold": any_layer.threshold if any_layer else None,
             "per_channel": any_layer.per_channel if any_layer else False,
             "act_bits": any_layer.act_bits if any_layer else None,
             "act_scale": any_layer.act_scale if any_layer else "token",
             "tensors_sha256": tensors_digest(tensors)}
    return save_checkpoint(directory, tensors, architecture=ARCHITECTURE, model_config=model.config.to_dict(),
                           tokenizer=tokenizer.to_dict(), meta={**(meta or {}), "quant": quant})


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# meta.quant's fields outside the tensor checksum: each with its test and what it must be
QUANT_FIELDS = {
    "packing": (lambda x: isinstance(x, str) and x in SCHEMES, f"one of {sorted(SCHEMES)}"),
    "tensors_sha256": (lambda x: isinstance(x, str), "a hex string"),
    "threshold": (lambda x: x is None or (_is_num(x) and x >= 0), "a number >= 0 (null with no quantized layer)"),
    "per_channel": (lambda x: isinstance(x, bool), "true or false"),
    "act_bits": (lambda x: x is None or (isinstance(x, int) and not isinstance(x, bool) and 2 <= x <= 8),
                 "an integer in 2..8 or null"),
    "act_scale": (lambda x: x in ("token", "static"), "'token' or 'static'"),
    "layers": (lambda x: isinstance(x, dict) and all(
        isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("bias"), bool)
        and isinstance(v.get("shape"), list) and len(v["shape"]) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in v["shape"])
        for k, v in x.items()), "a mapping of layer name -> {shape: [out, in], bias: true|false}"),
}


def _quant_meta(directory, cfg: dict) -> dict:
    """config.json's meta.quant, every field checked (type and range) here, in one place: the checksum covers the
    tensors, not these, so an edited one is one ``CheckpointError`` naming the field, never a traceback."""
    meta = cfg.get("meta")
    quant = meta.get("quant") if isinstance(meta, dict) else None
    if not isinstance(quant, dict) or not {"packing", "layers", "tensors_sha256"} <= set(quant):
        raise CheckpointError(f"{directory}: config.json has no meta.quant section; not a packed BitNet checkpoint")
    for key, (ok, desc) in QUANT_FIELDS.items():
        if key not in quant or not ok(quant[key]):
            got = "missing" if key not in quant else f"got {quant[key]!r}"[:120]
            raise CheckpointError(f"{directory}/config.json: meta.quant.{key} must be {desc} ({got}); the file was "
                                  f"edited or is not Agent Forge's — re-run phase=bitnet")
    return quant


def load_packed(directory: str | Path, map_location: str | torch.device = "cpu", choose_kernel: bool = True,
                fuse: bool = True):
    """(CognateModel with frozen BitLinear layers unpacked from the file, tokenizer, config dict).

    ``fuse``: layers that read the same input are computed as one matmul (``fuse.fuse_siblings``; the groups
    found by one forward pass of two tokens, listed in ``model.bitnet_groups``).

    On CPU, ``choose_kernel`` times the int8 and float kernels once (``select_kernel``): on a 64-token
    forward pass for the prefill / batch regime and on 16 one-token KV-cached decoding steps for the decode
    regime (with the native kernel too if ``native.build()`` ran in this process), and keeps the fastest (by a 5 % margin over int8, ``bitlinear.pick_kernel``) of
    each; the choices and timings are in ``model.bitnet_kernel``."""
    state, cfg = load_checkpoint(directory)
    if cfg.get("architecture") != ARCHITECTURE:
        raise CheckpointError(f"{directory}: architecture {cfg.get('architecture')!r} is not {ARCHITECTURE!r}")
    quant = _quant_meta(directory, cfg)
    if tensors_digest(state) != quant["tensors_sha256"]:
        raise CheckpointError(f"{directory}/model.safetensors: contents do not match the checksum in config.json; "
                              f"the file is corrupt — re-run phase=bitnet")
    config = checked_model_config(directory, cfg.get("model"))
    check_config_fits(directory, config, state)
    weights = Path(directory) / WEIGHTS_FILE
    for name in quant["layers"]:   # the layer's tensors' kinds: uint8 codes, floating scales and bias
        check_dtypes(weights, state, {f"{name}.codes_packed": torch.zeros(0, dtype=torch.uint8),
                                      **{f"{name}.{k}": torch.zeros(0) for k in ("gamma", "act_clip", "bias")}})
    model = CognateModel(config)
    tokenizer = checked_tokenizer(directory, cfg)
    knobs = {"threshold": quant["threshold"], "per_channel": quant["per_channel"], "act_bits": quant["act_bits"],
             "act_scale": quant["act_scale"]}
    for name, info in quant["layers"].items():
        try:
            out_f, in_f = info["shape"]
            codes = unpack(state[f"{name}.codes_packed"], out_f * in_f, quant["packing"]).view(out_f, in_f)
            bias = state[f"{name}.bias"].float() if info["bias"] else None
            layer = BitLinear.from_ternary(codes, state[f"{name}.gamma"], bias, state[f"{name}.act_clip"], **knobs)
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, layer)
        except (KeyError, ValueError, AttributeError, RuntimeError) as exc:
            raise CheckpointError(f"{directory}: quantized layer {name!r} cannot be restored ({exc}); "
                                  f"the file is corrupt or from another model — re-run phase=bitnet") from exc
    owned = tuple(f"{n}." for n in quant["layers"])
    expected = {k: v for k, v in unique_state(model).items() if not k.startswith(owned)}
    rest = {k: v for k, v in state.items() if not k.startswith(owned)}
    missing, unexpected = sorted(set(expected) - set(rest)), sorted(set(rest) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{directory}: tensors do not match the config (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    check_dtypes(weights, rest, expected)
    for k, v in expected.items():
        if rest[k].shape != v.shape:
            raise CheckpointError(f"{directory}: tensor {k} has shape {tuple(rest[k].shape)}, expected {tuple(v.shape)}")
        rest[k] = rest[k].to(v.dtype)
    model.load_state_dict(rest, strict=False)
    model.to(map_location).eval()
    model.bitnet_kernel = None
    model.bitnet_groups = fuse_siblings(model) if fuse and quant["layers"] else []
    if choose_kernel and torch.device(map_location).type == "cpu" and quant["layers"]:
        choose_kernels(model)
    return model, tokenizer, cfg


def choose_kernels(model: CognateModel) -> dict:
    """``select_kernel`` as ``load_packed`` runs it (a 64-token forward for prefill, 16 KV-cached one-token
    steps for decoding, interleaved medians; the native decode kernel is a candidate if ``native.build()`` ran
    in this process); the choices and timings are kept in ``model.bitnet_kernel``."""
    ids = torch.randint(0, model.config.vocab_size, (1, min(64, model.config.max_seq_len)),
                        generator=torch.Generator().manual_seed(0))
    model.bitnet_kernel = select_kernel(model, ids, decode_tokens=16)
    return model.bitnet_kernel


def _chosen(kernel, medians: dict, margin: float) -> str:
    """The chosen kernel, and why where another timed faster: ``pick_kernel`` switches only for a median lower by more
    than ``margin``, so a kernel a little faster than the incumbent is not chosen (timing noise decides nothing)."""
    own = medians.get(kernel, float("nan"))
    faster = [f"{k} only {(1 - v / own) * 100:.1f} % faster" for k, v in medians.items() if k != kernel and v < own]
    return f"{kernel} (kept: {', '.join(faster)}, not > {margin * 100:g} %)" if faster else str(kernel)


def kernel_summary(info: dict) -> str:
    """One line on ``choose_kernels``' result: each regime's kernel and the medians it was chosen on, saying so where
    the chosen one is not the fastest (``pick_kernel``'s margin kept it)."""
    nan, margin = float("nan"), float(info.get("margin", KERNEL_MARGIN))
    native = f", native {info['decode_native_ms']:.2f} ms" if "decode_native_ms" in info else ""
    pre = _chosen(info["kernel"], {"int8": info["int8_ms"], "float": info["float_ms"]}, margin)
    dec = _chosen(info.get("decode_kernel"), {k: info[f"decode_{k}_ms"] for k in ("int8", "float", "native")
                                               if f"decode_{k}_ms" in info}, margin)
    return (f"prefill (a 64-token forward) {pre} (int8 {info['int8_ms']:.2f} ms, float "
            f"{info['float_ms']:.2f} ms); decode (KV-cached steps of <= {info.get('decode_rows')} rows) "
            f"{dec} (int8 {info.get('decode_int8_ms', nan):.2f} ms, float "
            f"{info.get('decode_float_ms', nan):.2f} ms{native} per token)")
