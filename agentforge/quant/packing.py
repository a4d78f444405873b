"""Storage of ternary codes: 5 trits per byte (base 3, 1.6 bits/weight) or 4 per byte (2 bits/weight).

base3: codes c in {-1,0,1} become digits d = c + 1 in {0,1,2}; five digits make one byte
b = d0 + 3 d1 + 9 d2 + 27 d3 + 81 d4 <= 242 (3^5 = 243 <= 256, so 8/5 = 1.6 bits per weight, close to
the log2(3) ~ 1.585 limit). 2bit: d0 | d1 << 2 | d2 << 4 | d3 << 6 (digit 3 is never written).
The tail is padded with the digit of 0. Unpacking checks the length, that every byte is a valid code and
that the padding is zero, so a corrupt file fails loudly instead of loading wrong weights.
"""
from __future__ import annotations

import math

import torch

_POW3 = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int32)
# all 243 valid bytes -> their 5 codes (-1/0/1)
_BASE3_TABLE = torch.stack([(torch.arange(243) // p) % 3 for p in _POW3.tolist()], dim=1).to(torch.int8) - 1
_BASE4_TABLE = torch.stack([(torch.arange(256) >> s) & 3 for s in (0, 2, 4, 6)], dim=1).to(torch.int8) - 1

SCHEMES = {"base3": 5, "2bit": 4}  # weights per byte


def packed_size(numel: int, scheme: str = "base3") -> int:
    """Bytes the packed codes of ``numel`` weights take."""
    return math.ceil(numel / SCHEMES[scheme])


def bits_per_weight(numel: int, scheme: str = "base3") -> float:
    return 8 * packed_size(numel, scheme) / max(numel, 1)


def _digits(codes: torch.Tensor, per_byte: int) -> torch.Tensor:
    flat = codes.detach().reshape(-1).to(torch.int32)
    if flat.numel() and (flat.min() < -1 or flat.max() > 1):
        raise ValueError("ternary codes must be in {-1, 0, 1}")
    pad = (-flat.numel()) % per_byte
    flat = torch.cat([flat, torch.zeros(pad, dtype=torch.int32)]) if pad else flat
    return (flat + 1).view(-1, per_byte)


def pack(codes: torch.Tensor, scheme: str = "base3") -> torch.Tensor:
    """Ternary codes (any shape) -> 1-D uint8 tensor of ``packed_size(codes.numel())`` bytes."""
    if scheme == "base3":
        return (_digits(codes, 5) * _POW3).sum(dim=1).to(torch.uint8)
    if scheme == "2bit":
        d = _digits(codes, 4)
        return (d[:, 0] | d[:, 1] << 2 | d[:, 2] << 4 | d[:, 3] << 6).to(torch.uint8)
    raise ValueError(f"unknown packing scheme {scheme!r}; choose from {sorted(SCHEMES)}")


def unpack(packed: torch.Tensor, numel: int, scheme: str = "base3") -> torch.Tensor:
    """1-D uint8 bytes -> int8 codes [numel]; ValueError if the bytes cannot have come from ``pack``."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown packing scheme {scheme!r}; choose from {sorted(SCHEMES)}")
    if packed.dtype != torch.uint8 or packed.ndim != 1:
        raise ValueError(f"packed codes must be a 1-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    expect = packed_size(numel, scheme)
    if packed.numel() != expect:
        raise ValueError(f"{packed.numel()} packed bytes for {numel} weights, expected {expect}")
    idx = packed.to(torch.long)
    if scheme == "base3":
        if idx.numel() and int(idx.max()) > 242:
            raise ValueError(f"byte value {int(idx.max())} is not a base-3 code of 5 trits (max 242)")
        codes = _BASE3_TABLE[idx].reshape(-1)
    else:
        codes = _BASE4_TABLE[idx].reshape(-1)
        if bool((codes == 2).any()):
            raise ValueError("2-bit code 3 found; only 0, 1, 2 are written")
    if bool((codes[numel:] != 0).any()):
        raise ValueError("non-zero padding after the last weight")
    return codes[:numel].clone()
