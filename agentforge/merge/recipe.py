"""A merge recipe (the genome the evolution searches) and how it becomes one Cognate state dict.

A recipe merges the three input models in three stages, one technique each, chosen by its combo
(``combos.py``):

1. interpolation, Linear or SLERP, with weights ``weights``:        theta_I = interp(x_1, x_2, x_3)
2. task vectors, DARE or TIES, around theta_I with weights ``tv_weights``, density ``density`` and
   scale ``lam``:  tau_i = x_i - theta_I,  theta_T = theta_I + lam * merge(tau_1, tau_2, tau_3)
   (TIES keeps, per entry, what the models agree on beyond the interpolation; DARE adds a random,
   rescaled sparse part of the weighted deviation; lam = 0 leaves theta_I)
3. layers, FrankenMerge or DFS, over four sources: 0 = theta_T, 1..3 = the input models.
   FrankenMerge stacks ``slices`` (source, start, end); DFS runs the path ``hops`` (source, layer)
   with per-hop input ``scales`` (folded into the weights exactly, see ``layers.py``). Either may
   change the number of layers.

Parameters vs buffers. Only parameters are merged. The long-term-memory bank (buffers
``memory.keys/values/usage/filled``) holds one model's stored states and its slot count differs
between the inputs (m1 128, m2 256, m3 16 slots), so the merged model takes the bank and every
non-shape hyperparameter (max_steps, act_threshold, halt_bias_init, ltm_slots, ...) from the
*base* input ``base`` (0..2); its ``n_layers`` is the length of the stage-3 layer plan.

The inputs themselves are recipes (``identity_recipe``), in every combo. With one-hot stage-1
weights (1 for input i, exactly 0 for the others) both interpolations return x_i bit for bit: Linear
computes (1 * x_i + 0 * x_j + 0 * x_k) / 1, and the SLERP chain only ever runs t = 0 (keep the
running tensor) or t = 1 (take the next), where sin(theta)/sin(theta) = 1 and the other endpoint is
multiplied by 0 (mergekit's ``linear`` with a weight of 0 drops that model; its ``slerp`` at t = 0/1
returns an endpoint). With lam = 0 and one-hot task-vector weights, stage 2 adds 0 (TIES and DARE
alike; tau_i = x_i - theta_I is 0 anyway), and the identity layer plan (FrankenMerge ``(0, 0, n)`` or
DFS hops ``(0, 0)..(0, n-1)`` with unit scales, which fold as a division by exactly 1) keeps theta_T.
With ``base = i`` the memory bank and hyperparameters are x_i's too, so the state dict equals input
i's exactly, non-layer parameters (embed, lm_head, norm, halt_head, memory.*) included. Only these
seeds hold zero weights: ``random_recipe`` draws weights in ``WEIGHT_RANGE`` and ``mutate`` clips a
mutated weight into it, so a weight of 0 stays 0 until it mutates, and no weight vector is all 0.
Seeding generation 0 with the identity recipes lets elitism guarantee that the champion is never
worse than the best input on the selection set (see ``phases/evomerge.py``).

Recipes are frozen and hashable (floats rounded to 4 decimals), so the GA caches evaluations by recipe
(and ``evaluator.py`` by a hash of the merged weights, so different recipes of one model share one);
DARE's random mask is seeded by ``dare_seed`` and each tensor's name, so a recipe always gives the
same tensors.
"""
from __future__ import annotations

import math
import random
import zlib
from dataclasses import asdict, dataclass, replace

import torch

from agentforge.merge import layers as layer_ops
from agentforge.merge import techniques
from agentforge.merge.combos import N_COMBOS, decode
from agentforge.models import CognateConfig

N_INPUTS = 3
N_SOURCES = N_INPUTS + 1       # stage-3 sources: 0 = the stage-2 merge, 1..3 = the inputs
BUFFERS = ("memory.keys", "memory.values", "memory.usage", "memory.filled")  # the memory bank, not merged
DENSITY_RANGE = (0.1, 1.0)
LAM_RANGE = (0.0, 1.0)
WEIGHT_RANGE = (0.05, 1.0)
SCALE_RANGE = (0.5, 2.0)


def _r(x: float) -> float:
    return round(float(x), 4)


@dataclass(frozen=True)
class Recipe:
    combo: int                                   # 0..7, see combos.py
    base: int                                    # input (0..2) giving memory bank and hyperparameters
    weights: tuple[float, ...]                   # stage 1 weights of the 3 inputs (0 only in identity seeds)
    tv_weights: tuple[float, ...]                # stage 2 weights of the 3 task vectors
    density: float                               # stage 2 density (DARE keep rate 1 - p, TIES top-k share)
    lam: float                                   # stage 2 scale of the merged task vector
    dare_seed: int                               # DARE's mask seed
    slices: tuple[tuple[int, int, int], ...]     # FrankenMerge: (source, start, end)
    hops: tuple[tuple[int, int], ...]            # DFS: (source, layer)
    scales: tuple[float, ...]                    # DFS: input scale per hop

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: ([list(x) for x in v] if k in ("slices", "hops") else list(v) if isinstance(v, tuple) else v)
                for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        return canonical(cls(combo=int(d["combo"]), base=int(d["base"]), weights=tuple(d["weights"]),
                             tv_weights=tuple(d["tv_weights"]), density=d["density"], lam=d["lam"],
                             dare_seed=int(d["dare_seed"]), slices=tuple(tuple(s) for s in d["slices"]),
                             hops=tuple(tuple(h) for h in d["hops"]), scales=tuple(d["scales"])))

    def n_layers(self) -> int:
        if decode(self.combo).layers == "dfs":
            return len(self.hops)
        return sum(e - s for _, s, e in self.slices)


def canonical(r: Recipe) -> Recipe:
    """Round the floats so equal recipes hash equally (and survive a JSON round trip)."""
    return replace(r, weights=tuple(_r(w) for w in r.weights), tv_weights=tuple(_r(w) for w in r.tv_weights),
                   density=_r(r.density), lam=_r(r.lam), scales=tuple(_r(s) for s in r.scales),
                   slices=tuple((int(a), int(b), int(c)) for a, b, c in r.slices),
                   hops=tuple((int(a), int(b)) for a, b in r.hops))


# -- building the merged model ----------------------------------------------------------------------------

def _tensor_generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)


def materialize(recipe: Recipe, states: list[dict], configs: list[CognateConfig],
                dare_rescale: str = "l1") -> tuple[dict, CognateConfig]:
    """(state dict, config) of the merged model. ``states``/``configs`` are the 3 inputs, which must
    share every parameter shape (see ``incompatibility``); ``dare_rescale`` is DARE's rescale rule
    (``techniques.RESCALES``: mergekit's ``l1`` or the paper's ``inverse_density``)."""
    if len(states) != N_INPUTS or len(configs) != N_INPUTS:
        raise ValueError(f"a recipe merges {N_INPUTS} models, got {len(states)}")
    combo = decode(recipe.combo)
    base_state = states[recipe.base]
    # a tied lm_head is the embedding itself: merged once, under the embedding's name (DARE seeds its mask by
    # name, so merging both names gave the one tensor two masks, and loading kept whichever came last)
    tied = "lm_head.weight" if configs[recipe.base].tie_embeddings and "embed.weight" in base_state else None
    param_keys = [k for k in base_state if k not in BUFFERS and k != tied]
    merged: dict[str, torch.Tensor] = {}
    for k in param_keys:
        xs = [s[k] for s in states]
        if combo.interpolation == "linear":
            interp = techniques.linear(xs, recipe.weights)
        else:
            interp = techniques.slerp_many(xs, recipe.weights)
        if combo.task_vectors == "ties":
            merged[k] = techniques.ties(interp, xs, recipe.tv_weights, recipe.density, recipe.lam)
        else:
            merged[k] = techniques.dare(interp, xs, recipe.tv_weights, recipe.density, recipe.lam,
                                        generator=_tensor_generator(recipe.dare_seed, k), rescale=dare_rescale)
    if tied:
        merged[tied] = merged["embed.weight"]
    for k, v in base_state.items():  # the base model's memory bank
        if k not in merged:
            merged[k] = v.clone()
    sources = [merged, *states]
    if combo.layers == "dfs":
        out = layer_ops.dfs([(sources[s], i) for s, i in recipe.hops], recipe.scales, merged)
    else:
        out = layer_ops.frankenmerge([(sources[s], a, b) for s, a, b in recipe.slices], merged)
    cfg = CognateConfig.from_dict({**configs[recipe.base].to_dict(), "n_layers": layer_ops.n_layers_of(out)})
    return out, cfg


MERGE_SHAPE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "ffn_hidden", "ltm_key_dim", "tie_embeddings")


# keys that must match although no shape holds them: a model trained with ``memory: false`` never trained its memory's
# weights (they are still at their initialization), so averaging them with a trained memory's, or taking the base's
# switch for a merge of both kinds, would give a memory that neither input learned to use; likewise a gate trained on
# the normalized stream (``ltm_gate_norm``) and one trained on the stream itself read inputs of different scales
MERGE_SAME_FIELDS = ("memory", "ltm_gate_norm")


def incompatibility(a: CognateConfig, b: CognateConfig) -> str | None:
    """Why two Cognate configs cannot be merged (None when they can): every parameter shape must match, and the
    memory switch and the gate's input (``MERGE_SAME_FIELDS``); the memory slot count and the other non-shape hyperparameters may differ
    (they come from the base)."""
    diff = {k: (getattr(a, k), getattr(b, k)) for k in (*MERGE_SHAPE_FIELDS, *MERGE_SAME_FIELDS)
            if getattr(a, k) != getattr(b, k)}
    return None if not diff else ", ".join(f"{k} {x} vs {y}" for k, (x, y) in diff.items())


# -- the search operators -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Space:
    """Bounds of the layer plan: the inputs' depth and the merged depth allowed."""

    n_layers: int
    min_layers: int
    max_layers: int


def _random_slices(rng: random.Random, sp: Space) -> tuple:
    if rng.random() < 0.5:
        return ((0, 0, sp.n_layers),)  # the merged model as is
    depth = rng.randint(sp.min_layers, sp.max_layers)
    out, left = [], depth
    while left > 0:
        length = rng.randint(1, min(left, sp.n_layers))
        start = rng.randint(0, sp.n_layers - length)
        out.append((rng.choice([0, 0, 1, 2, 3]), start, start + length))
        left -= length
    return tuple(out)


def _random_hops(rng: random.Random, sp: Space) -> tuple[tuple, tuple]:
    depth = rng.randint(sp.min_layers, sp.max_layers)
    hops = tuple((rng.choice([0, 0, 1, 2, 3]), min(k * sp.n_layers // depth, sp.n_layers - 1)) for k in range(depth))
    scales = tuple(math.exp(rng.uniform(-0.2, 0.2)) for _ in range(depth))
    return hops, scales


def random_recipe(rng: random.Random, sp: Space, combo: int | None = None) -> Recipe:
    hops, scales = _random_hops(rng, sp)
    return canonical(Recipe(
        combo=rng.randrange(N_COMBOS) if combo is None else combo, base=rng.randrange(N_INPUTS),
        weights=tuple(rng.uniform(*WEIGHT_RANGE) for _ in range(N_INPUTS)),
        tv_weights=tuple(rng.uniform(*WEIGHT_RANGE) for _ in range(N_INPUTS)),
        density=rng.uniform(0.3, 1.0), lam=rng.uniform(*LAM_RANGE), dare_seed=rng.randrange(2**31),
        slices=_random_slices(rng, sp), hops=hops, scales=scales))


def identity_recipe(i: int, sp: Space, combo: int = 0) -> Recipe:
    """The recipe whose model is input ``i`` (0..2) itself, exactly, in any combo (module docstring):
    one-hot weights, lam = 0, base i, and the identity layer plan of both FrankenMerge and DFS."""
    if not 0 <= i < N_INPUTS:
        raise ValueError(f"input index must be 0..{N_INPUTS - 1}, got {i}")
    one_hot = tuple(float(j == i) for j in range(N_INPUTS))
    return canonical(Recipe(combo=decode(combo).id, base=i, weights=one_hot, tv_weights=one_hot, density=1.0,
                            lam=0.0, dare_seed=0, slices=((0, 0, sp.n_layers),),
                            hops=tuple((0, k) for k in range(sp.n_layers)), scales=(1.0,) * sp.n_layers))


def initial_population(rng: random.Random, sp: Space, size: int) -> list[Recipe]:
    """Generation 0: member k has combo k mod 8 (so the 8 combos are each present once when size >= 8);
    the first three members are the identity recipes of inputs 1, 2, 3 (combos 000, 001, 010), the rest
    random recipes. With size < 3 only the first ``size`` inputs are seeded."""
    return [identity_recipe(k, sp, k % N_COMBOS) if k < N_INPUTS else random_recipe(rng, sp, k % N_COMBOS)
            for k in range(size)]


def _clip(x: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, x))


def mutate(r: Recipe, rng: random.Random, sp: Space, rate: float, sigma: float) -> Recipe:
    """Each gene changes with probability ``rate``: combo bits flip, the base is redrawn, real genes
    get Gaussian noise of std ``sigma`` (times the gene's range; scales multiplicatively), layer plans
    change one source/range/layer or grow/shrink by one within the allowed depth."""
    hit = lambda: rng.random() < rate
    combo = r.combo
    for bit in (4, 2, 1):
        if hit():
            combo ^= bit
    base = rng.randrange(N_INPUTS) if hit() else r.base
    w = tuple(_clip(x + rng.gauss(0, sigma), *WEIGHT_RANGE) if hit() else x for x in r.weights)
    tw = tuple(_clip(x + rng.gauss(0, sigma), *WEIGHT_RANGE) if hit() else x for x in r.tv_weights)
    density = _clip(r.density + rng.gauss(0, sigma), *DENSITY_RANGE) if hit() else r.density
    lam = _clip(r.lam + rng.gauss(0, sigma), *LAM_RANGE) if hit() else r.lam
    dare_seed = rng.randrange(2**31) if hit() else r.dare_seed
    slices = list(r.slices)
    for j, (s, a, b) in enumerate(slices):
        if hit():
            s = rng.randrange(N_SOURCES)
        if hit():
            length = b - a
            a = rng.randint(0, sp.n_layers - length)
            b = a + length
        slices[j] = (s, a, b)
    depth = sum(b - a for _, a, b in slices)
    if hit() and depth < sp.max_layers:
        a = rng.randrange(sp.n_layers)
        slices.insert(rng.randint(0, len(slices)), (rng.randrange(N_SOURCES), a, a + 1))
    elif hit() and len(slices) > 1:  # shrink: drop one slice whose removal keeps depth >= min_layers
        removable = [j for j, (_, a, b) in enumerate(slices) if depth - (b - a) >= sp.min_layers]
        if removable:
            slices.pop(rng.choice(removable))
    hops, scales = list(r.hops), list(r.scales)
    for j, (s, i) in enumerate(hops):
        if hit():
            s = rng.randrange(N_SOURCES)
        if hit():
            i = rng.randrange(sp.n_layers)
        hops[j] = (s, i)
        if hit():
            scales[j] = _clip(scales[j] * math.exp(rng.gauss(0, sigma)), *SCALE_RANGE)
    if hit() and len(hops) < sp.max_layers:
        j = rng.randint(0, len(hops))
        hops.insert(j, (rng.randrange(N_SOURCES), rng.randrange(sp.n_layers)))
        scales.insert(j, 1.0)
    elif hit() and len(hops) > sp.min_layers:
        j = rng.randrange(len(hops))
        hops.pop(j)
        scales.pop(j)
    return canonical(Recipe(combo, base, w, tw, density, lam, dare_seed, tuple(slices), tuple(hops), tuple(scales)))


def crossover(a: Recipe, b: Recipe, rng: random.Random) -> Recipe:
    """Uniform crossover by gene (each combo bit separately; a layer plan is one gene)."""
    pick = lambda x, y: x if rng.random() < 0.5 else y
    combo = sum(pick(a.combo & bit, b.combo & bit) for bit in (4, 2, 1))
    hops, scales = pick((a.hops, a.scales), (b.hops, b.scales))
    return canonical(Recipe(combo, pick(a.base, b.base), pick(a.weights, b.weights),
                            pick(a.tv_weights, b.tv_weights), pick(a.density, b.density), pick(a.lam, b.lam),
                            pick(a.dare_seed, b.dare_seed), pick(a.slices, b.slices), hops, scales))


def features(r: Recipe, sp: Space) -> list[float]:
    """A fixed-length vector of the genes each in [0, 1], for pairwise diversity.

    Only the genes the recipe's combo uses count (an unused DFS path does not make two Linear+DARE+
    FrankenMerge recipes different); the combo bits and base are one-hot, the weights normalized.
    """
    c = decode(r.combo)
    f = [float(x) for x in format(r.combo, "03b")] + [float(r.base == i) for i in range(N_INPUTS)]
    f += [x / sum(r.weights) for x in r.weights] + [x / sum(r.tv_weights) for x in r.tv_weights]
    f += [r.density, r.lam]
    plan = ([(s, i, 1.0) for s, a, b in r.slices for i in range(a, b)] if c.layers == "frankenmerge"
            else [(s, i, sc) for (s, i), sc in zip(r.hops, r.scales)])
    for k in range(sp.max_layers):  # per output depth: source one-hot, layer index, log-scale
        if k < len(plan):
            s, i, sc = plan[k]
            f += [float(s == j) for j in range(N_SOURCES)] + [i / max(sp.n_layers - 1, 1), math.log(sc) / math.log(4) + 0.5]
        else:
            f += [0.0] * (N_SOURCES + 2)
    return f
