"""The 8 technique combos: 3 binary choices, one per merge stage, read left to right.

    bit 1 (leftmost, value 4): interpolation   0 = Linear       1 = SLERP
    bit 2 (middle,   value 2): task vectors    0 = DARE         1 = TIES
    bit 3 (rightmost, value 1): layers         0 = FrankenMerge 1 = DFS

The combo id is the binary number the three bits spell: "000" = 0 = Linear + DARE + FrankenMerge,
"001" = 1 = Linear + DARE + DFS, ..., "111" = 7 = SLERP + TIES + DFS (the seed's table order). This
module is the only place that order is written down; everything else calls ``decode``/``bits``.
"""
from __future__ import annotations

from dataclasses import dataclass

STAGES = (("linear", "slerp"), ("dare", "ties"), ("frankenmerge", "dfs"))
PRETTY = {"linear": "Linear", "slerp": "SLERP", "dare": "DARE", "ties": "TIES",
          "frankenmerge": "FrankenMerge", "dfs": "DFS"}
N_COMBOS = 8


@dataclass(frozen=True)
class Combo:
    id: int
    interpolation: str   # "linear" | "slerp"
    task_vectors: str    # "dare" | "ties"
    layers: str          # "frankenmerge" | "dfs"

    @property
    def bits(self) -> str:
        return bits(self.id)

    @property
    def label(self) -> str:
        return " + ".join(PRETTY[t] for t in (self.interpolation, self.task_vectors, self.layers))


def bits(combo_id: int) -> str:
    """"000".."111" for 0..7."""
    _check(combo_id)
    return format(combo_id, "03b")


def decode(combo: int | str) -> Combo:
    """Combo from its id (0..7) or its bit string ("010")."""
    if isinstance(combo, str):
        if len(combo) != 3 or set(combo) - {"0", "1"}:
            raise ValueError(f"combo bits must be three of 0/1, got {combo!r}")
        combo = int(combo, 2)
    _check(combo)
    b = bits(combo)
    return Combo(combo, *(STAGES[i][int(b[i])] for i in range(3)))


def encode(interpolation: str, task_vectors: str, layers: str) -> int:
    chosen = (interpolation, task_vectors, layers)
    for i, name in enumerate(chosen):
        if name not in STAGES[i]:
            raise ValueError(f"stage {i + 1} is one of {STAGES[i]}, got {name!r}")
    return int("".join(str(STAGES[i].index(n)) for i, n in enumerate(chosen)), 2)


def flip(combo_id: int, bit: int) -> int:
    """Flip bit 1, 2 or 3 (left to right) of a combo id."""
    if bit not in (1, 2, 3):
        raise ValueError(f"bit must be 1, 2 or 3, got {bit}")
    return combo_id ^ (1 << (3 - bit))


def _check(combo_id) -> None:
    if not isinstance(combo_id, int) or isinstance(combo_id, bool) or not 0 <= combo_id < N_COMBOS:
        raise ValueError(f"combo id must be an integer 0..7, got {combo_id!r}")
