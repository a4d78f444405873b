"""Merge techniques on small tensors with hand-derived answers, the combo decoding, and recipes."""
from __future__ import annotations

import math

import pytest
import torch

from agentforge.merge import combos, layers, registry, techniques
from agentforge.merge.recipe import (
    Recipe,
    Space,
    canonical,
    identity_recipe,
    materialize,
)
from agentforge.models import CognateConfig, CognateModel
from agentforge.models.layers import RMSNorm

T = torch.tensor
SMALL = {"vocab_size": 272, "d_model": 16, "n_heads": 2, "ffn_hidden": 24, "n_layers": 2, "window": 8, "max_seq_len": 32,
             "ltm_key_dim": 8}


# -- tensor techniques ------------------------------------------------------------------------------------

def test_linear_weighted_and_normalized():
    a, b = T([1.0, 2.0]), T([3.0, 4.0])
    assert torch.allclose(techniques.linear([a, b], [1, 3]), T([2.5, 3.5]))           # (1*1+3*3)/4, (2+12)/4
    assert torch.allclose(techniques.linear([a, b], [1, 3], normalize=False), T([10.0, 14.0]))


def test_slerp_orthogonal_and_unequal_norms():
    v0, v1 = T([1.0, 0.0]), T([0.0, 1.0])
    h = math.sqrt(0.5)
    assert torch.allclose(techniques.slerp(0.5, v0, v1), T([h, h]))
    assert torch.allclose(techniques.slerp(0.0, v0, v1), v0)
    assert torch.allclose(techniques.slerp(1.0, v0, v1), v1)
    # theta = pi/2 from the directions; the weights sin(theta/2)/sin(theta) apply to the raw vectors
    assert torch.allclose(techniques.slerp(0.5, T([2.0, 0.0]), v1), T([2 * h, h]))
    # t = 1/3 at 90 degrees: sin(60)/1 and sin(30)/1
    out = techniques.slerp(1 / 3, v0, v1)
    assert torch.allclose(out, T([math.sin(math.pi / 3), math.sin(math.pi / 6)]), atol=1e-6)


def test_slerp_collinear_falls_back_to_lerp():
    assert torch.allclose(techniques.slerp(0.5, T([1.0, 0.0]), T([2.0, 0.0])), T([1.5, 0.0]))
    assert torch.allclose(techniques.slerp(0.25, T([1.0, 1.0]), T([-1.0, -1.0])), T([0.5, 0.5]))  # dot = -1


def test_slerp_whole_tensor_not_rowwise():
    # rows are orthogonal pairs but the flattened tensors are collinear: one lerp over the whole tensor
    a = T([[1.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(techniques.slerp(0.5, a, 3 * a), 2 * a)


def test_slerp_chain_equals_linear_on_collinear_tensors():
    x = T([1.0, 2.0, 3.0])
    ts = [x, 2 * x, 4 * x]
    assert torch.allclose(techniques.slerp_many(ts, [1, 1, 2]), techniques.linear(ts, [1, 1, 2]))


def test_magnitude_trim_keeps_top_k():
    assert torch.equal(techniques.magnitude_sparsify(T([3.0, -1.0, 2.0, -4.0]), 0.5), T([3.0, 0.0, 0.0, -4.0]))
    assert torch.equal(techniques.magnitude_sparsify(T([3.0, -1.0]), 1.0), T([3.0, -1.0]))
    # density 0.2 of 4 entries: int(0.8) = 0, but one entry is kept (the docstring), the largest |.|: -4;
    # TIES of one model then elects its sign and keeps it
    assert torch.equal(techniques.magnitude_sparsify(T([1.0, -4.0, 2.0, 0.5]), 0.2), T([0.0, -4.0, 0.0, 0.0]))
    out = techniques.ties(torch.zeros(4), [T([1.0, -4.0, 2.0, 0.5])], [1], density=0.2)
    assert torch.equal(out, T([0.0, -4.0, 0.0, 0.0]))


def test_ties_sign_election_and_disjoint_mean():
    base = T([1.0, 1.0, 1.0])
    x1, x2 = base + T([1.0, -2.0, 3.0]), base + T([-3.0, 1.0, 1.0])
    # sums of deltas: [-2, -1, 4] -> elected signs [-, -, +]; agreeing entries: [x2], [x1], [x1, x2]
    out = techniques.ties(base, [x1, x2], [1, 1], density=1.0)
    assert torch.allclose(out, base + T([-3.0, -2.0, 2.0]))
    # weights move the election by mass: w = [3, 1] -> sums [0, -5, 10] -> 0 elects +
    out = techniques.ties(base, [x1, x2], [3, 1], density=1.0)
    assert torch.allclose(out, base + T([3 / 3, -6 / 3, (9 + 1) / 4]))


def test_ties_trims_before_electing():
    base = torch.zeros(4)
    x1, x2 = T([4.0, -1.0, 0.5, 0.0]), T([-1.0, -3.0, 0.0, 2.0])
    # density 0.5 keeps two per model: x1 -> [4, -1, 0, 0], x2 -> [0, -3, 0, 2]
    out = techniques.ties(base, [x1, x2], [1, 1], density=0.5, lam=1.0)
    assert torch.allclose(out, T([4.0, -2.0, 0.0, 2.0]))
    assert torch.allclose(techniques.ties(base, [x1, x2], [1, 1], density=0.5, lam=0.5), T([2.0, -1.0, 0.0, 1.0]))
    # a case where the order matters: trimmed first, x1 -> [0, 5], x2 -> [-2, 0], entry 0's sign is elected from
    # -2 alone (-) and keeps -2; electing from the untrimmed sum 2.5 - 2 = +0.5 would keep nothing there ([0, 5])
    out = techniques.ties(torch.zeros(2), [T([2.5, 5.0]), T([-2.0, 0.1])], [1, 1], density=0.5, lam=1.0)
    assert torch.allclose(out, T([-2.0, 5.0]))


def test_dare_without_drop_is_task_arithmetic():
    base, x1, x2 = T([1.0, 1.0]), T([2.0, 0.0]), T([1.0, 3.0])
    out = techniques.dare(base, [x1, x2], [1.0, 0.5], density=1.0, lam=1.0)
    assert torch.allclose(out, base + T([1.0, -1.0]) + 0.5 * T([0.0, 2.0]))
    norm = techniques.dare(base, [x1, x2], [1.0, 0.5], density=1.0, normalize=True)
    assert torch.allclose(norm, base + (T([1.0, -1.0]) + 0.5 * T([0.0, 2.0])) / 1.5)


def test_dare_inverse_density_drops_at_rate_p_and_rescales_seeded():
    base, x = torch.zeros(20000), torch.ones(20000)
    g = lambda s: torch.Generator().manual_seed(s)
    dare = lambda s: techniques.dare(base, [x], [1.0], density=0.3, generator=g(s), rescale="inverse_density")
    out = dare(0)
    kept = out != 0
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.3))  # survivors rescaled by 1/(1-p)
    assert abs(kept.float().mean().item() - 0.3) < 0.02                      # drop rate p = 0.7
    assert abs(out.mean().item() - 1.0) < 0.05                               # E[out] = delta
    assert torch.equal(out, dare(0)) and not torch.equal(out, dare(1))


def _mergekit_dare_linear(base, xs, weights, masks, lam=1.0, eps=1e-7):
    """mergekit's dare_linear written out by hand (mergekit/sparsify.py ``rescaled_masked_tensor`` with
    RescaleNorm.l1, generalized_task_arithmetic.py with normalize=False), for given masks."""
    mixed = torch.zeros_like(base)
    for x, w, m in zip(xs, weights, masks):
        delta = x - base
        masked = delta * m
        before, after = delta.abs().sum(), masked.abs().sum()
        if before >= eps and after >= eps:
            masked = masked * (before / after)
        mixed = mixed + w * masked
    return base + lam * mixed


def test_dare_l1_rescale_is_mergekits_formula_for_the_same_mask():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=gen)
    xs = [base + torch.randn(6, 5, generator=gen) for _ in range(3)]
    w, density = [0.5, 0.3, 0.9], 0.4
    # the masks dare draws: one Bernoulli(density) draw per task vector from the generator, in order
    g = torch.Generator().manual_seed(7)
    masks = [torch.bernoulli(torch.full((6, 5), density), generator=g) for _ in xs]
    out = techniques.dare(base, xs, w, density, lam=0.8, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(out, _mergekit_dare_linear(base, xs, w, masks, lam=0.8), atol=1e-6)
    assert techniques.dare(base, xs, w, density, lam=0.8, generator=torch.Generator().manual_seed(7),
                           rescale="l1").equal(out)  # l1 is the default
    # the paper's 1/density rescale is a different merge for the same mask
    inv = techniques.dare(base, xs, w, density, lam=0.8, generator=torch.Generator().manual_seed(7),
                          rescale="inverse_density")
    expected = base + 0.8 * sum(wi * m * (x - base) / density for wi, m, x in zip(w, masks, xs))
    assert torch.allclose(inv, expected, atol=1e-6) and not torch.allclose(inv, out, atol=1e-3)


def test_dare_l1_rescale_by_hand_and_its_edge_cases():
    delta, mask = T([1.0, -2.0, 3.0, -4.0]), T([1.0, 0.0, 1.0, 0.0])
    # ||delta||_1 = 10, ||masked||_1 = 4 -> survivors times 2.5
    assert torch.equal(techniques.rescale_masked(delta, mask, "l1", 0.5), T([2.5, 0.0, 7.5, 0.0]))
    assert torch.equal(techniques.rescale_masked(delta, mask, "inverse_density", 0.5), T([2.0, 0.0, 6.0, 0.0]))
    assert torch.equal(techniques.rescale_masked(delta, mask, "none", 0.5), T([1.0, 0.0, 3.0, 0.0]))
    # everything dropped: mergekit returns the masked tensor (zeros), no division by zero
    assert torch.equal(techniques.rescale_masked(delta, torch.zeros(4), "l1", 0.5), torch.zeros(4))
    with pytest.raises(ValueError, match="rescale must be one of"):
        techniques.dare(T([0.0]), [T([1.0])], [1.0], 0.5, rescale="l2")


def test_registry_lists_the_six_methods():
    assert set(registry.METHODS) == {"linear", "slerp", "ties", "dare", "frankenmerge", "dfs"}
    assert set(registry.DEFAULTS) == set(registry.METHODS)
    with pytest.raises(KeyError):
        registry.get("model_stock")


# -- combos -----------------------------------------------------------------------------------------------

def test_combo_decoding_left_to_right():
    assert combos.decode("000") == combos.Combo(0, "linear", "dare", "frankenmerge")
    assert combos.decode("001") == combos.Combo(1, "linear", "dare", "dfs")
    assert combos.decode("100") == combos.Combo(4, "slerp", "dare", "frankenmerge")
    assert combos.decode("111").label == "SLERP + TIES + DFS"
    assert combos.decode(2) == combos.Combo(2, "linear", "ties", "frankenmerge")
    for c in range(8):
        d = combos.decode(c)
        assert combos.encode(d.interpolation, d.task_vectors, d.layers) == c == int(d.bits, 2)
    assert combos.flip(0, 1) == 4 and combos.flip(0, 3) == 1
    for bad in (8, -1, "0101", "012"):
        with pytest.raises(ValueError):
            combos.decode(bad)


# -- layer merges -------------------------------------------------------------------------------------------

def _model(seed: int, **kw) -> CognateModel:
    torch.manual_seed(seed)
    m = CognateModel(CognateConfig(**{**SMALL, **kw}))
    with torch.no_grad():  # give every parameter distinct values (norms and gates start constant)
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def test_frankenmerge_stacks_ranges_in_order():
    a, b = _model(0).state_dict(), _model(1).state_dict()
    out = layers.frankenmerge([(a, 0, 2), (b, 1, 2)], base=b)
    assert layers.n_layers_of(out) == 3
    assert torch.equal(out["blocks.0.attn.q_proj.weight"], a["blocks.0.attn.q_proj.weight"])
    assert torch.equal(out["blocks.1.mlp.down.weight"], a["blocks.1.mlp.down.weight"])
    assert torch.equal(out["blocks.2.attn_norm.weight"], b["blocks.1.attn_norm.weight"])
    assert torch.equal(out["embed.weight"], b["embed.weight"])
    with pytest.raises(ValueError):
        layers.frankenmerge([(a, 1, 3)], base=a)


class _ExplicitScales(CognateModel):
    """Reference: scale the residual stream before each block instead of folding into weights."""

    def __init__(self, config, scales):
        super().__init__(config)
        self.scales = scales

    def _step(self, z, e, t):
        h = z + e
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        for blk, s in zip(self.blocks, self.scales):
            h = blk(s * h, cos, sin)
        return self.memory.read(h)


def test_dfs_folded_scales_equal_explicit_input_scaling():
    a, b = _model(0).state_dict(), _model(1).state_dict()
    path, scales = [(a, 0), (b, 1), (a, 1)], [0.5, 2.0, 1.5]
    cfg = CognateConfig(**{**SMALL, "n_layers": 3})
    folded = CognateModel(cfg)
    folded.load_state_dict(layers.dfs(path, scales, base=a))
    ref = _ExplicitScales(cfg, layers.normalized_scales(scales))
    ref.load_state_dict(layers.dfs(path, [1.0, 1.0, 1.0], base=a))  # plain stacking, unscaled weights
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    folded.eval(), ref.eval()
    assert torch.allclose(folded(ids).logits, ref(ids).logits, atol=1e-3)  # RMSNorm's eps: near, not exact
    for m in (folded, ref):  # without eps, RMSNorm is exactly scale invariant and so is the folding
        for mod in m.modules():
            if isinstance(mod, RMSNorm):
                mod.eps = 0.0
    assert torch.allclose(folded(ids).logits, ref(ids).logits, atol=1e-5)
    assert math.isclose(math.prod(layers.normalized_scales(scales)), 1.0)
    # the scales matter: the same path without them gives different logits
    assert not torch.allclose(folded(ids).logits, _plain(cfg, layers.dfs(path, [1.0] * 3, base=a))(ids).logits,
                              atol=1e-4)


def _plain(cfg, state):
    m = CognateModel(cfg)
    m.load_state_dict(state)
    return m.eval()


def test_dfs_equal_scales_is_plain_stacking():
    a, b = _model(0).state_dict(), _model(1).state_dict()
    out = layers.dfs([(a, 1), (b, 0)], [1.7, 1.7], base=a)
    ref = layers.frankenmerge([(a, 1, 2), (b, 0, 1)], base=a)
    assert all(torch.allclose(out[k], ref[k]) for k in ref)
    with pytest.raises(ValueError):
        layers.dfs([(a, 0)], [0.0], base=a)


# -- recipes over Cognate models ------------------------------------------------------------------------------

def _inputs():
    specs = [{"ltm_slots": 32, "max_steps": 4, "act_threshold": 0.99}, {"ltm_slots": 128, "max_steps": 3},
             {"ltm_slots": 16, "max_steps": 2, "act_threshold": 0.9}]
    models = [_model(i, **s) for i, s in enumerate(specs)]
    return [m.state_dict() for m in models], [m.config for m in models]


def _recipe(**kw) -> Recipe:
    base = {"combo": 0, "base": 0, "weights": (1.0, 1.0, 1.0), "tv_weights": (1.0, 1.0, 1.0), "density": 1.0, "lam": 0.0,
                "dare_seed": 0, "slices": ((0, 0, 2),), "hops": ((0, 0), (0, 1)), "scales": (1.0, 1.0)}
    return canonical(Recipe(**{**base, **kw}))


def test_recipe_merges_parameters_and_takes_memory_and_hyperparameters_from_base():
    states, cfgs = _inputs()
    state, cfg = materialize(_recipe(base=1, weights=(1.0, 2.0, 1.0)), states, cfgs)
    assert cfg.ltm_slots == 128 and cfg.max_steps == 3 and cfg.n_layers == 2
    for k in ("memory.keys", "memory.values", "memory.usage", "memory.filled"):
        assert torch.equal(state[k], states[1][k])
    for k in ("embed.weight", "blocks.1.mlp.up.weight", "memory.query.weight", "halt_head.bias"):
        assert torch.allclose(state[k], techniques.linear([s[k] for s in states], [1, 2, 1]), atol=1e-6)
    model = CognateModel(cfg)
    model.load_state_dict(state)  # loads with the base's memory shapes


def test_a_tied_lm_head_gets_the_embeddings_merge_under_dare():
    """DARE seeds each mask by tensor name: a tied lm_head merged under its own name got a second mask, and loading
    kept whichever came last (max difference 0.2 between the two); it is now the embedding's merge itself."""
    from agentforge.merge.combos import encode

    models = [_model(i, tie_embeddings=True) for i in range(3)]
    states, cfgs = [m.state_dict() for m in models], [m.config for m in models]
    r = _recipe(combo=encode("linear", "dare", "frankenmerge"), density=0.5, lam=1.0, dare_seed=3)
    state, cfg = materialize(r, states, cfgs)
    assert torch.equal(state["lm_head.weight"], state["embed.weight"])
    assert not torch.equal(state["embed.weight"], techniques.linear([s["embed.weight"] for s in states], [1, 1, 1]))
    model = CognateModel(cfg)
    model.load_state_dict(state)
    assert torch.equal(model.lm_head.weight, state["embed.weight"])


def test_recipe_with_one_hot_weights_reproduces_that_input():
    states, cfgs = _inputs()
    state, cfg = materialize(_recipe(base=2, weights=(0.0, 0.0, 1.0)), states, cfgs)
    assert cfg == cfgs[2]
    assert all(torch.equal(state[k], states[2][k]) for k in states[2])


def test_slerp_at_the_endpoints_is_exact():
    a, b = torch.randn(5, 7), torch.randn(5, 7)
    assert torch.equal(techniques.slerp(0.0, a, b), a) and torch.equal(techniques.slerp(1.0, a, b), b)
    assert torch.equal(techniques.slerp(1.0, a, a * 2), a * 2)  # the collinear (lerp) branch too
    xs = [torch.randn(4, 3) for _ in range(3)]
    for i in range(3):
        one_hot = [float(j == i) for j in range(3)]
        assert torch.equal(techniques.slerp_many(xs, one_hot), xs[i])
        assert torch.equal(techniques.linear(xs, one_hot), xs[i])


@pytest.mark.parametrize("combo", range(8))
def test_identity_recipe_is_that_input_exactly_in_every_combo(combo):
    states, cfgs = _inputs()
    sp = Space(2, 1, 3)
    for i in range(3):
        r = identity_recipe(i, sp, combo)
        assert r.combo == combo and r.n_layers() == 2 and Recipe.from_dict(r.to_dict()) == r
        state, cfg = materialize(r, states, cfgs)
        assert cfg == cfgs[i] and state.keys() == states[i].keys()
        assert all(torch.equal(state[k], states[i][k]) for k in states[i]), i
    # the model built from it computes what the input computes (so it may reuse the input's measurement)
    model = CognateModel(cfg)
    model.load_state_dict(state)
    ref = _model(2, ltm_slots=16, max_steps=2, act_threshold=0.9)
    ids = torch.randint(0, 272, (2, 12))
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, ref.eval()(ids).logits)




def test_recipe_docstring_slot_counts_are_the_model_presets():
    """merge/recipe.py: 'its slot count differs between the inputs (m1 128, m2 256, m3 16 slots)' -- the presets' values."""
    import re

    from omegaconf import OmegaConf

    from agentforge.merge import recipe

    stated = dict(re.findall(r"(m[123]) (\d+)", re.search(r"\((m1 \d+, m2 \d+, m3 \d+) slots\)", recipe.__doc__)[1]))
    assert {m: int(v) for m, v in stated.items()} == {m: OmegaConf.load(f"conf/model/{m}.yaml").ltm_slots
                                                      for m in ("m1", "m2", "m3")}
