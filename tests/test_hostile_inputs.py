"""Damaged or hostile inputs (an audit's cases): each is one ``error:`` naming the file and the key or tensor, never
a silent evaluation of damaged weights, a traceback, or a model built from a config.json that does not describe its
weights. Unit tests on tiny files written here; no training, no CLI run."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from agentforge.artifacts import load_any, load_model, save_model
from agentforge.cli_errors import config_file_problem
from agentforge.data.build import eval_sets
from agentforge.data.formats import DatasetError, load_jsonl
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.errors import ConfigError
from agentforge.evals.intervals import perplexity_ci
from agentforge.evals.results_file import check_results, load_results
from agentforge.io import CheckpointError
from agentforge.models import CognateConfig, CognateModel
from agentforge.quant.checkpoint import load_packed, save_packed, tensors_digest
from agentforge.quant.convert import convert_to_bitlinear

SMALL = CognateConfig(vocab_size=40, d_model=16, n_layers=1, n_heads=2, ffn_hidden=24, window=8, max_seq_len=32,
                      ltm_slots=4, ltm_key_dim=8)


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    return save_model(tmp_path / "ck", CognateModel(SMALL), ByteTokenizer())


def _edit_tensors(d, fn):
    f = d / "model.safetensors"
    state = load_file(str(f))
    fn(state)
    save_file(state, str(f))
    return state


def _edit_config(d, fn):
    cfg = json.loads((d / "config.json").read_text())
    fn(cfg)
    (d / "config.json").write_text(json.dumps(cfg))


K = "blocks.0.attn.q_proj.weight"


@pytest.mark.parametrize("damage, message", [
    (lambda s: s[K].view(-1)[3:4].fill_(float("nan")), f"tensor {K} holds NaN or Inf"),
    (lambda s: s[K].view(-1)[0:1].fill_(float("inf")), f"tensor {K} holds NaN or Inf"),
    (lambda s: s.update({k: torch.full_like(v, float("nan")) for k, v in s.items() if v.is_floating_point()}),
     "holds NaN or Inf"),
    (lambda s: s.update({K: s[K].to(torch.bool)}), f"tensor {K} is bool, the model's is float32"),
    (lambda s: s.update({K: (s[K] * 100).to(torch.int64)}), f"tensor {K} is int64, the model's is float32"),
])
def test_damaged_weights_are_refused_naming_the_file_and_tensor(ckpt, damage, message):
    # main loaded them (load_state_dict casts int/bool silently) and phase=eval published their results, exit 0
    _edit_tensors(ckpt, damage)
    with pytest.raises(CheckpointError, match=re.escape(message)) as err:
        load_any(ckpt)
    assert str(ckpt / "model.safetensors") in str(err.value)


def test_float16_weights_still_load(ckpt):
    _edit_tensors(ckpt, lambda s: s.update({K: s[K].half()}))
    load_model(ckpt)


@pytest.fixture
def packed(tmp_path):
    torch.manual_seed(0)
    model = CognateModel(SMALL)
    convert_to_bitlinear(model)
    return save_packed(tmp_path / "bn", model, ByteTokenizer())


def _repack(d, fn):
    """Edit the packed file's tensors and recompute config.json's checksum (what an attacker or a bug would do)."""
    state = _edit_tensors(d, fn)
    _edit_config(d, lambda c: c["meta"]["quant"].__setitem__("tensors_sha256", tensors_digest(state)))


def test_a_packed_file_whose_gamma_is_nan_is_refused(packed):
    # main: loaded and evaluated (checksum recomputed); phase=bitnet on such a model crashed with 'a bug'
    load_packed(packed, choose_kernel=False)   # act_clip +inf (not calibrated) is a legitimate value
    g = "blocks.0.attn.q_proj.gamma"
    _repack(packed, lambda s: s[g].fill_(float("nan")))
    with pytest.raises(CheckpointError, match=f"tensor {re.escape(g)} holds NaN"):
        load_packed(packed, choose_kernel=False)


def test_packed_codes_of_the_wrong_kind_are_refused(packed):
    c = "blocks.0.attn.q_proj.codes_packed"
    _repack(packed, lambda s: s.update({c: s[c].float()}))
    with pytest.raises(CheckpointError, match=f"tensor {re.escape(c)} is float32, the model's is uint8"):
        load_packed(packed, choose_kernel=False)


def test_a_preserved_tensor_of_the_wrong_kind_in_a_packed_file_is_refused(packed):
    """The tensors kept out of the ternary layers (the embedding here) are checked like a plain checkpoint's: an int
    tensor would be cast to float silently (dropping that check survived the mutation audit)."""
    _repack(packed, lambda s: s.update({"embed.weight": (s["embed.weight"] * 100).to(torch.int64)}))
    with pytest.raises(CheckpointError, match="tensor embed.weight is int64"):
        load_packed(packed, choose_kernel=False)


def test_a_deeply_nested_checkpoint_config_is_one_error(ckpt):
    (ckpt / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        load_model(ckpt)


L0 = "blocks.0.attn.q_proj"


@pytest.mark.parametrize("key, value", [("layers", ["x"]), ("layers", {L0: "x"}),
                                        ("threshold", None), ("packing", ["x"]), ("act_bits", 1000),
                                        ("per_channel", "no"), ("act_scale", 3),
                                        # each bound at its edge (loosened bounds survived the mutation audit)
                                        ("packing", "zzz"), ("act_bits", 9), ("act_scale", "tok"),
                                        ("layers", {L0: {"shape": [4, 4, 4], "bias": False}}),
                                        ("layers", {L0: {"shape": [0, 4], "bias": False}}),
                                        ("layers", {L0: {"shape": [4, 4], "bias": "x"}})])
def test_every_quant_meta_field_is_checked(packed, key, value):
    # main: AttributeError / TypeError / KeyError / OverflowError tracebacks
    def edit(c):
        if key == "threshold":
            del c["meta"]["quant"]["threshold"]
        else:
            c["meta"]["quant"][key] = value
    _edit_config(packed, edit)
    with pytest.raises(CheckpointError, match=rf"config.json: meta\.quant\.{key} must be"):
        load_packed(packed, choose_kernel=False)


@pytest.mark.parametrize("key, value", [("n_layers", 10**12), ("vocab_size", 10**15), ("ffn_hidden", 10**9),
                                        ("ltm_slots", 10**9), ("max_seq_len", 10**12)])
def test_a_config_that_does_not_describe_the_file_is_refused_before_the_model_is_built(ckpt, key, value):
    # main built CognateModel(config) first: hung or exhausted memory
    _edit_config(ckpt, lambda c: c["model"].__setitem__(key, value))
    with pytest.raises(CheckpointError, match=rf"config.json: model\.{key} "):
        load_any(ckpt)


def test_a_packed_config_too_big_for_its_codes_is_refused(packed):
    _edit_config(packed, lambda c: c["model"].__setitem__("ffn_hidden", 10**9))
    with pytest.raises(CheckpointError, match=r"config.json: model\.ffn_hidden is 1000000000"):
        load_packed(packed, choose_kernel=False)


def test_damaged_checkpoint_metadata_is_one_error(ckpt):
    _edit_config(ckpt, lambda c: c.__setitem__("architecture", ["x"]))
    with pytest.raises(CheckpointError, match="unknown architecture"):
        load_any(ckpt)
    (ckpt / "config.json").write_bytes(b'{"format": "\xff\xfe"}')
    with pytest.raises(CheckpointError, match="config.json: not UTF-8"):
        load_any(ckpt)


def test_perplexity_interval_of_non_finite_or_huge_losses_is_left_out():
    # main: OverflowError in phase=eval after {stage}_results.json was published
    assert perplexity_ci([1000.0, 1.0, 2000.0]) == {}
    assert perplexity_ci([math.inf, 1.0]) == {}
    assert perplexity_ci([1.0, 2.0])["perplexity_n"] == 2


def test_deeply_nested_json_is_one_error(tmp_path):
    (tmp_path / "deep.jsonl").write_text("[" * 100000 + "]" * 100000 + "\n")
    with pytest.raises(DatasetError, match="nested too deeply"):
        load_jsonl(tmp_path / "deep.jsonl", "arc", key="data.eval_paths.arc")
    (tmp_path / "a_results.json").write_text("[" * 100000 + "]" * 100000)
    (tmp_path / "b_results.json").write_bytes(b'{"metrics": {"a": "\xff"}}')
    with pytest.raises(ConfigError, match="a_results.json: JSON nested too deeply"):
        load_results(tmp_path, ["a"])
    with pytest.raises(ConfigError, match="b_results.json: not UTF-8"):
        load_results(tmp_path, ["b"])


def _arc(i: int) -> dict:
    return {"question": f"Which is item {i} number {7 * i}?", "answerKey": "B",
            "choices": {"text": ["red box", "blue box", "green box"], "label": ["A", "B", "C"]}}


def test_a_short_eval_file_says_it_is_scored_on_fewer_rows(tmp_path, capsys):
    # main: scored n=2 of the 4 asked for, silently
    f = tmp_path / "arc.jsonl"
    f.write_text("".join(json.dumps(_arc(i)) + "\n" for i in range(8)))
    sets = eval_sets({"eval_paths": {"arc": str(f)}}, 0, {"gsm8k": 1, "arc": 50, "piqa": 1}, "test",
                     {"gsm8k": "phase.eval_examples", "arc": "phase.choice_examples", "piqa": "phase.choice_examples"})
    out = capsys.readouterr().out
    assert f"warning: data.eval_paths.arc={f}: {len(sets['arc'])} distinct test records" in out
    assert "phase.choice_examples=50" in out and out.count("\n") == 1
    # a file larger than the request but short after its val/test split warns too; a request it meets, not at all
    # (the file's size, or '<=', in place of the rows kept survived the mutation audit)
    f.write_text("".join(json.dumps(_arc(i)) + "\n" for i in range(60)))
    keys = {"gsm8k": "phase.eval_examples", "arc": "phase.choice_examples", "piqa": "phase.choice_examples"}
    kept = len(eval_sets({"eval_paths": {"arc": str(f)}}, 0, {"gsm8k": 1, "arc": 50, "piqa": 1}, "test", keys)["arc"])
    assert kept < 50 and f"{kept} distinct test records remain of its 60" in capsys.readouterr().out
    eval_sets({"eval_paths": {"arc": str(f)}}, 0, {"gsm8k": 1, "arc": kept, "piqa": 1}, "test", keys)
    assert "warning" not in capsys.readouterr().out


@pytest.mark.parametrize("value", ["abc", [1, 2], True, {}])
def test_results_metrics_must_be_numbers(value):
    res = {"metrics": {"perplexity": value, "decode_cached": True}, "per_example": {}}
    with pytest.raises(ConfigError, match=r"f\.json: metrics\.perplexity is"):
        check_results(res, "f.json", "x")
    with pytest.raises(ConfigError, match=r"f\.json: metrics is empty"):
        check_results({"metrics": {}}, "f.json", "x")
    check_results({"metrics": {"perplexity": None, "arc_easy_accuracy": 0.5, "decode_cached": True}}, "f.json")


@pytest.mark.parametrize("content, message", [(b"a: {b: 1\n", "not valid YAML"), (b"a: '\xff'\n", "not UTF-8"),
                                              (b"a: !!python/object/apply:os.system [ls]\n", "holds a YAML tag"),
                                              (b"- 1\n", "a YAML list, not a mapping")])
def test_a_damaged_saved_config_is_one_line_naming_it(tmp_path, content, message):
    (tmp_path / "config_resolved.yaml").write_bytes(content)
    problem = config_file_problem(["--config-path", str(tmp_path), "--config-name=config_resolved", "phase=eval"])
    assert problem.startswith(f"{tmp_path / 'config_resolved.yaml'}: {message}")
    (tmp_path / "config_resolved.yaml").write_text("a: 1\n")
    assert config_file_problem(["--config-path", str(tmp_path), "--config-name", "config_resolved"]) is None


def test_a_config_without_paths_run_dir_names_the_key(tmp_path):
    from omegaconf import OmegaConf

    from agentforge.phases.context import resolved_paths

    with pytest.raises(ConfigError, match=r"paths\.run_dir: missing from the config"):
        resolved_paths(OmegaConf.create({"paths": {"artifacts": str(tmp_path)}}))


def test_duplicate_example_ids_name_the_results_file():
    # main: "arc_easy_accuracy: malformed results (per-example ids ...)" from the comparison, no file named
    per = {"arc_correct": [1, 0], "arc_ids": ["q1", "q1"]}
    with pytest.raises(ConfigError, match=r"f\.json: per_example\.arc_ids repeats the id 'q1'"):
        check_results({"metrics": {"arc_easy_accuracy": 0.5}, "per_example": per}, "f.json", "x")


def test_an_unreadable_last_ckpt_is_said_to_be_unreadable(tmp_path, capsys):
    # main: "was written by a different configuration" (the fingerprint compared before the load error was read)
    from agentforge.training.resume import resume_path

    (tmp_path / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    assert resume_path(None, tmp_path, "0123456789abcdef", expected=None) is None
    out = capsys.readouterr().out
    assert out.startswith(f"not resuming: {tmp_path / 'last.ckpt'} cannot be read (") and "configuration" not in out


@pytest.mark.parametrize("key, value", [("n_layers", 10**12), ("vocab_size", 10**6)])
def test_a_surgery_wrapped_checkpoint_is_checked_against_its_base_tensors(tmp_path, key, value):
    """The recursive wrapper's weights are ``base.*``: its base config is checked against them (the prefix, and the
    check itself, survived the mutation audit: a vocab of 10^6 was built, then failed on the load)."""
    from agentforge.evals.checkpoints import save_recursive
    from agentforge.models.surgery import RecursiveRefiner

    torch.manual_seed(0)
    d = save_recursive(tmp_path / "rec", RecursiveRefiner(CognateModel(SMALL), 2, 8), ByteTokenizer())
    _edit_config(d, lambda c: c["model"]["base"].__setitem__(key, value))
    with pytest.raises(CheckpointError, match=rf"config.json: model\.{key} is {value} but"):
        load_any(d)


def test_the_cli_reads_a_damaged_saved_config_before_hydra(tmp_path):
    """Through the real CLI: one ``error:`` line naming the file and the line of the YAML error, exit 2 (unwiring the
    check from the CLI, or an off-by-one line, survived the mutation audit)."""
    from tests.conftest import run_cli

    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "bad.yaml").write_bytes(b"a: {b: 1\n")
    proc = run_cli(["--config-path", str(tmp_path / "saved"), "--config-name", "bad"], tmp_path, timeout=120)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {tmp_path / 'saved' / 'bad.yaml'}: not valid YAML at line 2"), lines[0]
