"""The scaling fit's x-axis is the reference architecture's parameter count, the candidate's own count is
bounded by ``trust.max_param_ratio``, and the child's self-reported fields are checked before they are stored
(red-team findings F1 and F2). The fast tests need no sandbox; the end-to-end ones are ``slow``."""
from __future__ import annotations

import importlib.util
import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save

from agentforge.data.tokenizer import RESERVED_VOCAB
from agentforge.errors import ConfigError
from agentforge.scaling import childinfo, trust
from agentforge.scaling.evaluator import scored
from agentforge.scaling.failures import CACHEABLE, CandidateFailure
from agentforge.scaling.fit import fit_scaling_law
from agentforge.scaling.model import ScalingLM
from agentforge.scaling.variants import FRAMEWORKS, variant_path
from tests.conftest import compose_cfg
from tests.test_scaling import TINY_SETTINGS, run_eval, with_block, write

LADDER = [{"name": n, "d_model": d, "n_layers": 1, "n_heads": 2} for n, d in (("xs", 16), ("s", 24), ("m", 32),
                                                                               ("l", 48))]
HELDOUT = {"inputs": torch.zeros(4, 6, dtype=torch.long), "targets": torch.tensor([1, 2, 3, 4]),
           "probe": torch.zeros(2, 6, dtype=torch.long), "cuts": torch.tensor([2])}


def _baseline_weights(size: dict, pad: int = 0) -> dict[str, bytes]:
    """Zero weights of the baseline architecture at ``size``, with ``pad`` never-used extra attention
    elements (the red team's dead buffer), and uniform logits."""
    w = {k: torch.zeros(s) for k, s in trust.expected_shapes(size).items()}
    d = size["d_model"]
    w.update({"blocks.0.attn.qkv.weight": torch.zeros(3 * d, d), "blocks.0.attn.out.weight": torch.zeros(d, d)})
    if pad:
        w["blocks.0.attn.pad"] = torch.zeros(pad)
    vocab = trust.expected_shapes(size)["embed.weight"][0]
    return {f"weights_{size['name']}.safetensors": save(w),
            f"logits_{size['name']}.safetensors": save({"last": torch.zeros(4, vocab), "probe": torch.zeros(2, 6, vocab)})}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_shipped_variants_hold_exactly_the_reference_count(framework):
    """Every shipped template returns the baseline architecture's count at every size (ratio 1.0), so the
    reference x-axis changes none of their figures and the ratio bound refuses none of them."""
    spec = importlib.util.spec_from_file_location(f"variant_{framework}", variant_path(framework))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for size in LADDER + [{"name": "cpu_l", "d_model": 96, "n_layers": 2, "n_heads": 4}]:
        model = ScalingLM(RESERVED_VOCAB, size["d_model"], size["n_layers"], size["n_heads"], module.Attention)
        total = sum(t.numel() for t in model.state_dict().values())
        assert (total, total - model.embed.weight.numel()) == trust.reference_params(size)


def test_dead_parameters_no_longer_move_the_fit():
    """The attack: pad the small sizes with never-used elements (within the ratio) and keep the losses. Over
    the returned counts, as the fit used to be, the slope steepens; over the reference counts it does not."""
    losses = {"xs": 4.62, "s": 4.27, "m": 3.93, "l": 3.43}
    sizes = []
    for size in LADDER:
        ref = trust.reference_params(size)[0]
        pad = int(0.9 * ref) if size["name"] != "l" else 0  # 1.9x the reference: inside the default 2.0
        s = trust.score_size(size, _baseline_weights(size, pad), HELDOUT, 0.05)
        assert s["params"] == ref and s["params_returned"] == ref + pad
        sizes.append({**s, "loss": losses[size["name"]]})
    honest = fit_scaling_law([trust.reference_params(s)[0] for s in LADDER], list(losses.values())).fitness
    old_way = fit_scaling_law([s["params_returned"] for s in sizes], list(losses.values())).fitness
    assert old_way > 1.25 * honest  # what the padding bought before the fix (0.92 vs 0.71 here; unbounded
    # padding, as the red team's, bought 15985 vs 0.71)
    out = scored(sizes, TINY_SETTINGS, None)
    assert out["fitness"] == pytest.approx(honest)
    assert out["params_xs"] == trust.reference_params(LADDER[0])[0]
    assert out["params_returned_xs"] == sizes[0]["params_returned"]


@pytest.mark.parametrize("factor", [2.5, 0.3])
def test_counts_beyond_the_ratio_are_refused_both_ways(factor):
    """More than ``max_param_ratio`` times the reference, or fewer than its inverse, is ``params`` (cached:
    a verdict on the returned weights), naming the size, both counts and the config key."""
    size = LADDER[0]
    ref = trust.reference_params(size)[0]
    with pytest.raises(CandidateFailure) as err:
        trust.check_param_ratio(size, int(ref * factor), 2.0)
    assert err.value.kind == "params" and "params" in CACHEABLE
    assert "size xs" in str(err.value) and f"{ref:,}" in str(err.value) and "max_param_ratio" in str(err.value)
    trust.check_param_ratio(size, int(ref * factor), 3.5)  # a looser bound admits it
    with pytest.raises(CandidateFailure, match="max_param_ratio"):  # and score_size applies it
        trust.score_size(size, _baseline_weights(size, int(1.5 * ref)), HELDOUT, 0.05)


def test_max_param_ratio_is_validated_with_a_default(tmp_path):
    from agentforge.phases import scaling

    assert scaling.settings_from_cfg(compose_cfg(["phase=scaling"], tmp_path))["trust"]["max_param_ratio"] == 2.0
    for bad in ("0.5", "true"):
        with pytest.raises(ConfigError, match="max_param_ratio"):
            scaling.settings_from_cfg(compose_cfg(["phase=scaling", f"++phase.trust.max_param_ratio={bad}"], tmp_path))


# -- the child's self-report (F2) -----------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("val_curve", [7, 7]), ("val_curve", [[2, float("nan")]]), ("val_curve", [[True, 1.0]]), ("val_curve", "x"),
    ("val_curve", [[2, 1.0]] * (childinfo.MAX_CURVE_POINTS + 1)), ("train_seconds", float("inf")),
    ("train_seconds", "1"), ("train_seconds", -1.0), ("steps", 2.5), ("steps", True)])
def test_malformed_self_reported_fields_are_forged(field, value):
    good = {"name": "xs", "val_curve": [[2, 5.1], [4, 4.9]], "train_seconds": 1.5, "steps": 4}
    assert childinfo.size_fields({"sizes": [good]}, "xs") == {k: v for k, v in good.items() if k != "name"}
    with pytest.raises(CandidateFailure) as err:
        childinfo.size_fields({"sizes": [{**good, field: value}]}, "xs")
    assert err.value.kind == "forged" and f"size xs: the child's status.json reports {field}" in str(err.value)


def test_malformed_checks_are_forged_and_missing_fields_are_none():
    assert childinfo.checks({"d_model": 16, "max_relative_leak": 0.0}) == {"d_model": 16, "max_relative_leak": 0.0}
    assert childinfo.checks(None) == {}
    for bad in ({"a": {"b": 1}}, [1], {"a": float("nan")}, {str(i): 1 for i in range(childinfo.MAX_CHECK_KEYS + 1)}):
        with pytest.raises(CandidateFailure, match="checks"):
            childinfo.checks(bad)
    assert childinfo.size_fields({"sizes": [{"name": ["unhashable"]}]}, "xs") == \
        {"train_seconds": None, "val_curve": None, "steps": None}


def test_report_survives_a_malformed_stored_result(tmp_path):
    """A result stored before the checks (or edited by hand) with a bad curve and timing: the report drops
    them instead of raising (the red team's ``[7, 7]`` curve raised a TypeError on every cached rerun)."""
    from agentforge.phases.scaling import report
    from agentforge.tracking.tracker import Tracker

    sizes = [{"name": n, "d_model": d, "n_layers": 1, "n_heads": 2, "params": p, "non_embedding_params": p - 1000,
              "loss": loss, "val_curve": [7, 7], "train_seconds": "soon"}
             for n, d, p, loss in (("xs", 16, 7728, 4.6), ("s", 32, 22112, 3.9))]
    fit = fit_scaling_law([7728, 22112], [4.6, 3.9])
    result = {"sizes": sizes, "slope": fit.slope, "intercept": fit.intercept, "r2": fit.r2, "fitness": fit.fitness,
              "combined_score": fit.fitness, "sandbox": "bwrap", "framework": "baseline"}
    ctx = SimpleNamespace(tracker=Tracker([], tmp_path), cfg=OmegaConf.create({"phase": {"fit_params": "total"}}),
                          run_dir=tmp_path)
    metrics = report(ctx, result, "malformed")
    assert math.isclose(metrics["scaling/fitness"], fit.fitness)


# -- end to end, in the sandbox (slow) -------------------------------------------------------------------------
PAD = '''
        _pad = {pads}.get(d_model, 0)
        if _pad:
            self.register_buffer("pad", torch.zeros(_pad))  # never used: counted by the old fit
'''


def _padded(pads: dict[int, int]) -> str:
    code = variant_path("baseline").read_text()
    anchor = "        self.out = nn.Linear(d_model, d_model, bias=False)\n"
    return code.replace(anchor, anchor + PAD.format(pads=pads).lstrip("\n"))


@pytest.mark.slow
def test_padded_candidate_scores_as_the_baseline_or_is_refused(tmp_path):
    """The red team's candidate in the sandbox: padded within the ratio it scores exactly the baseline's
    fitness (it was 15985 against 0.71 with the padding up to the largest size); beyond it, ``params``."""
    xs, s = TINY_SETTINGS["sizes"]
    ref_xs = trust.reference_params(xs)[0]
    base = run_eval(variant_path("baseline"), tmp_path)
    mild = run_eval(write(tmp_path, "mild", _padded({xs["d_model"]: int(0.9 * ref_xs)})), tmp_path)
    assert mild["valid"] == 1.0, mild["error"]
    assert mild["fitness"] == pytest.approx(base["fitness"], abs=1e-9)
    assert mild["params_returned_xs"] == ref_xs + int(0.9 * ref_xs) and mild["params_xs"] == base["params_xs"]
    extreme = run_eval(write(tmp_path, "extreme", _padded({xs["d_model"]: trust.reference_params(s)[0] - ref_xs - 1})),
                       tmp_path)
    assert extreme["valid"] == 0.0 and extreme["error_kind"] == "params", extreme["error"]


@pytest.mark.slow
def test_tampered_self_report_is_forged_not_a_crash(tmp_path):
    """The red team's F2 candidate: honest attention whose child reports ``val_curve = [7, 7]``."""
    prelude = '''
_m = torch.sys.modules["__main__"]
if hasattr(_m, "train_size"):
    _orig = _m.train_size

    def _train_size(*a, **k):
        r = _orig(*a, **k)
        r["val_curve"] = [7, 7]
        return r
    _m.train_size = _train_size
'''
    block = variant_path("baseline").read_text().split("# EVOLVE-BLOCK-START\n")[1].split("# EVOLVE-BLOCK-END")[0]
    result = run_eval(write(tmp_path, "tampered", with_block("baseline", prelude + block)), tmp_path)
    assert result["valid"] == 0.0 and result["error_kind"] == "forged", result["error"]
    assert "val_curve" in result["error"]


def test_parameters_are_counted_by_their_bytes():
    """fp32 counts its elements, bf16 half of them, float64 twice (bytes / 4). Round 4 of the red team stored two
    fp32 parameters in each float64 element through its own state-dict hooks: counted by elements that model sat
    at 1.95x the reference and held 3.1x its parameters; by bytes it is 3.9x, outside the 2x bound."""
    assert trust.fp32_equivalent(torch.zeros(10)) == 10
    assert trust.fp32_equivalent(torch.zeros(10, dtype=torch.bfloat16)) == 5
    assert trust.fp32_equivalent(torch.zeros(10, dtype=torch.float64)) == 20
    size = LADDER[3]
    ref = trust.reference_params(size)[0]
    w = {k: torch.zeros(s) for k, s in trust.expected_shapes(size).items()}
    w["blocks.0.attn.packed"] = torch.zeros(ref * 195 // 100 - sum(t.numel() for t in w.values()), dtype=torch.float64)
    total, _ = trust.count_params(size, w)
    elements = sum(t.numel() for t in w.values())
    assert 1.9 * ref < elements <= 1.95 * ref and total > 2.5 * ref   # within the bound by elements, not by bytes
    with pytest.raises(CandidateFailure) as err:
        trust.check_param_ratio(size, total, 2.0)
    assert err.value.kind == "params"


def test_tiny_low_precision_tensors_are_charged_at_least_what_they_hold():
    """Bytes / 4 rounded up per tensor: rounded down, a one-element fp16 tensor counted 0 and 50 000 of them under
    one layer's attention (2.3x the size's model) added nothing to the count and passed the 2x bound. float8 weights
    are checked for non-finite values too (torch has no isfinite of float8: it raised NotImplementedError)."""
    assert trust.fp32_equivalent(torch.zeros(1, dtype=torch.float16)) == 1
    assert trust.fp32_equivalent(torch.zeros(3, dtype=torch.float16)) == 2
    assert trust.fp32_equivalent(torch.zeros(4, dtype=torch.float16)) == 2
    size = LADDER[0]
    ref = trust.reference_params(size)[0]
    w = {k: torch.zeros(s) for k, s in trust.expected_shapes(size).items()}
    base, _ = trust.count_params(size, w)
    n = 2 * ref
    w.update({f"blocks.0.attn.h{i}": torch.zeros(1, dtype=torch.float16) for i in range(n)})
    total, _ = trust.count_params(size, w)
    assert total == base + n
    with pytest.raises(CandidateFailure) as err:
        trust.check_param_ratio(size, total, 2.0)
    assert err.value.kind == "params"
    if hasattr(torch, "float8_e4m3fn"):
        f8 = {k: torch.zeros(shape).to(torch.float8_e4m3fn) for k, shape in trust.expected_shapes(size).items()}
        assert trust.count_params(size, f8)[0] == sum(-(-t.numel() // 4) for t in f8.values())


@pytest.mark.parametrize("line", ["    def _load_from_state_dict(self, *a):\n        pass\n",
                                  "    def state_dict(self, *a, **k):\n        return {}\n",
                                  "        self._register_state_dict_hook(print)\n",
                                  "        self.register_load_state_dict_post_hook(print)\n"])
def test_the_block_may_not_change_how_weights_are_saved_or_loaded(line):
    """The friendly filter (the bound itself is on the returned bytes): overriding or hooking state-dict saving
    and loading is refused before anything runs."""
    import ast

    from agentforge.scaling.evaluator import check_block_code

    code = "class Attention:\n    def __init__(self):\n        pass\n" + line
    with pytest.raises(CandidateFailure, match="not allowed in the block") as err:
        check_block_code(ast.parse(code), 1, 99)
    assert err.value.kind == "forbidden"
