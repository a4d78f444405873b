"""pass@k, the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on Code", eq. 1):
with n samples of which c are correct, pass@k = 1 - C(n-c, k) / C(n, k), computed as the stable product
1 - prod_{i=n-c+1}^{n} (1 - k/i); per problem, and averaged over problems."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples, c of them correct (Chen et al. 2021)."""
    if not (0 <= c <= n) or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_per_problem(num_samples: int, num_correct: Sequence[int], k: int) -> list[float]:
    return [pass_at_k(num_samples, int(c), k) for c in num_correct]


def mean_pass_at_k(num_samples: int, num_correct: Sequence[int], k: int) -> float:
    vals = pass_at_k_per_problem(num_samples, num_correct, k)
    return sum(vals) / len(vals) if vals else float("nan")
