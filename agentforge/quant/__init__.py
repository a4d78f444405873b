"""BitNet b1.58 compression: ternary weights, 8-bit activations, the BitLinear layer, packing, calibration.

Ma et al. 2024, "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits" (arXiv:2402.17764).
Pure compute except ``checkpoint.py``, which reads and writes the packed checkpoint through ``agentforge.io``,
and ``native.py``, whose ``build()`` compiles its C++ kernel into torch's extension cache (reading
/proc/cpuinfo for the cache key). ``report.py`` holds Phase 4's comparisons with their evidence (the paired
accuracy drop, the speedup's CI) and prints its summary.
"""
from agentforge.quant.bitlinear import BitLinear
from agentforge.quant.ternary import absmean_scale, dequantize, quantize_activations, ternarize

__all__ = ["BitLinear", "absmean_scale", "dequantize", "quantize_activations", "ternarize"]
