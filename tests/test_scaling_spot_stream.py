"""The re-scoring's spot check streams its rows (``agentforge/scaling/rescore.py``: ``_stream``, ``infer.py``'s
``stream``): no rows file in the spot sandbox, each row sent only after the one before was answered, a sandbox that
stops answering is a ``crash`` (not a hang, not zero logits), and no failure of a re-scoring sandbox quotes the
candidate's output (the held-out rows are in plain view there; the error text goes back to the search). The
end-to-end forgery these close is ``test_scaling_rescore.py::test_a_model_that_reads_the_set_of_heldout_rows_fails_
the_spot_check`` (slow tier)."""
from __future__ import annotations

import importlib.util
import os
import re
import threading
import time

import pytest
import torch

from agentforge.sandbox import SandboxLimits, strongest_mode
from agentforge.scaling import rescore, trust
from agentforge.scaling.failures import CandidateFailure
from agentforge.scaling.variants import variant_path
from tests.test_scaling import TINY_SETTINGS

LIMITS = SandboxLimits(wall_s=60, cpu_s=120, memory_mb=2**20, max_procs=68, max_file_mb=256)
SIZE = TINY_SETTINGS["sizes"][0]
SETTINGS = {**TINY_SETTINGS, "sizes": [SIZE]}
VOCAB = trust.expected_shapes(SIZE)["embed.weight"][0]
ROWS = torch.randint(0, VOCAB, (5, 8), generator=torch.Generator().manual_seed(1))
# a spy on the first attention module's forward (one call per row in spot mode): ``_fwd_body`` runs before it
SPY = ("\nimport os as _os, sys as _sys, json as _json\n_N = [0]\n_first = [None]\n"
       "_orig_fwd, _orig_init = Attention.forward, Attention.__init__\n"
       "def _init(self, *a, **k):\n    _orig_init(self, *a, **k)\n    _first[0] = _first[0] or self\n"
       "def _fwd(self, x, *a, **k):\n    if self is _first[0]:\n        _N[0] += 1\n{body}"
       "    return _orig_fwd(self, x, *a, **k)\n"
       "Attention.__init__, Attention.forward = _init, _fwd\n")


def _weights() -> dict[str, bytes]:
    from safetensors.torch import save

    from agentforge.scaling.model import ScalingLM

    spec = importlib.util.spec_from_file_location("baseline_variant", variant_path("baseline"))
    variant = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(variant)
    torch.manual_seed(0)
    model = ScalingLM(VOCAB, SIZE["d_model"], SIZE["n_layers"], SIZE["n_heads"], variant.Attention)
    return {f"weights_{SIZE['name']}.safetensors": save(model.state_dict())}


def _code(body: str) -> str:
    return variant_path("baseline").read_text() + SPY.format(body=body)


def test_the_spot_check_sends_each_row_only_after_the_one_before_was_answered(tmp_path):
    """In mode ``spot`` there is no rows file in the sandbox's dir, and at each row's forward the candidate has been
    given exactly the rows so far and nothing waits in the pipe (FIONREAD, nothing consumed): it cannot read ahead.
    The logits equal the batch run's."""
    body = ("        import fcntl as _f, termios as _t, array as _a\n"
            "        _b, _req = _a.array('i', [-1]), _json.load(open('request.json'))\n"
            "        if 'stream' in _req:   # spot mode only\n"
            "            _f.ioctl(int(_req['stream'][0]), _t.FIONREAD, _b)\n"
            "        print('SEEN', _N[0], _os.path.exists('rows.safetensors'), 'PENDING', _b[0], file=_sys.stderr, "
            "flush=True)\n")
    code, weights, run = _code(body), _weights(), dict(sandbox=strongest_mode(), log_dir=tmp_path, limits=LIMITS)
    alone = rescore.infer(code, SETTINGS, weights, {"rows": ROWS}, "spot", **run)[SIZE["name"]]["last"]
    log = (tmp_path / "rescore.log").read_text()
    assert re.findall(r"SEEN (\d+) (\w+) PENDING (\d+)", log) == [(str(i), "False", "0") for i in range(1, 6)], log
    batch = rescore.infer(code, SETTINGS, weights, {"rows": ROWS, "probe": ROWS[:2].clone()}, "batch", **run)
    assert alone.shape == (5, VOCAB) and rescore.logprob_gap(alone, batch[SIZE["name"]]["last"]) < 1e-5


def test_a_spot_sandbox_that_stops_answering_is_a_crash_not_a_hang(tmp_path):
    """The candidate ends its process (exit 0) at the second row: the feeder sees EOF, and the re-scoring says the
    sandbox ended before answering every row — not zero logits read as ``forged``, not a parent waiting forever."""
    code = _code("        if _N[0] == 2:\n            _os._exit(0)\n")
    box: dict = {}

    def go():
        try:
            box["out"] = rescore.infer(code, SETTINGS, _weights(), {"rows": ROWS}, "spot", sandbox=strongest_mode(),
                                       log_dir=tmp_path, limits=LIMITS)
        except Exception as exc:   # noqa: BLE001 -- whatever it is, the assertion below names it
            box["err"] = exc

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(90)
    assert not t.is_alive(), "the re-scoring hung"
    err = box.get("err")
    assert isinstance(err, CandidateFailure) and err.kind == "crash" and "ended before answering" in str(err), box


def test_read_exact_joins_short_reads():
    r, w = os.pipe()

    def write():
        os.write(w, b"abc")
        time.sleep(0.2)
        os.write(w, b"defgh")
        os.close(w)

    threading.Thread(target=write).start()
    assert rescore._read_exact(r, 8) == b"abcdefgh"
    assert rescore._read_exact(r, 1) is None   # end of file first
    os.close(r)


@pytest.mark.parametrize("prefix,kind", [("", "crash"), ("MemoryError ", "memory")])
def test_a_failure_in_the_rescoring_sandbox_does_not_quote_the_candidate(tmp_path, prefix, kind):
    """A candidate that crashes with a held-out row in its message does not get it out, as a crash or as a failure
    the sandbox reads as memory (its stderr naming MemoryError, which the candidate controls); its stderr stays in
    rescore.log."""
    code = variant_path("baseline").read_text() + (
        "\nfrom safetensors.torch import load_file as _lf\n"
        f"raise SystemExit({prefix!r} + 'ROWS ' + ' '.join(map(str, _lf('rows.safetensors')['rows'][0].tolist())))\n")
    rows = ROWS[:3].clone()
    with pytest.raises(CandidateFailure) as err:
        rescore.infer(code, SETTINGS, {f"weights_{SIZE['name']}.safetensors": b""},
                      {"rows": rows, "probe": rows[:1].clone()}, "batch", sandbox=strongest_mode(), log_dir=tmp_path,
                      limits=LIMITS)
    leaked = "ROWS " + " ".join(map(str, rows[0].tolist()))
    assert err.value.kind == kind and "ROWS" not in str(err.value) and "rescore.log" in str(err.value)
    assert leaked in (tmp_path / "rescore.log").read_text()   # the candidate did print it: kept locally
