"""The Cognate model: causality, PonderNet halting arithmetic, checkpoint round trip, sizes (memory: test_mechanisms)."""
from __future__ import annotations

import math

import pytest
import torch

from agentforge.artifacts import cognate_config_from, load_model, save_model
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.io import CheckpointError
from agentforge.models import CognateConfig, CognateModel
from tests.conftest import compose_cfg


def tiny(**kw) -> CognateModel:
    torch.manual_seed(0)
    return CognateModel(CognateConfig(d_model=32, n_layers=2, n_heads=2, ffn_hidden=64, window=8, max_seq_len=64,
                                      ltm_slots=8, ltm_key_dim=8, **kw))


@pytest.mark.parametrize("train_mode", [False, True])
def test_changing_a_future_token_never_changes_an_earlier_logit(train_mode):
    model = tiny(ltm_chunk=4, surprise_threshold=0.0)  # 6 memory chunks: later ones read earlier writes
    with torch.no_grad():
        model.memory.gate.bias.fill_(2.0)   # the memory's read weighs in
        model.halt_head.weight.normal_()    # tokens halt at different steps
    model.train(train_mode)
    x = torch.randint(0, 256, (1, 24))
    for k in (0, 5, 23):
        y = x.clone()
        y[0, k:] = (y[0, k:] + 17) % 256
        out = model(torch.cat([x, y]))
        assert torch.allclose(out.logits[0, :k], out.logits[1, :k], atol=1e-6), f"position < {k} saw the future"
        assert not torch.allclose(out.logits[0, k], out.logits[1, k])


@pytest.mark.parametrize("train_mode,max_steps", [(False, 3), (True, 3), (False, 2)])
def test_a_persistent_memory_keeps_every_recursion_step_causal_and_rows_apart(train_mode, max_steps):
    """memory.persist with 3 recursion steps: each step reads the bank the call started from. Before, step n+1 read
    the bank step n had left, built from the whole sequence (its future) by the batch's last row."""
    model = tiny(ltm_chunk=4, surprise_threshold=0.0, max_steps=max_steps)
    with torch.no_grad():
        model.memory.gate.bias.fill_(2.0)
        model.halt_head.weight.normal_()
    model.train(train_mode).memory.persist = True
    start = model.memory.bank()
    x, other = torch.randint(0, 256, (1, 24)), torch.randint(0, 256, (2, 24))
    y = x.clone()
    y[0, 16:] = (y[0, 16:] + 17) % 256

    def logits(rows):
        model.memory.set_bank(start)
        return model(rows, rows).logits

    a, b = logits(torch.cat([x, other[:1]])), logits(torch.cat([y, other[1:]]))
    assert torch.allclose(a[0, :16], b[0, :16], atol=1e-6), "a position saw the future, or another row"
    assert not torch.allclose(a[0, 16], b[0, 16])
    assert model.memory.filled.any()   # the call still leaves its bank for the next one


def test_window_limits_attention():
    """A token further back than the window (with one layer and one step) cannot influence the logit."""
    torch.manual_seed(0)
    model = CognateModel(CognateConfig(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, window=4, max_steps=1,
                                       ltm_slots=4, ltm_key_dim=8)).eval()
    x = torch.randint(0, 256, (1, 12))
    y = x.clone()
    y[0, 0] = (y[0, 0] + 1) % 256
    with model.ablate(memory=False):  # the memory does reach further back (test_mechanisms)
        out = model(torch.cat([x, y]))
    assert torch.allclose(out.logits[0, 4:], out.logits[1, 4:], atol=1e-6)
    assert not torch.allclose(out.logits[0, 3], out.logits[1, 3])


def _constant_halting(model: CognateModel, p: float) -> None:
    with torch.no_grad():
        model.halt_head.weight.zero_()
        model.halt_head.bias.fill_(math.log(p / (1 - p)))


def test_halting_counts_match_pondernet_arithmetic():
    """lambda = 0.4 every step, max 5: p = 0.4, 0.24, 0.144, 0.0864, 0.1296 (the rest on step 5);
    cumulative 0.4, 0.64, 0.784 -> with threshold 0.7 every token halts at N = 3; expected steps
    sum n p_n = 0.4 + 0.48 + 0.432 + 0.3456 + 0.648 = 2.3056 when every step runs (with targets); at
    inference the loop stops after step 3 and the mass left (0.36) counts at 3: 0.4 + 0.48 + 1.08 = 1.96."""
    model = tiny(max_steps=5, act_threshold=0.7).eval()
    _constant_halting(model, 0.4)
    x = torch.randint(0, 256, (2, 10))
    out = model(x, x)
    assert torch.all(out.halting_steps == 3)
    assert torch.allclose(out.ponder, torch.full_like(out.ponder, 2.3056), atol=1e-4)
    out = model(x)
    assert torch.all(out.halting_steps == 3)
    assert torch.allclose(out.ponder, torch.full_like(out.ponder, 1.96), atol=1e-4)


@pytest.mark.parametrize("p,expected", [(0.999, 1), (0.001, 4)])
def test_halting_at_first_step_or_runs_to_the_bound(p, expected):
    model = tiny(max_steps=4).eval()
    _constant_halting(model, p)
    out = model(torch.randint(0, 256, (1, 6)))
    assert torch.all(out.halting_steps == expected)


def test_output_is_the_halting_steps_state():
    """lambda = 0.3, threshold 0.5: cumulative 0.3, 0.51 -> N = 2, output = z_2."""
    model = tiny(max_steps=3, act_threshold=0.5).eval()
    _constant_halting(model, 0.3)
    x = torch.randint(0, 256, (1, 6))
    e = model.embed(x)
    z1, _ = model._step(e, e, 6)
    z2, _ = model._step(z1, e, 6)
    out = model(x)
    assert torch.all(out.halting_steps == 2)
    assert torch.allclose(out.hidden, z2, atol=1e-5)


class _RowHalting(torch.nn.Module):
    """Halting logit per row: +10 (halt at step 1) or -10 (run to the bound)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, z):
        return self.logits[:, None, None].expand(*z.shape[:2], 1)


def test_inference_skips_halted_rows_with_the_same_outputs():
    """Row 0 halts at step 1, row 1 runs all 3 steps: the inference loop runs steps 2-3 on row 1 alone and
    gives the logits and steps of the loop that runs every step on every row (targets given)."""
    model = tiny(max_steps=3).eval()
    model.halt_head = _RowHalting([10.0, -10.0])
    x = torch.randint(0, 256, (2, 10))
    skipped, full = model(x), model(x, x)
    assert skipped.halting_steps[0].eq(1).all() and skipped.halting_steps[1].eq(3).all()
    assert torch.equal(skipped.halting_steps, full.halting_steps)
    assert torch.allclose(skipped.logits, full.logits, atol=1e-5)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    model = tiny(surprise_threshold=0.0, ltm_chunk=4)
    with torch.no_grad():  # trained-looking weights: the gate open, the halting head varied
        model.memory.gate.bias.fill_(1.0)
        model.halt_head.weight.normal_()
    model.eval()
    tok = ByteTokenizer(["<x>"])
    save_model(tmp_path / "ck", model, tok, {"note": "t"})
    loaded, tok2, cfg = load_model(tmp_path / "ck")
    x = torch.randint(0, 256, (2, 16))
    a, b = model(x), loaded(x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.halting_steps, b.halting_steps)
    assert tok2.special_tokens == ["<x>"] and cfg["meta"]["note"] == "t"


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope")
    model = tiny()
    save_model(tmp_path / "ck", model, ByteTokenizer())
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(tmp_path / "ck")
    save_model(tmp_path / "ck2", model, ByteTokenizer())
    with pytest.raises(CheckpointError, match="differs"):
        load_model(tmp_path / "ck2", expect=CognateConfig(d_model=64))


def test_presets_sizes_and_roles(tmp_path):
    counts = {}
    for size in ("tiny", "25m"):
        cfg = compose_cfg([f"size={size}"], tmp_path)
        from omegaconf import OmegaConf
        counts[size] = CognateModel(cognate_config_from(OmegaConf.to_container(cfg.model), 272)).num_params()
    assert 20e6 <= counts["25m"] <= 30e6, counts
    assert counts["tiny"] < 1e6
    m = {k: compose_cfg([f"model={k}"], tmp_path).model for k in ("m1", "m2", "m3")}
    assert m["m2"].ltm_slots > m["m1"].ltm_slots > m["m3"].ltm_slots
    assert m["m1"].max_steps > m["m2"].max_steps > m["m3"].max_steps
    assert m["m1"].ponder_prior < m["m2"].ponder_prior < m["m3"].ponder_prior  # priors 0.5 < 0.6 < 0.7: fewer expected steps m1 -> m3
    assert m["m2"].surprise_threshold < m["m1"].surprise_threshold < m["m3"].surprise_threshold


def test_generate_greedy_is_deterministic_and_stops_at_eos():
    model = tiny().eval()
    x = torch.randint(0, 256, (1, 4))
    a, b = model.generate(x, 6), model.generate(x, 6)
    assert torch.equal(a, b) and a.shape == (1, 10)
    eos = int(a[0, 4])
    c = model.generate(x, 6, eos_id=eos)
    assert c.shape[1] == 5


def test_qk_clip_records_the_no_grad_recursion_steps():
    """no_grad_steps=1 of 2: the first recursion step runs without autograd but with the same W_q, W_k, so each
    layer's recorded max logit is the max over BOTH steps' explicit logits q·kᵀ/√d in the window (it was the
    second step's alone, so QK-clip could not bound the first's)."""
    model = tiny(max_steps=2, no_grad_steps=1).train()
    seen = {i: [] for i in range(len(model.blocks))}
    for i, blk in enumerate(model.blocks):
        def qkv(x, cos, sin, _attn=blk.attn, _i=i, _orig=blk.attn.qkv):
            q, k, v = _orig(x, cos, sin)
            if not torch.is_grad_enabled():
                q = q * 50                                    # the no-grad step's logits are the larger ones
            t = q.shape[-2]
            scores = (q @ k.transpose(-2, -1)).detach() / math.sqrt(q.shape[-1])
            keep = torch.ones(t, t).tril().bool() & ~torch.ones(t, t).tril(-_attn.window).bool()
            seen[_i].append(scores.masked_fill(~keep, float("-inf")).amax(dim=(0, 2, 3)))
            return q, k, v
        blk.attn.qkv = qkv
    x = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(3))
    model(x[:, :-1], x[:, 1:]).loss.backward()
    for i, blk in enumerate(model.blocks):
        first, second = seen[i]                               # one call per recursion step
        assert (first > second).all()                         # step 1 holds the max: the test bites
        torch.testing.assert_close(blk.attn.max_logit, torch.maximum(first, second).clamp(min=0))


def _summary_of(figures: dict, halting: torch.Tensor, max_steps: int) -> str:
    from agentforge.phases.cognate import halting_summary
    final = {**figures, "diversity/avg_halting_steps": float(halting.mean()), "diversity/halting_steps_std": 0.0,
             **{f"diversity/halting_share_step{n}": float((halting == n).float().mean()) for n in range(1, max_steps + 1)},
             "ablation/halting_steps_answer_digits": 2.0, "ablation/halting_steps_letters": 2.0,
             "ablation/halting_task_n_rows": 0.0, "ablation/halting_noninferiority_margin": 0.01,
             "ablation/max_steps_loss_delta": 0.0, "ablation/max_steps_loss_delta_ci_low": -0.001,
             "ablation/max_steps_loss_delta_ci_high": 0.001, "ablation/n_rows": 32.0, "ablation/seconds": 1.0}
    return halting_summary(final, max_steps)


def test_halting_verdict_shows_the_compute_halting_saves():
    """The Cognate phase measures forward MFLOPs/token on the same held-out rows with halting and with every token
    run to max_steps, and prints both next to the halting verdict: a row stops only once ALL its tokens halted, so
    with mixed halting steps in every row nothing is saved (the default m1: 3.58 vs 3.58), and a loss PASS must not
    read as a compute win; with every token halting at step 1 of 3 about two thirds are saved."""
    from agentforge.phases.cognate import held_out_figures
    rows = torch.randint(0, 256, (4, 33), generator=torch.Generator().manual_seed(0))
    model = tiny(max_steps=3).eval()
    with torch.no_grad():
        model.halt_head.weight.normal_(std=3.0)   # tokens halt at different steps
    halting, fig = held_out_figures(model, rows)
    key = "diversity/inference_mflops_per_token"
    assert (halting.view(4, 32).max(1).values == 3).all() and halting.min() == 1  # every row runs to step 3
    assert fig[key] == fig[key + "_max_steps"] > 0
    text = _summary_of(fig, halting, 3)
    assert (f"PASS (cost CI [-0.0010, +0.0010] vs margin 0.01, n=32) (non-inferiority margin 0.01 nats); compute "
            f"{fig[key]:.3g} vs {fig[key]:.3g} MFLOPs/token at max steps: 0% saved — a row stops only when all its "
            f"tokens have halted") in text
    _constant_halting(model, 0.99)                # every token halts at step 1: the rows stop after one step
    halting, fig = held_out_figures(model, rows)
    assert (halting == 1).all()
    saved = 1 - fig[key] / fig[key + "_max_steps"]
    assert 0.5 < saved < 2 / 3
    assert f"MFLOPs/token at max steps: {saved:.0%} saved;" in _summary_of(fig, halting, 3)


def test_a_row_that_halted_early_reports_its_surprise_at_its_last_step():
    """At inference a row whose tokens all halted skips the later steps; its surprise is the one of the last step it
    ran (it read 0 before), the other row's the last step's."""
    class RowHalt(torch.nn.Module):   # row 0 halts at step 1, row 1 runs to the last step
        def forward(self, z):
            return torch.tensor([10.0, -10.0])[:, None, None].expand(*z.shape[:2], 1)

    model = tiny(ltm_chunk=4, surprise_threshold=0.0, max_steps=3).eval()
    model.halt_head = RowHalt()
    x = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        out, e = model(x), model.embed(x)
        _, first = model._step(e, e, 20)
    assert out.halting_steps[0].eq(1).all() and out.halting_steps[1].eq(3).all()
    torch.testing.assert_close(out.surprise[0], first[0])
    assert not torch.allclose(out.surprise[1], first[1])


def test_the_three_models_start_from_one_seed_with_their_shared_shapes_equal(tmp_path):
    """README (Phase 1): the three models start from one seed; the parameters whose shapes they share start
    bit-equal (~95 % of m1's), as main.run seeds before each phase builds its model."""
    import lightning as L
    from omegaconf import OmegaConf

    from agentforge.data.tokenizer import RESERVED_VOCAB

    states = []
    for m in ("m1", "m2", "m3"):
        cfg = compose_cfg([f"model={m}"], tmp_path)
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
        states.append(CognateModel(cognate_config_from(OmegaConf.to_container(cfg.model, resolve=True),
                                                       RESERVED_VOCAB)).state_dict())
    first = states[0]
    for other in states[1:]:
        same = [k for k, v in first.items() if k in other and other[k].shape == v.shape and torch.equal(other[k], v)]
        shared = [k for k, v in first.items() if k in other and other[k].shape == v.shape]
        assert "embed.weight" in same and len(same) >= 0.9 * len(shared)
        assert sum(first[k].numel() for k in same) >= 0.9 * sum(v.numel() for v in first.values())
