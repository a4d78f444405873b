"""What a scaling candidate's files and failures can do to the trusted evaluator (a sixth red-team round, 2026-11-28):
a returned file is refused before it is parsed when parsing it would cost the evaluator far more than its size, and
no failure message carries a figure the candidate chooses (a search reads the messages; the re-scoring sandbox sees
the held-out rows). The epoll / inotify watches of that round are in ``tests/test_sandbox_limits.py``."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save

from agentforge.scaling import rescore, trust
from agentforge.scaling.evaluator import STATUS_MAX_BYTES, read_status
from agentforge.scaling.failures import CandidateFailure, failure
from tests.test_sandbox_scaling import candidate
from tests.test_scaling import TINY_SETTINGS


def test_a_safetensors_header_over_the_cap_is_forged_before_it_is_parsed():
    """Before: a 70 MiB weights file declaring a million empty tensors was parsed (1.4 GB, 14 s) and counted (9 s)."""
    ok = save({"w": torch.zeros(2, 3)})
    assert trust._load({"w.safetensors": ok}, "w.safetensors")["w"].shape == (2, 3)
    header = json.dumps({f"blocks.0.attn.t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
                         for i in range(30_000)}).encode()
    assert len(header) > trust.SAFETENSORS_HEADER_MAX
    many = len(header).to_bytes(8, "little") + header
    for data, said in ((many, f"its header is {len(header)} bytes"), (b"\x01\x02", "its header is missing")):
        with pytest.raises(CandidateFailure, match=said) as exc:
            trust._load({"w.safetensors": data}, "w.safetensors")
        assert exc.value.kind == "forged"


def test_a_status_file_over_the_cap_is_forged_unparsed_and_a_non_object_is_empty():
    """Before: a 32 MiB status.json of ``[{},{},...]`` cost the evaluator ~1 GB to parse (128 MiB: 3.5 GB)."""
    assert read_status(json.dumps({"ok": True, "sizes": []}).encode()) == {"ok": True, "sizes": []}
    assert read_status(b"[1, 2]") == {} and read_status(b"\xff{") == {} and read_status(b"{") == {}
    with pytest.raises(CandidateFailure, match=f"over {STATUS_MAX_BYTES}") as exc:
        read_status(b"[" + b"{}," * (STATUS_MAX_BYTES // 3) + b"{}]")
    assert exc.value.kind == "forged"
    # the child's own failure report stays far inside the cap whatever the exception says
    assert len(json.dumps(failure("crash", "x" * 10 * STATUS_MAX_BYTES))) < 5000


def test_a_forged_gap_is_not_in_the_message():
    """The gap is the candidate's to set (its spot-check logits against its batch ones); its digits were in the
    message a search reads ("by up to 3.27 nats"), about 10 bits per evaluation."""
    rescore._require_close(0.01, 0.01, "fine")   # at the tolerance: passes
    with pytest.raises(CandidateFailure) as exc:
        rescore._require_close(3.2719, 0.01, "size s: differ")
    assert exc.value.kind == "forged" and str(exc.value) == "size s: differ (by more than the tolerance, 0.01 nats)"


@pytest.mark.slow
@pytest.mark.faults
def test_an_exit_status_of_the_rescoring_sandbox_does_not_reach_the_search(tmp_path):
    """A candidate that, in the batch re-scoring sandbox (which holds the held-out rows), exits with a row's token:
    before, "failed with status 32" carried that token into the error a search reads."""
    from agentforge.scaling.evaluator import evaluate

    payload = ("import os\nif os.path.exists('rows.safetensors'):\n    from safetensors.torch import load_file\n"
               "    os._exit(int(load_file('rows.safetensors')['rows'][0][5]) & 0xFF)\n")
    prelude = f"_src = {payload!r}\ngetattr(torch.sys.modules['builtins'], 'ex' + 'ec')(_src, {{}})\n"
    result = evaluate(candidate(tmp_path, prelude), TINY_SETTINGS, cache_dir=tmp_path / "cache", timeout_s=120)
    assert result["error_kind"] == "crash" and "re-scoring size" in result["error"], result["error"]
    assert not any(ch.isdigit() for ch in result["error"].split("failed", 1)[1]), result["error"]
