"""The long-term memory's induction layout (``models/memory.py``), by hand on one-hot states, and the default
presets' write budget. The memory's other behaviour is tested in tests/test_mechanisms.py (surprise on a
repeated sequence, write filtering and LRU eviction, per-sequence state, reach beyond the window, the
trained recall model), tests/test_model.py (causality, checkpoint round trip) and the KV-cache tests
(tests/test_speed.py ``test_kv_cache_*``, tests/test_thought_cache.py, tests/test_kv_extend.py)."""
from __future__ import annotations

import math
import re

import pytest
import torch

from agentforge.data.recall import DEFAULT_GAP, MIX_REPEATS, recall_rows
from agentforge.data.synthetic import recall
from agentforge.evals.stats import paired_bootstrap
from agentforge.models import CognateConfig, CognateModel
from agentforge.models.ablation import recall_memory, token_scores
from agentforge.models.memory import SurpriseMemory
from tests.conftest import autograd_nodes, compose_cfg

D = 4  # one-hot states a, b, c, d


def identity_memory(slots: int = 8, threshold: float = 0.5) -> SurpriseMemory:
    """Query, value and output projections the identity, a sharp read (beta 50) and the gate wide open."""
    mem = SurpriseMemory(D, slots, D, threshold, max_writes=4, chunk=4, gate_bias=20.0, beta=50.0).eval()
    with torch.no_grad():
        for lin in (mem.query, mem.value, mem.out):
            lin.weight.copy_(torch.eye(D))
    return mem


def states(seq: str) -> torch.Tensor:
    """[1, T, D] one-hot rows for the letters of ``seq`` (a=0, b=1, ...)."""
    return torch.eye(D)[[ord(ch) - ord("a") for ch in seq]][None]


def test_the_key_is_the_previous_query_and_the_first_position_has_none():
    mem = identity_memory()
    q, k, v = mem.project(states("abcd"))
    assert torch.equal(k[0, 1:], q[0, :-1]) and torch.equal(k[0, 0], torch.zeros(D))
    assert torch.equal(v, states("abcd"))
    prev = torch.eye(D)[None, 3:4]                      # continuing after a "d" (the KV decoder's case)
    assert torch.equal(mem.project(states("ab"), prev)[1][0, 0], prev[0, 0])
    s = torch.ones(1, 4)
    assert mem.write_scores(s, first=True)[0, 0] == float("-inf") and torch.equal(mem.write_scores(s, False), s)


def test_the_surprise_reuses_the_previous_read_only_where_it_saw_the_same_bank():
    """scan() takes M(k_t) = M(q_{t-1}) from the previous position's read inside a chunk and attends afresh at a
    chunk's first position: the surprise equals ||v - M(k)||^2 / ||v||^2 computed directly from each chunk's
    bank, for a sequence of 11 positions (chunks of 4, some written) read at once and fed in pieces."""
    torch.manual_seed(0)
    mem = SurpriseMemory(8, 6, 4, 0.1, max_writes=2, chunk=4).eval()
    h = torch.randn(2, 11, 8)
    _, s = mem.read(h)
    q, k, v = mem.project(h)
    st, expected, beta = mem.init_state(2), [], mem.log_beta.exp()
    for start in range(0, 11, 4):  # the direct formula on the bank each chunk reads, the bank then advanced
        keys, vals, filled = st["keys"], st["vals"], st["filled"]
        pred = mem._attend(beta, k[:, start:start + 4], keys, filled) @ vals
        expected.append(((v[:, start:start + 4] - pred).pow(2).sum(-1) / (v[:, start:start + 4].pow(2).sum(-1) + 1e-6)))
        mem.scan(h[:, start:start + 4], st)
    assert st["filled"].any()  # the later chunks read a bank that earlier chunks wrote
    torch.testing.assert_close(s, torch.cat(expected, 1).detach(), atol=1e-6, rtol=1e-5)
    st = mem.init_state(2)
    pieces = [mem.scan(h[:, a:b], st)[1] for a, b in ((0, 3), (3, 6), (6, 7), (7, 11))]
    torch.testing.assert_close(torch.cat(pieces, 1), s, atol=1e-6, rtol=1e-5)


def test_a_read_returns_what_followed_the_same_context_earlier():
    """"abcd" then "a": chunk 0 stored (a->b), (b->c), (c->d) (position 0 has no context); the second "a"
    (chunk 1) reads b, the token that followed "a" — not a, as a same-token (k_t, v_t) memory would."""
    mem = identity_memory()
    out, _ = mem.read(states("abcda"))
    r = out[0, 4] - states("a")[0, 0]                   # the gate is open: out = h + r
    torch.testing.assert_close(r, states("b")[0, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[0, :4], states("abcd")[0])   # chunk 0 reads an empty bank


def test_surprise_is_zero_on_a_repeated_pair_and_it_is_not_written_again():
    """"abcdabcd", chunks of 4: chunk 0 (empty bank, surprise 1) writes (a->b), (b->c), (c->d) = 3; in
    chunk 1 the pair (d->a) is new — its key d matches no stored key, the read is the mean (b + c + d) / 3,
    surprise ||a - (b+c+d)/3||^2 = 4/3, written — and (a->b), (b->c), (c->d) are predicted exactly
    (surprise 0, not written)."""
    mem = identity_memory().train()
    _, s = mem.read(states("abcdabcd"))
    torch.testing.assert_close(s[0], torch.tensor([1.0, 1, 1, 1, 4 / 3, 0, 0, 0]), atol=1e-5, rtol=0)
    assert int(mem.stats["writes"]) == 4


def test_values_output_and_gate_keep_their_documented_start_after_the_global_init():
    torch.manual_seed(0)
    model = CognateModel(CognateConfig(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, ltm_key_dim=8))
    w_v, w_o = model.memory.value.weight, model.memory.out.weight
    torch.testing.assert_close(w_v @ w_v.T, torch.eye(8), atol=1e-5, rtol=0)   # orthonormal rows
    assert torch.equal(w_o, w_v.T)
    assert torch.all(model.memory.gate.bias == 0.0) and torch.all(model.memory.gate.weight == 0)  # g = 0.5
    mem = SurpriseMemory(32, 4, 8, 0.5, gate_bias=-1.5)    # a non-default start, undone by the global init ...
    mem.apply(CognateModel._init_weights)
    assert torch.all(mem.gate.bias == 0)
    mem.init_gate()                                        # ... and restored by init_gate, as CognateModel calls it
    assert torch.all(mem.gate.bias == -1.5) and torch.all(mem.gate.weight == 0)


@pytest.mark.parametrize("name", ["m1", "m2"])
def test_the_default_row_fits_the_bank_without_eviction(tmp_path, name):
    """m1 and m2 write every surprising token of a default row and keep all of them (no LRU eviction
    before the row ends), so the recall task's fact is still stored when it repeats."""
    cfg = compose_cfg([f"model={name}"], tmp_path)
    m, seq_len = cfg.model, cfg.data.seq_len
    chunk = CognateConfig.ltm_chunk if m.get("ltm_chunk") is None else m.ltm_chunk
    assert m.ltm_max_writes == chunk
    assert m.ltm_max_writes * math.ceil(seq_len / chunk) <= m.ltm_slots


def test_recall_items_repeat_the_fact_beyond_the_window_and_mask_the_repeated_code():
    text = recall(42, "train", 1)["text"]
    fact = text[: text.index(".") + 1]                  # "Kai's code is 2256."
    starts = [m.start() for m in re.finditer(re.escape(fact), text)]
    assert len(starts) == 1 + MIX_REPEATS == 4
    assert all(b - a - len(fact) > 64 for a, b in zip(starts, starts[1:]))  # beyond the default 64-token window
    rows, mask = recall_rows(8, 128, seed=0)             # the ablation's items: one repeat, BOS first
    for row, m in zip(rows, mask):
        ids = row[1:]
        first = bytes(ids[:25].tolist()).decode("latin-1")
        code = bytes(ids[m].tolist()).decode()
        assert m.sum() == 4 and code.isdigit() and f"code is {code}." in first
        assert int(m.nonzero()[0]) - first.index(code) > DEFAULT_GAP   # the repeat lies beyond the gap



def test_recall_ablation_states_the_backbones_reach_which_does_reach_the_code(tmp_path):
    """The recall ablation's repeat (the phase's gap, window + 8) lies beyond ONE attention window, but at the
    default m1 (2 layers, window 64, 4 steps) the backbone alone reaches n_layers * (window - 1) = 126 tokens per
    recursion step, 504 over the steps: the run's line must say so (not "positions only memory can predict"), and
    the claim is checked: with the memory off the repeated digits' logits have a gradient from the first code."""
    from omegaconf import OmegaConf

    from agentforge.artifacts import cognate_config_from
    from agentforge.data.tokenizer import RESERVED_VOCAB
    from agentforge.models.ablation import recall_scope
    cfg = compose_cfg(["model=m1"], tmp_path)
    c = cognate_config_from(OmegaConf.to_container(cfg.model, resolve=True), RESERVED_VOCAB)
    gap, per_step = c.window + 8, c.n_layers * (c.window - 1)
    line, figures = recall_scope(c, gap)
    assert figures == {"ablation/recall_gap_chars": gap, "ablation/backbone_reach_tokens_per_step": per_step,
                       "ablation/backbone_reach_tokens": per_step * c.max_steps}
    assert line.startswith(f"recall: the repeat lies beyond one {c.window}-token attention window; stacked layers "
                           f"and recursion steps could reach it in principle ({c.n_layers} layers x {c.window - 1} = "
                           f"{per_step} tokens per recursion step, {per_step * c.max_steps} over {c.max_steps} step(s)")
    assert line.endswith("the memory-off delta measures what the trained model actually gets from its memory")
    torch.manual_seed(0)
    model = CognateModel(c).eval()
    rows, mask = recall_rows(1, int(cfg.data.seq_len), 0, "val", gap=gap)
    tgt = mask[0].nonzero().flatten()
    seq, code = rows[0].tolist(), rows[0, int(tgt[0]) + 1: int(tgt[0]) + 5].tolist()
    pos = next(j for j in range(len(seq)) if seq[j: j + 4] == code)    # the first statement's code
    assert int(tgt[0]) - pos > c.window                                  # beyond one window
    embedded = []

    def keep(mod, inp, out):
        out.retain_grad()
        embedded.append(out)
    model.embed.register_forward_hook(keep)
    with model.ablate(memory=False, steps=1):                            # one step already reaches it
        model(rows[:, :-1]).logits[0, tgt].sum().backward()
    assert float(embedded[0].grad[0, pos: pos + 4].norm()) > 0


@pytest.mark.slow
def test_trained_memory_recalls_the_code_and_lesioning_it_returns_to_chance():
    """A tiny model (one layer, window 8) trained 300 steps on recall items whose repeat lies 16+ tokens
    back: on 64 held-out items the code's digits are recalled (loss well below chance ln 10) and the
    same weights with the memory's reads off are at chance or worse (paired bootstrap over items)."""
    torch.manual_seed(0)
    model = CognateModel(CognateConfig(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, window=8, max_seq_len=128,
                                       ltm_slots=64, ltm_key_dim=16, ltm_chunk=4, ltm_max_writes=4, max_steps=1,
                                       surprise_threshold=0.0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for i in range(300):
        x = recall_rows(16, 63, seed=i, split="train", gap=16)[0]
        loss = model(x[:, :-1], x[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    rows, mask = recall_rows(64, 63, seed=0, split="val", gap=16)
    on = token_scores(model.eval(), rows)
    per_item = (on["loss"] * mask).sum(1) / mask.sum(1)
    assert float(per_item.mean()) < 0.5 * math.log(10), float(per_item.mean())
    assert float(on["correct"][mask].mean()) > 0.8
    lesion = recall_memory(model, rows, mask)
    assert lesion["ablation/recall_no_memory_loss"] > math.log(10) - 0.05
    assert lesion["ablation/recall_no_memory_loss_delta_ci_low"] > 1.0, lesion
    assert paired_bootstrap(per_item.tolist(), [math.log(10)] * len(per_item))["ci95"][1] < 0


def test_a_persistent_bank_trains_and_does_not_move_under_a_running_decoder():
    """memory.persist: the forward writes the bank in place at its end, which must neither break the backward
    (its reads saved the bank) nor reach a KV decoder that started from the bank before."""
    from tests.test_thought_cache import model_with_mixed_halting

    model = model_with_mixed_halting(3).train()
    model.memory.persist = True
    ids = torch.randint(0, 256, (2, 12))
    model(ids, ids).loss.backward()          # raised "modified by an inplace operation" before
    model(ids, ids).loss.backward()          # a bank written by the previous call, written again
    assert model.memory.filled.any()
    model.eval()
    with torch.no_grad():
        dec = model.kv_decoder(1)
        dec.next_logits(torch.randint(0, 256, (1, 3)))   # no chunk of 4 completed: its state is the bank as it was
        held, bank = [st["keys"].clone() for st in dec.mem], model.memory.keys.clone()
        model(torch.randint(0, 256, (1, 12)))            # writes the persistent bank
    assert not torch.equal(model.memory.keys, bank)
    assert all(torch.equal(st["keys"], h) for st, h in zip(dec.mem, held))


@pytest.mark.parametrize("t,persist", [(11, False), (16, False), (37, False), (23, True)])
def test_batched_reread_has_the_chunk_loops_outputs_and_gradients(t, persist):
    """read() with gradients recomputes all chunks' reads in one batched attention from the no-grad loop's trace;
    its outputs and gradients (input, projections, gate, beta) equal the chunk loop's own autograd (``scan`` from a
    fresh state), also when the bank starts filled (``persist``: indices into the starting bank)."""
    torch.manual_seed(t)
    mem = SurpriseMemory(8, 6, 4, 0.1, max_writes=2, chunk=4).train()
    if persist:
        mem.persist = True
        with torch.no_grad():
            mem.read(torch.randn(1, 12, 8))                 # fills the persistent bank
        mem.persist = False
        assert mem.filled.any()
    h = torch.randn(3, t, 8, requires_grad=True)
    out, s = mem.read(h)
    w = torch.randn_like(out)
    params = [h, *mem.parameters()]
    grads = torch.autograd.grad((out * w).sum(), params)
    ref_out, ref_s = mem.scan(h, mem.init_state(3))
    ref_grads = torch.autograd.grad((ref_out * w).sum(), params)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(s, ref_s)
    for g, ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, ref, atol=1e-5, rtol=1e-4)
    assert grads[1].abs() > 0                               # beta (log_beta, the first parameter) gets a gradient
    if t > 16:  # the point: a few autograd nodes, not ~15 per chunk (53 against 148 and 232 here; the chunk loop
        # had ~20 per chunk, 204 at t = 23, before its reads went to bmm directly, so the factor was 3)
        assert 2.5 * len(autograd_nodes(out)) < len(autograd_nodes(ref_out))



def test_with_gate_norm_the_gate_reads_the_stream_rms_normalized_and_without_it_the_stream():
    """``model.ltm_gate_norm``: merge(h, r) = h + sigmoid(W_g (h / rms(h)) + b) * W_o r, rms(h) = sqrt(mean(h^2))
    over the channels (Titans normalizes before its MAG gate); off (the default), sigmoid(W_g h + b). Both by hand on
    a state whose rms is 2 (h = [2, 2, 2, 2]: h / rms(h) = [1, 1, 1, 1]), with W_g the identity and b = 0."""
    h = torch.full((1, 1, D), 2.0)
    r = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    for norm, gate_input in ((True, 1.0), (False, 2.0)):
        mem = SurpriseMemory(D, 8, D, 0.5, gate_norm=norm).eval()
        with torch.no_grad():
            mem.gate.weight.copy_(torch.eye(D))
            mem.gate.bias.zero_()
            mem.out.weight.copy_(torch.eye(D))
        g = 1 / (1 + math.exp(-gate_input))
        expect = torch.tensor([[[2.0 + g, 2.0, 2.0, 2.0]]])
        assert torch.allclose(mem.merge(h, r), expect, atol=1e-6), (norm, mem.merge(h, r))
    # the config key reaches the model, and a model built without it loads as before (no new weights)
    on = CognateModel(CognateConfig(ltm_gate_norm=True, vocab_size=40, d_model=16, n_heads=2, ffn_hidden=32,
                                    ltm_slots=8, ltm_key_dim=8, max_seq_len=32))
    off = CognateModel(CognateConfig(vocab_size=40, d_model=16, n_heads=2, ffn_hidden=32, ltm_slots=8, ltm_key_dim=8,
                                     max_seq_len=32))
    assert isinstance(on.memory.gate_in, torch.nn.RMSNorm) and isinstance(off.memory.gate_in, torch.nn.Identity)
    assert on.state_dict().keys() == off.state_dict().keys()


def test_gate_norm_changes_nothing_in_a_model_whose_memory_is_off():
    """With ``model.memory=false`` the gate is never read, and ``gate_norm`` adds no weights, so the same seed builds
    the same weights and gives the same loss and gradients with it on or off: a no-memory run is the same run under
    either setting (what lets the trained no-memory ablation serve both)."""
    def run(norm: bool):
        torch.manual_seed(3)
        m = CognateModel(CognateConfig(memory=False, ltm_gate_norm=norm, vocab_size=40, d_model=16, n_heads=2,
                                       ffn_hidden=32, ltm_slots=8, ltm_key_dim=8, max_seq_len=32, max_steps=2)).train()
        ids = torch.randint(0, 40, (2, 17), generator=torch.Generator().manual_seed(0))
        out = m(ids[:, :-1], ids[:, 1:])
        out.loss.backward()
        return m, out.loss
    (a, la), (b, lb) = run(True), run(False)
    assert torch.equal(la, lb)
    for (k, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q) and (p.grad is None) == (q.grad is None), k
        assert p.grad is None or torch.equal(p.grad, q.grad), k
