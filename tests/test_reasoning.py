"""Unit tests of Phase 3's compute (agentforge/reasoning): tokens, baking, thoughts, rewards, checks."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from agentforge.artifacts import load_model, save_model
from agentforge.data.formats import DatasetError
from agentforge.data.tokenizer import BOS_ID, ByteTokenizer
from agentforge.models import CognateConfig, CognateModel
from agentforge.reasoning import baking, coherence, rewards
from agentforge.reasoning.rl import sample_windows
from agentforge.reasoning.strategies import STRATEGIES, generate_examples, load_examples
from agentforge.reasoning.thoughts import (
    MixingHead,
    kl_to_reference,
    policy_logits,
    reinforce_loss,
    sample_thoughts,
    think,
)
from agentforge.reasoning.tokens import (
    SPECIAL_TOKENS,
    THINK_END,
    THINK_START,
    add_reasoning_tokens,
    resize_vocab,
)

torch.set_num_threads(1)


def tiny(vocab: int = 272, seed: int = 0) -> CognateModel:
    torch.manual_seed(seed)
    cfg = CognateConfig(vocab_size=vocab, d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, window=64, max_steps=2,
                        ltm_slots=8, ltm_key_dim=8)  # slots >= ltm_max_writes (8)
    return CognateModel(cfg).eval()


# ---------------------------------------------------------------- tokens
def test_tokens_get_ids_259_to_270_and_persist(tmp_path):
    tok = ByteTokenizer()
    ids = add_reasoning_tokens(tok)
    assert len(SPECIAL_TOKENS) == 12 and list(ids.values()) == list(range(259, 271))
    assert add_reasoning_tokens(tok) == ids  # idempotent
    assert tok.encode(f"a{THINK_START}b<step>") == [97, 259, 98, 261]
    model = tiny()
    save_model(tmp_path / "m", model, tok)
    _, tok2, _ = load_model(tmp_path / "m")
    assert tok2.special_tokens == list(SPECIAL_TOKENS)


def test_resize_grows_rows_and_keeps_old_logits(tmp_path):
    model = tiny(vocab=259)  # no spare rows: must grow
    x = torch.randint(0, 259, (2, 10))
    with torch.no_grad():
        before = model(x).logits
    tok = ByteTokenizer()
    ids = add_reasoning_tokens(tok)
    resize_vocab(model, tok.vocab_size, list(ids.values()), torch.Generator().manual_seed(0))
    assert model.embed.weight.shape[0] == 271 and model.lm_head.weight.shape[0] == 271
    assert model.config.vocab_size == 271
    with torch.no_grad():
        after = model(x).logits
    assert torch.allclose(after[..., :259], before, atol=1e-5)
    trained = model.lm_head.weight[:259]
    assert torch.allclose(model.lm_head.weight[259:], trained.mean(0).expand(12, -1), atol=1e-6)
    emb = model.embed.weight[259:]
    assert emb.std() > 0 and torch.allclose(emb.mean(), model.embed.weight[:259].mean(), atol=0.05)
    save_model(tmp_path / "m", model, tok)  # the saved config matches the new vocab
    loaded, _, _ = load_model(tmp_path / "m")
    assert loaded.config.vocab_size == 271


def test_resize_without_growth_reinitializes_only_new_rows():
    model = tiny(vocab=272)
    old = copy.deepcopy(model)
    resize_vocab(model, 271, [259, 260], torch.Generator().manual_seed(0))
    assert model.embed.weight.shape[0] == 272
    keep = [i for i in range(272) if i not in (259, 260)]
    assert torch.equal(model.embed.weight[keep], old.embed.weight[keep])
    assert not torch.equal(model.embed.weight[259], old.embed.weight[259])


# ---------------------------------------------------------------- strategies
def test_ten_strategies_with_examples_using_their_tokens():
    assert len(STRATEGIES) == 10 and len({s.token for s in STRATEGIES}) == 10
    ex = generate_examples(2, 0)
    assert len(ex) == 20
    for s in STRATEGIES:
        assert s.token in s.prompt and THINK_START in s.prompt and THINK_END in s.prompt
        for e in (e for e in ex if e["strategy"] == s.key):
            assert s.token in e["response"] and e["response"].rstrip().split("#### ")[-1].lstrip("-").isdigit()
    assert generate_examples(1, 0, "val") != generate_examples(1, 0, "train")


def test_user_examples_file_errors_name_the_line(tmp_path):
    p = tmp_path / "ex.jsonl"
    p.write_text('{"strategy": "mece", "question": "q", "response": "r"}\n{"strategy": "nope", "question": "q", "response": "r"}\n')
    with pytest.raises(DatasetError, match=r"ex.jsonl:2: unknown strategy"):
        load_examples(p)
    p.write_text('{"strategy": "mece", "question": "q", "response": "r"}\n')
    assert load_examples(p)[0]["strategy"] == "mece"


# ---------------------------------------------------------------- baking
def test_baking_kl_hand_value():
    t = torch.log(torch.tensor([[[0.5, 0.5]]]))
    s = torch.log(torch.tensor([[[0.9, 0.1]]]))
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert baking.baking_kl(t, s, torch.ones(1, 1, dtype=torch.bool)).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("position", ["start", "answer"])
def test_make_batch_aligns_teacher_and_student(position):
    prompt, xs, ys = [200, 201, 202], [[1, 2, 3], [4, 5]], [[7, 8], [9, 10, 11]]
    t_ids, s_ids, mask = baking.make_batch(prompt, xs, ys, position)
    for i in range(2):
        pos = mask[i].nonzero().flatten()
        assert len(pos) == len(ys[i])  # one KL position per continuation token
        # from the second on, both see the same continuation token at aligned positions
        assert s_ids[i, pos[1:]].tolist() == ys[i][:-1] == t_ids[i, pos[1:] + len(prompt)].tolist()
    assert t_ids[0].tolist()[:8] == ([BOS_ID, 200, 201, 202, 1, 2, 3, 7] if position == "start"
                                     else [BOS_ID, 1, 2, 3, 200, 201, 202, 7])


def _bake_loss(student, teacher, prompt, position):
    xs, ys = [[72, 105, 33], [65, 66]], [[32, 259, 261, 50], [32, 259, 262]]
    t_ids, s_ids, mask = baking.make_batch(prompt, xs, ys, position)
    t_logits = baking.aligned_teacher_logits(teacher(t_ids).logits, len(prompt), s_ids.shape[1])
    return baking.baking_kl(t_logits, student(s_ids).logits, mask)


@pytest.mark.parametrize("position", ["start", "answer"])
def test_baking_loss_zero_for_own_prompted_self_and_positive_otherwise(position):
    model = tiny()
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        assert _bake_loss(model, teacher, [], position).item() == pytest.approx(0.0, abs=1e-7)
        assert _bake_loss(model, teacher, [259, 261, 83, 116, 101, 112, 260], position).item() > 1e-4


def test_baking_steps_reduce_the_kl():
    model, teacher = tiny(), tiny()
    teacher.load_state_dict(model.state_dict())
    prompt = [259, 261, 83, 116, 101, 112, 260]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        first = _bake_loss(model, teacher, prompt, "answer").item()
    for _ in range(15):
        loss = _bake_loss(model, teacher, prompt, "answer")
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert _bake_loss(model, teacher, prompt, "answer").item() < 0.5 * first


def test_token_usage():
    assert baking.token_usage([[1, 259], [2, 3], [260]], [259, 260]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_sample_continuation_draws_the_tokens_of_the_model_rerun_on_the_growing_prefix(temperature):
    """The cached sampler gives the tokens of the plain loop (a forward over the whole growing prefix per
    token, banned tokens at -inf, one multinomial per token), for a prefix longer than the attention
    window and crossing memory chunks."""
    torch.manual_seed(1)
    model = CognateModel(CognateConfig(vocab_size=272, d_model=32, n_layers=2, n_heads=2, ffn_hidden=64, window=8,
                                       max_steps=3, ltm_slots=4, ltm_key_dim=8, ltm_chunk=4, ltm_max_writes=2)).eval()
    with torch.no_grad():
        model.halt_head.weight.normal_(0, 2.0)  # tokens halt at different steps
    prefix, banned = torch.randint(2, 256, (21,)).tolist(), [0, 1, 7]
    ids, gen, want = torch.tensor([prefix]), torch.Generator().manual_seed(4), []
    with torch.no_grad():
        for _ in range(9):
            logits = model(ids).logits[0, -1].float()
            logits[banned] = float("-inf")
            nxt = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen)) if temperature \
                else int(logits.argmax())
            want.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    got = baking.sample_continuation(model, prefix, 9, temperature, torch.Generator().manual_seed(4), banned)
    assert got == want and not set(got) & set(banned)


def test_bake_eval_reuses_the_frozen_teachers_usage():
    """The prompted teacher's token usage is the same in every call (frozen, fixed seed), so a call given
    the first call's figures reports the same ones without sampling the teacher."""
    model, teacher = tiny(seed=2), tiny(seed=3)
    tok = ByteTokenizer()
    ids = add_reasoning_tokens(tok)
    strategies = STRATEGIES[:2]
    val = {s.key: [(tok.encode(e["question"]), tok.encode(e["response"])) for e in generate_examples(2, 0, "val")
                   if e["strategy"] == s.key] for s in strategies}
    prompts = {s.key: tok.encode(s.prompt) for s in strategies}
    usage = {"thinking": [ids[THINK_START]], "strategy": [ids[s.token] for s in strategies],
             **{s.key: [ids[s.token], ids[THINK_START]] for s in strategies}}
    b = type("B", (), {"prompt_position": "answer", "usage_tokens": 3, "temperature": 1.0})()
    first, again = (baking.bake_eval(model, teacher, val, prompts, b, usage) for _ in range(2))
    reused = baking.bake_eval(model, teacher, val, prompts, b, usage, {k: v["teacher_usage"] for k, v in first["per"].items()})
    assert first == again == reused and all(len(pairs) == 2 for pairs in val.values())
    given = baking.bake_eval(model, teacher, val, prompts, b, usage, {k: 0.125 for k in val})  # not sampled again
    assert [v["teacher_usage"] for v in given["per"].values()] == [0.125, 0.125]
    assert [v["usage"] for v in given["per"].values()] == [v["usage"] for v in first["per"].values()]


# ---------------------------------------------------------------- thoughts and RL
IDS = {"start": 259, "end": 260, "banned": [256, 257, 259, 260]}


def test_mixing_weight_zero_and_one_select_without_and_with():
    model = tiny()
    windows = torch.randint(0, 256, (2, 10))
    thoughts = torch.randint(0, 256, (2, 2, 3))
    off = MixingHead(32)  # the reference's start: w = 0
    b0 = think(model, off, windows, 2, 2, 3, 259, 260, thoughts=thoughts)
    assert torch.allclose(b0.mixed_logits, b0.without_logits[:, None].expand_as(b0.mixed_logits), atol=1e-5)
    on = MixingHead(32, init_weight=1.0)
    b1 = think(model, on, windows, 2, 2, 3, 259, 260, thoughts=thoughts)
    row = torch.cat([windows[0, :8], torch.tensor([259]), thoughts[0, 1], torch.tensor([260]), windows[0, 8:9]])
    direct = model(row[None]).logits[0, -2:]
    assert torch.allclose(b1.mixed_logits[0, 1], direct, atol=1e-4)
    # the thought tokens' log-probs are those of the same forward
    logp = torch.log_softmax(model(row[None]).logits[0], -1)
    expect = torch.stack([logp[8 + i, thoughts[0, 1, i]] for i in range(3)])
    assert torch.allclose(b1.thought_logp[0, 1], expect, atol=1e-4)


def test_reinforce_on_thought_tokens_moves_the_policy_toward_the_toy_reward():
    """Toy reward: the share of a thought's tokens that are ASCII letters a-z. REINFORCE with the
    mean-over-thoughts baseline on the thought tokens' log-probs must raise that share."""
    model = tiny(seed=1).train()
    head = MixingHead(32)
    windows = torch.randint(32, 127, (4, 12))
    gen = torch.Generator().manual_seed(0)
    letters = torch.arange(97, 123)

    def mass() -> float:
        with torch.no_grad():
            ctx = torch.cat([windows[:, :8], torch.full((4, 1), 259)], 1)
            p = torch.softmax(model(ctx).logits[:, -1], -1)
            return float(p[:, letters].sum(-1).mean())

    start = mass()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(12):
        batch = think(model, head, windows, 4, 8, 4, 259, 260, banned=IDS["banned"], generator=gen)
        reward = ((batch.thoughts >= 97) & (batch.thoughts <= 122)).float().mean(-1)
        loss = reinforce_loss(batch.thought_logp, rewards.advantages(reward))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert mass() > start + 0.05


def test_reinforce_gradient_vanishes_when_all_thoughts_score_the_same():
    model = tiny()
    batch = think(model, MixingHead(32), torch.randint(0, 256, (2, 10)), 2, 3, 2, 259, 260, banned=IDS["banned"],
                  generator=torch.Generator().manual_seed(0))
    adv = rewards.advantages(torch.full((2, 3), 2.0))
    loss = reinforce_loss(batch.thought_logp, adv)
    loss.backward()
    assert all(p.grad is None or float(p.grad.abs().max()) == 0 for p in model.parameters())


def test_kl_term_is_zero_against_itself_and_positive_against_another():
    model = tiny()
    x = torch.randint(0, 256, (2, 12))
    ref = copy.deepcopy(model)
    with torch.no_grad():
        assert kl_to_reference(model(x).logits, ref(x).logits).item() == pytest.approx(0.0, abs=1e-7)
        assert kl_to_reference(model(x).logits, tiny(seed=5)(x).logits).item() > 1e-4


def test_rewards_and_diversity_hand_values():
    r = torch.tensor([[1.0, 2.0, 3.0]])
    assert rewards.advantages(r).tolist() == [[-1.0, 0.0, 1.0]]
    same = torch.ones(1, 3, 4, dtype=torch.long)
    assert rewards.thought_diversity(same) == 0.0
    assert rewards.thought_diversity(torch.arange(12).view(1, 3, 4)) == 1.0
    gain = rewards.likelihood_gain(torch.tensor([[[-1.0, -1.0]]]), torch.tensor([[-2.0, -3.0]]))
    assert gain.item() == pytest.approx(1.5)


def test_coherence_components():
    embed = torch.randn(10, 4)
    thoughts = torch.tensor([[[1, 2]]])
    assert coherence.semantic(embed, thoughts, torch.tensor([[1, 2, 1, 2]])).item() == pytest.approx(1.0, abs=1e-5)
    assert coherence.predictive(torch.zeros(1)).item() == 0.5
    logits = torch.full((1, 5, 10), -1e4)
    logits[0, 2, 1] = logits[0, 3, 2] = 0.0  # ref model is certain of the thought tokens
    assert coherence.syntactic(logits, thoughts, context_len=2).item() == pytest.approx(1.0)
    assert sum(coherence.WEIGHTS.values()) == pytest.approx(1.0)


# ---------------------------------------------------------------- anti-theater
def test_mixing_weight_starts_at_zero_as_in_the_reference():
    head = MixingHead(32)
    w = head(torch.randn(5, 7, 32), torch.randn(5, 7, 32))
    assert w.shape == (5, 7, 1) and float(w.abs().max()) == 0.0 < 0.1
    model = tiny()
    batch = think(model, head, torch.randint(0, 256, (2, 10)), 2, 3, 2, 259, 260, banned=IDS["banned"],
                  generator=torch.Generator().manual_seed(0))
    assert torch.equal(batch.mixed_logits, batch.without_logits[:, None].expand_as(batch.mixed_logits))


def test_thought_logp_is_the_masked_tempered_sampling_distribution():
    """REINFORCE's log-probs at T = 0.5 with banned tokens: log softmax((logits with banned = -inf) / T),
    the distribution ``sample_thoughts`` draws from (same generator, same tokens)."""
    model = tiny()
    windows = torch.randint(0, 256, (2, 10))
    banned = IDS["banned"] + list(range(100, 200))
    batch = think(model, MixingHead(32), windows, 2, 2, 3, 259, 260, temperature=0.5, banned=banned,
                  generator=torch.Generator().manual_seed(3))
    z = batch.thoughts[0, 1]
    row = torch.cat([windows[0, :8], torch.tensor([259]), z])
    logits = model(row[None]).logits[0, 8:11].clone()
    logits[:, banned] = float("-inf")
    expect = torch.log_softmax(logits / 0.5, -1).gather(-1, z[:, None]).squeeze(-1)
    assert torch.allclose(batch.thought_logp[0, 1], expect, atol=1e-5)
    assert not any(int(t) in banned for t in batch.thoughts.flatten())
    # the sampler draws from exactly these probabilities
    prefix = torch.cat([windows[:, :8], torch.full((2, 1), 259)], 1)
    first = sample_thoughts(model, prefix, 1, 0.5, banned, torch.Generator().manual_seed(7))
    probs = torch.softmax(policy_logits(model(prefix).logits[:, -1], 0.5, banned), -1)
    assert torch.equal(first, torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(7)))


def test_sample_windows_are_contiguous_slices():
    stream = torch.arange(1000)
    w = sample_windows(stream, 3, 50, 4, 10, 2, torch.Generator().manual_seed(0))
    assert w.shape == (12, 12)
    assert bool((w[:, 1:] - w[:, :-1] == 1).all())


def test_a_wrong_guess_in_an_example_is_never_the_answer():
    """The falsification, Bayesian and correction strategies voice a wrong guess before the answer; a guess equal to
    the answer (a mutant writing ``wrong = c`` survived the mutation audit) would teach nothing to correct."""
    import re

    guess = re.compile(r"(?:if it were|prior guess|first try|suppose the answer is|my first belief was|I guessed) "
                       r"(-?\d+)")
    for split in ("train", "val"):
        found = [(r["strategy"], m.group(1), r["response"].rsplit("#### ", 1)[1])
                 for r in generate_examples(3, 0, split) if (m := guess.search(r["response"]))]
        assert len({s for s, _, _ in found}) == 3, found   # the three strategies, each example
        assert all(int(g) != int(c) for _, g, c in found), found


def test_user_examples_keep_one_training_record_per_strategy():
    """``split_user_examples``: the last n_val records of a strategy are held out, but never its only one or its
    last training record (a mutant holding out all of them survived the mutation audit)."""
    from agentforge.reasoning.strategies import split_user_examples

    key = STRATEGIES[0].key

    def rec(q):
        return {"strategy": key, "question": q, "response": " r #### 1"}

    two = [rec("How many apples has Ada?"), rec("How far did Bo walk today?")]
    assert split_user_examples(two, 2) == ([two[0]], [two[1]])
    assert split_user_examples(two[:1], 1) == (two[:1], [])
