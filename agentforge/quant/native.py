"""The "native" kernel of a frozen BitLinear: the per-token activation quantization and the int8 x ternary
codes product, rescaled, in ONE C++ call (``torch.utils.cpp_extension.load_inline``, compiled with the
system C++ compiler on the first ``build()``, about 30 s on 2 cores, then loaded from torch's extension
cache).

Why: at one input row (a decoding step) the packed model's cost is the number of tensor ops, not the
arithmetic; the quantizer alone is seven (``ternary.quantize_activations``), run for every distinct layer
input of every recursion step. Here the whole layer is one op, as an nn.Linear of the fp32 model is.

Numbers: exactly the "int8" kernel's (``BitLinear._ternary_matmul``), the same float32 operations per element
in the same order: amax = max|x_t| clamped to [eps, clip] (NaN propagated), s = amax / qmax,
q = clamp(nearbyint(x / s), -qmax - 1, qmax), acc = sum_i q_i codes_io in int32 (exact), y = float(acc) *
(s * gamma_o) + bias_o; compiled without floating-point contraction (-ffp-contract=off) or reciprocal
division, so no FMA or x * (1 / s) changes a rounding. Tested bitwise against the int8 kernel.
Scope: CPU, float32 inputs, per-token scales (not ``act_scale="static"``), at most 8 activation bits, rows
processed one after the other on one thread (meant for decoding steps; ``select_kernel`` offers it for
the decode regime only). Nothing is built unless ``build()`` is called; ``ready()`` says if it was.

``make install`` builds it once per machine (``main``); a stamp beside the binary
(the hash of the source, the flags and torch's version) lets ``installed()`` say, without compiling, whether
``build()`` would only load it (~0.1 s) — ``phase.native_kernel=auto`` uses it then, and never compiles.
"""
from __future__ import annotations

import hashlib
import platform
import time
from pathlib import Path

import torch

SOURCE = r"""
#include <torch/extension.h>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

torch::Tensor quantized_linear(torch::Tensor x_, double clip, double eps, int64_t qmax, torch::Tensor codes_t_,
                               torch::Tensor gamma_, c10::optional<torch::Tensor> bias) {
  // x [..., in] float32, codes_t [in, out] int8, gamma one float32 value or one per output, bias [out] float32
  const auto x = x_.contiguous(), codes_t = codes_t_.contiguous(), gamma = gamma_.contiguous();
  TORCH_CHECK(x.dtype() == torch::kFloat && x.dim() >= 1 && x.device().is_cpu(), "x: float32 [..., in] on CPU");
  TORCH_CHECK(codes_t.dtype() == torch::kChar && codes_t.dim() == 2 && codes_t.size(0) == x.size(-1),
              "codes_t: int8 [in, out]");
  const int64_t in = codes_t.size(0), out = codes_t.size(1), rows = x.numel() / in;
  TORCH_CHECK(gamma.dtype() == torch::kFloat && (gamma.numel() == 1 || gamma.numel() == out),
              "gamma: float32, one value or one per output");
  torch::Tensor b;
  const float* bp = nullptr;
  if (bias.has_value()) {
    b = bias->contiguous();
    TORCH_CHECK(b.dtype() == torch::kFloat && b.numel() == out, "bias: float32 [out]");
    bp = b.data_ptr<float>();
  }
  auto sizes = x.sizes().vec();
  sizes.back() = out;
  auto y = torch::empty(sizes, x.options());
  const float* xp = x.data_ptr<float>();
  const int8_t* cp = codes_t.data_ptr<int8_t>();
  const float* gp = gamma.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const bool per_out = gamma.numel() == out && out > 1;
  const float lo = (float)eps, hi = (float)std::max(clip, eps), fq = (float)qmax, fmin = (float)(-qmax - 1);
  std::vector<int32_t> acc(out);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * in;
    float* yr = yp + r * out;
    float amax = 0.f;
    bool nan = false;
    for (int64_t i = 0; i < in; ++i) {
      const float a = std::fabs(xr[i]);
      nan |= a != a;
      amax = a > amax ? a : amax;
    }
    if (nan) {
      std::fill(yr, yr + out, std::numeric_limits<float>::quiet_NaN());
      continue;
    }
    amax = std::min(std::max(amax, lo), hi);
    const float s = amax / fq;
    std::fill(acc.begin(), acc.end(), 0);
    for (int64_t i = 0; i < in; ++i) {
      const int32_t q = (int32_t)std::min(std::max(std::nearbyint(xr[i] / s), fmin), fq);
      if (q == 0) continue;
      const int8_t* c = cp + i * out;
      for (int64_t o = 0; o < out; ++o) acc[o] += q * (int32_t)c[o];
    }
    for (int64_t o = 0; o < out; ++o) {
      float v = (float)acc[o] * (s * gp[per_out ? o : 0]);
      if (bp) v = v + bp[o];
      yr[o] = v;
    }
  }
  return y;
}
"""

_EXT = None
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math"]


def build(verbose: bool = False) -> bool:
    """Compile (first time) or load the extension; False, with the reason printed, when it cannot be built."""
    global _EXT
    if _EXT is None:
        from torch.utils.cpp_extension import load_inline

        try:
            _EXT = load_inline(_name(), cpp_sources=SOURCE, functions=["quantized_linear"], verbose=verbose,
                               extra_cflags=FLAGS)
        except Exception as exc:  # no compiler, no headers, a failed build: the torch kernels stay in use
            print(f"warning: the native BitNet kernel could not be built ({type(exc).__name__}: {exc}); "
                  f"using the int8/float kernels")
            return False
        try:
            _stamp_path().write_text(_stamp())
        except OSError:  # a read-only cache: installed() stays False, build() still works
            pass
    return True


def installed() -> bool:
    """Whether this machine holds a build of this source, these flags and this torch (the stamp ``build()``
    writes beside the binary): ``build()`` then loads it instead of compiling."""
    try:
        return _stamp_path().read_text() == _stamp()
    except OSError:
        return False


def _name() -> str:
    return f"agentforge_bitnet_native_{_cpu_tag()}"


def _stamp() -> str:
    return hashlib.sha256("\0".join([SOURCE, *FLAGS, torch.__version__]).encode()).hexdigest()


def _stamp_path() -> Path:
    from torch.utils.cpp_extension import _get_build_directory  # the folder load_inline builds ``_name()`` in

    return Path(_get_build_directory(_name(), verbose=False)) / "agentforge_source.sha256"


def _cpu_tag() -> str:
    """A short hash of this CPU's feature flags: the build uses -march=native, so torch's extension cache
    (keyed by name and source) must not hand a binary built on another CPU to this one."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return hashlib.sha256(f"{platform.machine()}|{flags}".encode()).hexdigest()[:10]


def ready() -> bool:
    return _EXT is not None


def quantized_linear(x: torch.Tensor, clip: float, bits: int, eps: float, codes_t: torch.Tensor,
                     gamma: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y [..., out] for x [..., in] (float32, CPU), codes_t [in, out] int8, gamma [] / [out] / [out, 1]; see above."""
    return _EXT.quantized_linear(x, float(clip), eps, (1 << (bits - 1)) - 1, codes_t, gamma, bias)


def wanted(setting) -> bool:
    """``phase.native_kernel``: true builds the native decode kernel if needed (C++, ~30 s the first time on a
    machine), false never uses it, auto uses it where it is already built (``make install`` builds it: loading
    then takes ~0.1 s) and says how to get it where it is not. ``phase=bitnet`` and ``phase=eval`` (a
    packed model's kernel selection) read it; until 2026-11-28 eval never built it, so a packed model's
    speed figures depended on whether BitNet had run earlier in the same process (an audit)."""
    if setting == "auto":
        if installed():
            return True
        print("native BitNet decode kernel: not built on this machine (make install builds it once; "
              "phase.native_kernel=true builds it now, ~30 s); timing the int8/float kernels")
        return False
    return bool(setting)



def offer(setting) -> bool:
    """Build (or load) the kernel where ``phase.native_kernel`` (``wanted``) asks for it, so ``select_kernel`` times it
    as a decoding candidate; whether it is ready. What ``phase=bitnet`` and ``phase=eval`` call before choosing
    kernels."""
    return build() if wanted(setting) else False


def main() -> int:
    """Run by ``make install``: build or load the kernel, and say so in one line."""
    t0 = time.perf_counter()
    if build():
        print(f"native BitNet decode kernel: ready ({time.perf_counter() - t0:.1f} s; phase.native_kernel=auto uses it)")
    return 0  # a failed build is not an install failure: the int8/float kernels serve, build() said why
