"""BitLinear (BitNet b1.58, Ma et al. 2024): a linear layer computing with ternary weights and 8-bit
activations, in one of two states.

* trainable: holds the latent full-precision ``weight``; the forward uses its ternarization (absmean,
  recomputed only when the weight has changed: ``_ste_offset``) and quantizes the input (absmax per
  token), and the backward passes gradients straight through both quantizers (STE, Bengio et al. 2013):
  w + (Q(w) - w).detach(), so d loss / d w = d loss / d Q(w); likewise x + (Q(x) - x).detach().
* frozen: its parameters are the ternary ``codes`` (int8) and the scale ``gamma`` — what the packed checkpoint
  stores. Kernels: int8 activations times the int8 codes into int32 (``torch._int_mm``, CPU) rescaled by
  s_x * gamma, or "float": the integer-valued x_q times the codes as fp32, rescaled the same way, which gives the
  int8 kernel's numbers bit for bit (its integer sums are exact in fp32); in decoding steps also "native", the
  int8 kernel's numbers from one C++ op per layer (``native.py``, once built). The first frozen call builds its plan
  (``_make_plan``), which caches the transposed codes as int8 AND as fp32 whichever kernel is chosen (a layer
  without activation quantization, ``act_bits`` None, caches the dense gamma * codes instead), so a frozen model
  in memory holds an fp32 copy of its weights beside the codes (the saving is on disk, not in RAM).

Inference speed (frozen state, no autograd): layers that read the same input tensor with the same
activation clip (q/k/v of an attention, gate/up of a SwiGLU) share one quantization of it — a one-entry
cache keyed by the input object, its version counter and the clip, so the numbers are exactly those of
quantizing per layer. Going further, in decoding steps (at most ``decode_rows`` rows) siblings fused at load
(``fuse.py``) are computed as one matmul over their concatenated weights, the other siblings' outputs served
from a one-entry cache with the same key; above decode_rows (a prefill, batches) each layer runs its own
matmul (fused there, the wide strided outputs made bench_bitnet's forward slower).
Which kernel each frozen layer uses ("int8" or "float"; for decoding also "native" once built) depends on the
number of input rows: ``kernel_decode`` for at most ``decode_rows`` (a decoding step), ``kernel`` above; both are
chosen by ``select_kernel`` from interleaved timings of the whole model on this machine, one per regime
(``load_packed`` does it once at load, on CPU). What a frozen call reads is cached as plain Python values
(``_make_plan``): nn.Module attribute lookups cost microseconds per call, which counts at one row.

No extra SubLN is inserted before the quantizer, a deliberate deviation from BitNet b1.58 (Ma et al. 2024), which
normalizes the input of every quantized projection: this layer replaces nn.Linear in a trained model, whose function
must not change beyond quantization. The Cognate blocks are pre-norm, so q/k/v and the MLP's gate/up already read a
normalized input; the attention output projection (o), the MLP's down projection and the memory's four projections
(query, value and gate read the residual stream, out its read-out) do not — there the absmax activation quantizer
sees unnormalized activations, where the paper puts a SubLN (tested by the inputs' RMS).
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from agentforge.evals.speed import interleaved_medians
from agentforge.quant import native
from agentforge.quant.ternary import EPS, PAPER_THRESHOLD, dequantize, quantize_activations, ternarize

# The one-entry caches of the frozen path (module state, not class attributes: clear_caches() resets both).
# [0]: the last shared quantization (input, (its _version, clip, bits, static, out), (q, s));
# [1]: the last fused siblings' outputs (input, group, (its _version, kernel), [outputs not yet served]).
_LAST: list = [None, None]
_VERSION = operator.attrgetter("_version")  # a tensor's in-place modification counter


def clear_caches() -> None:
    """Drop the frozen path's cached quantization and fused outputs (and the tensors they hold)."""
    _LAST[0] = _LAST[1] = None


class BitLinear(nn.Module):
    int8_kernel = True  # use torch._int_mm for frozen layers on CPU (switched off if the build lacks it)
    share_quantization = True  # reuse the last frozen layer's quantization of the same input (see above)
    decode_rows = 8  # inputs of at most this many rows (decoding steps) use ``kernel_decode``

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 threshold: float = PAPER_THRESHOLD, per_channel: bool = False, act_bits: int | None = 8,
                 act_scale: str = "token"):
        super().__init__()
        if act_scale not in ("token", "static"):
            raise ValueError(f"act_scale must be 'token' or 'static', got {act_scale!r}")
        self.in_features, self.out_features = in_features, out_features
        self.threshold, self.per_channel = float(threshold), bool(per_channel)
        self.act_bits, self.act_scale = act_bits, act_scale
        self.weight: nn.Parameter | None = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        # calibrated ceiling of the per-token input absmax (inf = not calibrated: pure per-token absmax)
        self.register_buffer("act_clip", torch.tensor(float("inf")))
        self.register_parameter("codes", None)  # int8 ternary codes, frozen state only
        self.kernel = "int8"  # frozen kernel for more than decode_rows rows: "int8" (torch._int_mm) or "float"
        self.kernel_decode = "float"  # ... for at most decode_rows rows; both set by select_kernel
        self.register_buffer("gamma", None)   # absmean scale, frozen state only

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_linear(cls, linear: nn.Linear, **quant) -> BitLinear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, **quant)
        layer.to(device=linear.weight.device)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    @classmethod
    def from_ternary(cls, codes: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | None,
                     act_clip: float | torch.Tensor = float("inf"), **quant) -> BitLinear:
        out_f, in_f = codes.shape
        layer = cls(in_f, out_f, bias is not None, **quant)
        layer.weight = None
        layer._set_frozen(codes.to(torch.int8), gamma.to(torch.float32).reshape(layer._gamma_shape()))
        if bias is not None:
            with torch.no_grad():
                layer.bias.copy_(bias)
        layer.act_clip.fill_(float(act_clip))
        return layer

    def _gamma_shape(self) -> tuple[int, ...]:
        return (self.out_features, 1) if self.per_channel else ()

    def _set_frozen(self, codes: torch.Tensor, gamma: torch.Tensor) -> None:
        # the codes are a (non-trainable, int8) parameter so that parameter counts and byte footprints
        # of a loaded model stay those of the model; the scale is a buffer
        self.codes = nn.Parameter(codes, requires_grad=False)
        self.register_buffer("gamma", gamma)
        self._derive_caches()

    def _derive_caches(self) -> None:
        """The kernel caches of the frozen weights (not saved), remade from ``codes`` and ``gamma``: codes^T for
        the int8 matmul; gamma*codes (fp32) built on first use; the plan (this layer's and, if fused, its
        siblings', whose concatenation holds this layer's weights) and the one-entry output caches dropped."""
        self.register_buffer("_codes_t", self.codes.t().contiguous(), persistent=False)
        self.register_buffer("_gamma_row", self.gamma.reshape(-1) if self.per_channel else self.gamma,
                             persistent=False)
        self.register_buffer("_dense", None, persistent=False)
        self.register_buffer("_codes_f_t", None, persistent=False)
        group = self.__dict__.get("_siblings")
        for m in group.layers if group is not None else [self]:
            m.__dict__["_plan"] = None
        clear_caches()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Loading copies into ``codes`` / ``gamma`` in place, which the caches derived from them would not see."""
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.frozen:
            self._derive_caches()

    def dense_weight(self) -> torch.Tensor:
        """gamma * codes as float32, cached (the float kernel's weight)."""
        if self._dense is None or self._dense.device != self.codes.device:
            self._dense = dequantize(self.codes, self.gamma)
        return self._dense

    def codes_float_t(self) -> torch.Tensor:
        """codes^T as float32 [in, out], cached: the float kernel's weight. Integer-valued, as the int8 kernel's,
        so that kernel's products and sums are exact in fp32 (below 2^24) and equal the int8 kernel's int32 ones."""
        if self._codes_f_t is None or self._codes_f_t.device != self.codes.device:
            self._codes_f_t = self._codes_t.float()
        return self._codes_f_t

    @property
    def frozen(self) -> bool:
        return self.weight is None

    def ternary(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes int8 [out, in], gamma float32 [] or [out, 1]) this layer computes with."""
        if self.frozen:
            return self.codes, self.gamma
        return ternarize(self.weight, self.threshold, self.per_channel)

    def freeze(self) -> None:
        """Drop the latent weight, keep only its ternary codes and scale (inference / packing)."""
        if self.frozen:
            return
        codes, gamma = self.ternary()
        self.weight = None
        self.__dict__["_ste"] = None
        self._set_frozen(codes, gamma)

    # -- compute ----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = self.__dict__.get("_plan")  # a plain dict read: nn.Module attribute lookups cost microseconds
        if plan is not None and tuple(map(_VERSION, plan[0])) == plan[1]:
            return self._frozen_forward(x, plan)
        if self.frozen:
            if plan is not None and tuple(map(_VERSION, plan[0][1:])) != plan[1][1:]:
                self._derive_caches()  # codes, gamma or bias edited in place: remake what is derived from them
            return self._frozen_forward(x, self._make_plan())
        w = self.weight + self._ste_offset()
        if self.act_bits is not None:  # x + (Q(x) - x).detach(), with Q(x) computed outside autograd
            x_ = x.detach()
            xq = quantize_activations(x_, self.act_bits, self.act_clip, self.act_scale == "static", out="dequantized")[0]
            x = x + (xq - x_)
        return F.linear(x, w, self.bias)

    def _ste_offset(self) -> torch.Tensor:
        """(Q(w) - w).detach(), the straight-through estimator's constant, cached until the weight changes
        (its version counter counts in-place updates such as optimizer steps; the object and storage are
        checked too): the recursion calls each layer max_steps times per forward, and evaluation / decoding
        calls it once per token, with the same weight — one ternarization per weight update instead."""
        w = self.weight
        key = (w._version, w.data_ptr(), w.dtype, self.threshold, self.per_channel)
        hit = self.__dict__.get("_ste")
        if hit is not None and hit[0] is w and hit[1] == key:
            return hit[2]
        codes, gamma = ternarize(w, self.threshold, self.per_channel)
        offset = (dequantize(codes, gamma).to(w.dtype) - w).detach()
        self.__dict__["_ste"] = (w, key, offset)
        return offset

    def _make_plan(self) -> tuple:
        """What the frozen forward reads, as plain Python values, cached until act_clip, codes, gamma or bias is
        modified (their version counters count in-place edits; an edited weight remakes the derived caches), the
        module is moved or cast (``_apply``) or weights are loaded into it (``_load_from_state_dict``): ((act_clip,
        codes, gamma[, bias]), their versions, clip as a float on CPU else the
        tensor, (gamma * codes)^T, codes^T, gamma per output row, bias, static, fused, nat). ``fused`` is
        (``fuse.FusedSiblings``, this layer's index in it) for a layer fused with its siblings, else None;
        a fused layer's plan is made by its group, for every member at once (``fuse.SiblingGroup``).
        ``nat``: the native kernel's arguments after x (``native.quantized_linear``) where it applies (CPU,
        per-token scales, <= 8 bits), else None."""
        group = self.__dict__.get("_siblings")
        if group is not None:
            return group.make_plans(self)
        return self._own_plan(None)

    def _own_plan(self, fused) -> tuple:
        c = self.act_clip
        clip = float(c) if c.device.type == "cpu" else c  # no device sync off the CPU
        static = self.act_scale == "static"
        nat = None if c.device.type != "cpu" or static or not self.act_bits or self.act_bits > 8 else \
            (clip, EPS, (1 << (self.act_bits - 1)) - 1, self._codes_t, self._gamma_row, self.bias)
        watch = (c, self.codes, self.gamma) + ((self.bias,) if self.bias is not None else ())
        w_t = self.dense_weight().t() if self.act_bits is None else self.codes_float_t()
        plan = (watch, tuple(map(_VERSION, watch)), clip, w_t, self._codes_t, self._gamma_row,
                self.bias, static, fused, nat)
        self.__dict__["_plan"] = plan
        return plan

    def _apply(self, fn, *args, **kwargs):
        self.__dict__["_plan"] = self.__dict__["_ste"] = None
        return super()._apply(fn, *args, **kwargs)

    def _frozen_forward(self, x: torch.Tensor, plan: tuple) -> torch.Tensor:
        """Inference on the ternary weights, by one of three kernels that give the same numbers, bit for bit (the
        activations are integers times a per-token scale, the weights ternary times gamma; each kernel sums the
        integer products exactly and rescales the sums by s_x * gamma in the same op):

        * "int8": int8 activations x int8 codes -> int32 (``torch._int_mm``, the W1.58A8 integer matmul of
          the paper), rescaled by s_x * gamma (CPU, <= 8 activation bits);
        * "float": the integer-valued activations x_q times the cached integer-valued fp32 codes^T, rescaled
          the same way: the path off the CPU. Its sums are exact in fp32 while |sum| < 2^24 (8-bit activations:
          in_features < 131 072), whatever order the matmul adds in, so they equal the int8 kernel's. Until
          2026-11-28 it multiplied s_x * x_q by gamma * codes in one ``addmm``: the same value up to float
          rounding, and an activation code one rounding flipped made a packed model's greedy tokens depend on
          the batch (which rows take the decode kernel; an audit: one of 16 GSM8K rows differed from token 29);
        * "native" (decoding steps, once ``native.build()`` ran; else "int8"): the int8 kernel's numbers, the
          quantization and the product in one C++ op (``native.py``).

        Which one runs depends on the number of rows: ``kernel_decode`` for at most ``decode_rows`` rows (a
        decoding step), ``kernel`` for more (prefill, batches); ``select_kernel`` sets both by measurement."""
        _, _, clip, w_t, codes_t, gamma_row, bias, static, fused, nat = plan
        if self.act_bits is None:
            return F.linear(x, w_t.t(), bias)
        in_f = self.in_features
        if x.numel() > BitLinear.decode_rows * in_f:  # prefill / batches: one matmul per layer
            return self._ternary_matmul(x, clip, static, self.kernel, w_t, codes_t, gamma_row, bias)
        kernel = self.kernel_decode
        if kernel == "native" and nat is not None and native._EXT is not None and x.dtype == torch.float32 \
                and not torch.is_grad_enabled():  # one op per layer (fused measured 2-3% slower); no autograd
            return native._EXT.quantized_linear(x, *nat)
        if fused is not None and BitLinear.share_quantization and not torch.is_grad_enabled():  # detached biases
            return self._fused_forward(x, clip, static, kernel, *fused)
        return self._ternary_matmul(x, clip, static, kernel, w_t, codes_t, gamma_row, bias)

    def _ternary_matmul(self, x: torch.Tensor, clip, static: bool, kernel: str, w_t: torch.Tensor,
                        codes_t: torch.Tensor, gamma_row: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x (quantized with this layer's settings) times the ternary weight given as codes^T (fp32, the float
        kernel's; int8, the int8 kernel's) and gamma per output: this layer's own or its fused siblings'
        concatenation (``fuse.py``). Both kernels' integer sums go through one rescale, so their numbers are one."""
        in_f, out_f = self.in_features, w_t.shape[1]
        acc = None
        if kernel in ("int8", "native") and BitLinear.int8_kernel and self.act_bits <= 8 and x.device.type == "cpu":
            q, s = self._quantize_shared(x, clip, static, "int8")
            try:
                acc = torch._int_mm(q.view(-1, in_f), codes_t)   # int32
            except (RuntimeError, AttributeError):  # this build has no CPU int8 matmul: use the float one
                BitLinear.int8_kernel = False
        if acc is None:
            q, s = self._quantize_shared(x, clip, static, "codes")
            acc = torch.mm(q.reshape(-1, in_f), w_t)   # the same integers, exact in fp32
        y = acc.view(*x.shape[:-1], out_f) * (s * gamma_row)
        return y + bias if bias is not None else y

    def _fused_forward(self, x: torch.Tensor, clip, static: bool, kernel: str, group, index: int) -> torch.Tensor:
        """This layer's output from the one matmul of its fused siblings (``fuse.FusedSiblings``) on x: served
        from the one-entry cache ``_LAST[1]`` when a sibling already computed it for this same, unmodified
        x with the same kernel (each member's output is served once per computation), else computed."""
        key = (x._version, kernel)
        hit = _LAST[1]
        if hit is not None and hit[0] is x and hit[1] is group and hit[2] == key:
            outs = hit[3]
            y = outs[index]
            if y is not None:
                outs[index] = None
                return y
        outs = list(group.compute(self, x, clip, static, kernel))
        y, outs[index] = outs[index], None
        _LAST[1] = (x, group, key, outs)
        return y

    def _quantize_shared(self, x: torch.Tensor, clip, static: bool, out: str) -> tuple[torch.Tensor, torch.Tensor]:
        """quantize_activations(x, out=out), reused when the previous frozen layer quantized this same,
        unmodified tensor with the same clip and output form (no autograd: inference only; CPU clips)."""
        if not BitLinear.share_quantization or (x.requires_grad and torch.is_grad_enabled()):
            return quantize_activations(x, self.act_bits, clip, static, out=out)
        key = (x._version, clip, self.act_bits, static, out)
        hit = _LAST[0]
        if hit is not None and hit[0] is x and isinstance(clip, float) and hit[1] == key:
            return hit[2]
        q_s = quantize_activations(x, self.act_bits, clip, static, out=out)
        _LAST[0] = (x, key, q_s)
        return q_s

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"frozen={self.frozen}, per_channel={self.per_channel}, act_bits={self.act_bits}, "
                f"act_scale={self.act_scale}")


def _time_kernels(layers: list[BitLinear], attr: str, fn, repeats: int,
                  kernels: tuple[str, ...] = ("int8", "float")) -> dict[str, float]:
    """Median ms of ``fn()`` with every layer's ``attr`` set to each of ``kernels``: one untimed round, then
    ``repeats`` rounds rotating which kernel runs first (``evals.speed.interleaved_medians``; setting the
    attribute, a few microseconds, is inside each timed call, alike for all)."""
    def case(kernel):
        def run():
            for m in layers:
                setattr(m, attr, kernel)
            fn()
        return run

    med = interleaved_medians({k: case(k) for k in kernels}, repeats)
    return {k: 1e3 * v for k, v in med.items()}


KERNEL_MARGIN = 0.05   # a kernel must beat the incumbent's median by more than 5 % to replace it


def pick_kernel(medians: dict[str, float], margin: float = KERNEL_MARGIN) -> str:
    """The first kernel of ``medians`` (insertion order: the default first), replaced by a later one only when that
    one's median time is below the incumbent's by more than ``margin`` (a share)."""
    names = list(medians)
    best = names[0]
    for k in names[1:]:
        if medians[k] < medians[best] * (1 - margin):
            best = k
    return best


@torch.no_grad()
def select_kernel(model: nn.Module, ids: torch.Tensor, repeats: int = 5, decode_tokens: int = 0) -> dict:
    """Choose each regime's kernel by measurement on this machine, for every frozen BitLinear of ``model``.

    Prefill / batch regime (``kernel``): ``model(ids)``, int8 and float kernels interleaved ``repeats``
    times each. Decode regime (``kernel_decode``, inputs of at most ``BitLinear.decode_rows`` rows), when
    ``decode_tokens`` > 0 and the model has a KV cache: feeding ``ids[:1, :decode_tokens]`` to a fresh
    ``model.kv_decoder(1)`` one token at a time, timed the same way (ms per token), with the "native" kernel
    (``native.py``) as a third candidate when it was built. A kernel replaces the first listed one (int8) only
    when its median is lower by more than ``KERNEL_MARGIN`` (``pick_kernel``): timing noise between kernels that run
    alike does not decide; returns the choices and the medians in ms."""
    layers = [m for m in model.modules() if isinstance(m, BitLinear) and m.frozen]
    med = _time_kernels(layers, "kernel", lambda: model(ids), repeats)
    info = {"kernel": pick_kernel(med), "int8_ms": med["int8"], "float_ms": med["float"], "margin": KERNEL_MARGIN}
    for m in layers:
        m.kernel = info["kernel"]
    if decode_tokens > 0 and hasattr(model, "kv_decoder"):
        prompt = ids[:1, :decode_tokens]
        kernels = ("int8", "float", "native") if native.ready() and ids.device.type == "cpu" else ("int8", "float")
        med = _time_kernels(layers, "kernel_decode", lambda: model.kv_decoder(1).next_logits(prompt), repeats,
                            kernels)
        per_token = {k: v / prompt.shape[1] for k, v in med.items()}
        info.update(decode_kernel=pick_kernel(per_token), decode_rows=BitLinear.decode_rows,
                    **{f"decode_{k}_ms": v for k, v in per_token.items()})
        for m in layers:
            m.kernel_decode = info["decode_kernel"]
    clear_caches()
    return info
