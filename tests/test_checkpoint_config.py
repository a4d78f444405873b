"""A checkpoint's ``config.json`` is checked by the config rules when it loads (``artifacts.checked_model_config``,
``checked_tokenizer``): a hand-edited or foreign value is one ``CheckpointError`` naming the file and the key, for
the plain, packed (BitNet) and recursive-refiner loaders alike — before, a bad type or head count was a traceback from
the model's constructor, and a negative window or junk tokenizer keys loaded silently."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from agentforge.artifacts import load_model, save_model
from agentforge.data.tokenizer import ByteTokenizer
from agentforge.io import CheckpointError
from agentforge.models import CognateConfig, CognateModel
from tests.conftest import run_cli

EDITS = [  # (where, key, value, what the message must name)
    ("model", "d_model", "abc", "model.d_model must be an integer >= 8, got 'abc'"),
    ("model", "n_heads", 3, "model.d_model (32) must split into model.n_heads (3) heads of even size"),
    ("model", "window", -1, "model.window must be an integer >= 1, got -1"),
    ("model", "tie_embeddings", "yes", "model.tie_embeddings must be true or false"),
    ("model", "memory", "yes", "model.memory must be true or false"),
    ("model", "act_threshold", 2.0, "model.act_threshold must be a number > 0 <= 1, got 2.0"),
    ("model", "colour", 1, "unknown Cognate config keys: ['colour']"),
    ("tokenizer", None, [1, 2], "tokenizer: must be a mapping"),
    ("tokenizer", "type", "bpe", "tokenizer: unsupported tokenizer type 'bpe'"),
    ("tokenizer", "junk", 1, "tokenizer: unknown keys ['junk']"),
    ("tokenizer", "special_tokens", [3], "special_tokens must be a list of non-empty strings"),
]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    torch.manual_seed(0)
    model = CognateModel(CognateConfig(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64, window=16, max_seq_len=64,
                                       ltm_key_dim=16, ltm_slots=8, max_steps=2))
    return save_model(tmp_path_factory.mktemp("ckpt") / "good", model, ByteTokenizer())


def _edited(good, tmp_path, where, key, value):
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    cfg = json.loads((bad / "config.json").read_text())
    if key is None:
        cfg[where] = value
    else:
        cfg[where][key] = value
    (bad / "config.json").write_text(json.dumps(cfg))
    return bad


@pytest.mark.parametrize("where,key,value,message", EDITS, ids=[f"{w}.{k}={v}" for w, k, v, _ in EDITS])
def test_a_bad_checkpoint_config_value_is_one_checkpoint_error(good, tmp_path, where, key, value, message):
    load_model(good)  # the unedited copy loads
    bad = _edited(good, tmp_path, where, key, value)
    with pytest.raises(CheckpointError) as exc:
        load_model(bad)
    assert str(exc.value).startswith(f"{bad}/config.json: ") and message in str(exc.value), str(exc.value)


@pytest.mark.slow   # ~12 s; the loader's message is tested above, and a CheckpointError as one CLI line in the
# default tier by test_faults.py::test_a_plain_pickle_as_ckpt_path_is_refused_before_the_run_starts
def test_the_cli_reports_it_in_one_error_line(good, tmp_path):
    bad = _edited(good, tmp_path, "model", "d_model", "abc")
    proc = run_cli(["phase=eval", f"checkpoint={bad}", "logger=none", "hardware=cpu"], tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "config.json: model.d_model must be an integer" in lines[0], proc.stderr[-2000:]


def test_the_packed_and_recursive_loaders_check_the_same_way(good, tmp_path):
    from agentforge.artifacts import load_any
    from agentforge.evals.checkpoints import save_recursive
    from agentforge.models.surgery import wrap
    from agentforge.quant.checkpoint import save_packed
    from agentforge.quant.convert import convert_to_bitlinear

    model = load_model(good)[0]
    convert_to_bitlinear(model)
    packed = save_packed(tmp_path / "packed", model, ByteTokenizer(), preserved_dtype="float32")
    recursive = save_recursive(tmp_path / "rec", wrap(load_model(good)[0]), ByteTokenizer())
    for directory, edit in ((packed, lambda c: c["model"].update(window=-1)),
                            (recursive, lambda c: c["model"]["base"].update(window=-1)),
                            (packed, lambda c: c["tokenizer"].update(type="bpe")),
                            (recursive, lambda c: c["tokenizer"].update(type="bpe"))):
        load_any(directory)  # the unedited checkpoint loads
        cfg = json.loads((directory / "config.json").read_text())
        original = json.dumps(cfg)
        edit(cfg)
        (directory / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match=r"config\.json: (model\.window must be an integer >= 1, got -1|"
                                                  r"tokenizer: unsupported tokenizer type 'bpe')"):
            load_any(directory)
        (directory / "config.json").write_text(original)


def test_a_corrupt_or_incomplete_checkpoint_says_what_to_do(good, tmp_path):
    """A malformed config.json and a missing model.safetensors named the file and stopped there (an audit): each now
    says to re-run the phase that wrote it or to point at a complete checkpoint directory."""
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    (bad / "config.json").write_text('{"format": "x\x01"}')
    with pytest.raises(CheckpointError, match=r"^.*/bad/config\.json: malformed JSON \(Invalid control character .*\); "
                                              r"the checkpoint is corrupt — re-run the phase that wrote it, or point "
                                              r"at a complete checkpoint directory$"):
        load_model(bad)
    shutil.copy(good / "config.json", bad / "config.json")
    (bad / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"^.*/bad/model\.safetensors: no such weights file; the checkpoint is "
                                              r"incomplete — re-run the phase that wrote it, or point at a complete "
                                              r"checkpoint directory \(with model\.safetensors beside its config\.json\)$"):
        load_model(bad)

