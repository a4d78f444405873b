"""Attacks through the scaling evaluator (the OpenEvolve path): escapes the static check lets through,
forged scores, a patched trainer, a skipped check, sabotage of small sizes. Each must end with a failing
score or one no better than the honest baseline, no file outside the temp dir, no secret read, no byte
sent and no process left (``make test-faults``). Plus the trusted side's checks on hand-made outputs."""
from __future__ import annotations

import json
import math
import socket
import threading
import uuid

import pytest
import torch
from safetensors.torch import save

from agentforge.scaling import trust
from agentforge.scaling.evaluator import FAIL_SCORE, check_static, evaluate
from agentforge.scaling.failures import CandidateFailure
from agentforge.scaling.fit import fit_scaling_law, guarded_fitness
from agentforge.scaling.variants import variant_path
from tests.conftest import compose_cfg, run_cli
from tests.test_sandbox_attacks import alive_with
from tests.test_scaling import NONCAUSAL, TINY_CLI, TINY_SETTINGS, with_block

BASE_BLOCK = variant_path("baseline").read_text().split("# EVOLVE-BLOCK-START\n")[1].split("# EVOLVE-BLOCK-END")[0]


def candidate(tmp_path, prelude: str = "", block: str = BASE_BLOCK, framework: str = "baseline"):
    code = with_block(framework, prelude + "\n" + block)
    assert check_static(code) == framework  # the friendly filter lets every one of these through
    path = tmp_path / f"cand_{uuid.uuid4().hex[:8]}.py"
    path.write_text(code)
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("scaling_cache")


@pytest.fixture(scope="module")
def baseline(cache):
    result = evaluate(variant_path("baseline"), TINY_SETTINGS, cache_dir=cache, timeout_s=120)
    assert result["valid"] == 1.0, result["error"]
    return result


def run(path, cache, settings=TINY_SETTINGS):
    return evaluate(path, settings, cache_dir=cache, timeout_s=120)


# -- attacks through the evaluator -------------------------------------------------------------------------
@pytest.mark.faults
def test_escapes_through_torch_reach_nothing(tmp_path, cache, baseline, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-77")
    monkeypatch.setenv("OPENAI_API_KEY", "llm-secret-88")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(0.2)
    got, done, marker = [], threading.Event(), uuid.uuid4().hex

    def accept():
        while not done.is_set():
            try:
                got.append(srv.accept()[0].recv(100))
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    dropped, copied = tmp_path / "pwned.txt", tmp_path / "passwd_copy"
    port = srv.getsockname()[1]
    shell = (f"echo pwned > {dropped}; cp /etc/passwd {copied}; cp /etc/passwd /tmp/{marker}; "
             f"{{py}} -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), timeout=1).sendall(b\"x\")'; "
             f"setsid {{py}} -c 'import time; time.sleep(60)' {marker} &")
    prelude = (f"_shell = {shell!r}.replace('{{py}}', torch.sys.executable)\n"
               "getattr(torch, 'o' + 's').system(_shell)\ntorch.os.system(_shell)\n"
               "_stolen = torch.os.environ.get('WANDB_API_KEY', '') + torch.os.environ.get('OPENAI_API_KEY', '')\n"
               "if _stolen:\n    raise RuntimeError('stole ' + _stolen)\n"
               "try:\n    torch.from_file('/etc/passwd', size=8)\n    raise RuntimeError('read /etc/passwd')\n"
               "except (OSError, RuntimeError):\n    pass\n"
               "try:\n    torch.builtins.open('/etc/passwd')\n    raise RuntimeError('opened /etc/passwd')\n"
               "except (OSError, AttributeError):\n    pass\n")
    result = run(candidate(tmp_path, prelude), cache)
    done.set()
    srv.close()
    assert result["valid"] == 1.0, result["error"]  # nothing it tried worked, so it trained as the baseline
    assert result["combined_score"] <= baseline["combined_score"] + 1e-9
    assert not dropped.exists() and not copied.exists() and not (tmp_path.parent / marker).exists()
    assert got == [] and alive_with(marker) == []


@pytest.mark.faults
@pytest.mark.slow   # 12 s; make test-faults runs it
def test_patched_loss_cannot_raise_the_score(tmp_path, cache, baseline):
    prelude = "torch.nn.functional.cross_entropy = lambda *a, **k: torch.zeros((), requires_grad=True)\n"
    result = run(candidate(tmp_path, prelude), cache)
    assert result["valid"] == 1.0, result["error"]  # the parent's loss is honest: an untrained model's
    assert result["combined_score"] < baseline["combined_score"]
    assert result["loss_s"] > baseline["loss_s"]


@pytest.mark.faults
def test_forged_results_are_rejected_and_cached_as_forged(tmp_path, cache):
    prelude = ("_fake = '{\"ok\": true, \"sizes\": [{\"name\": \"xs\", \"loss\": 0.001}]}'\n"
               "torch.builtins = torch.sys.modules['builtins']\n"
               "torch.builtins.open('status.json', 'w').write(_fake)\n"
               "for _n in ('xs', 's'):\n"
               "    torch.builtins.open(f'weights_{_n}.safetensors', 'wb').write(b'not safetensors')\n"
               "    torch.builtins.open(f'logits_{_n}.safetensors', 'wb').write(b'{}')\n"
               "torch.os._exit(0)\n")
    result = run(candidate(tmp_path, prelude), cache)
    assert (result["valid"], result["error_kind"], result["combined_score"]) == (0.0, "forged", FAIL_SCORE)
    assert run(candidate(tmp_path, prelude), cache)["error_kind"] == "forged"


@pytest.mark.faults
@pytest.mark.slow
def test_skipping_the_early_check_is_caught_on_the_trusted_side(tmp_path, cache):
    prelude = "torch.sys.modules['__main__'].check_attention = lambda *a, **k: {}\n"
    path = candidate(tmp_path, prelude, NONCAUSAL, "coefficient_dynamics")
    result = run(path, cache)
    assert result["error_kind"] == "non_causal" and "logits" in result["error"], result["error"]
    again = run(path, cache)
    assert again["cached"] is True and again["error_kind"] == "non_causal"  # a trusted verdict is kept


@pytest.mark.faults
@pytest.mark.slow
def test_sabotaging_the_smallest_size_scores_below_the_baseline(tmp_path, cache, baseline):
    block = BASE_BLOCK.replace("        return self.out(y.transpose(1, 2).reshape(b, t, d))",
                               "        out = self.out(y.transpose(1, 2).reshape(b, t, d))\n"
                               "        return 1000.0 * torch.sin(1000.0 * x) if d <= 16 else out")
    settings = {**TINY_SETTINGS, "fitness": {"reference": "baseline"}}
    result = run(candidate(tmp_path, block=block), cache, settings)
    assert result["valid"] == 1.0, result["error"]
    assert result["loss_s"] == pytest.approx(baseline["loss_s"], abs=1e-6)  # identical at the larger size
    assert result["fitness"] > baseline["fitness"]  # -slope alone would reward the sabotage ...
    assert result["guard_excess"] > 0 and result["combined_score"] < baseline["combined_score"]  # ... the guard does not


@pytest.mark.faults
def test_missing_bwrap_is_refused_with_one_error_line(tmp_path):
    refused = run_cli(["phase=scaling", *TINY_CLI], tmp_path, env={"PATH": str(tmp_path)})
    assert refused.returncode == 2, refused.stderr[-2000:]
    errors = [ln for ln in refused.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "apt-get install bubblewrap" in errors[0] and "phase.sandbox=process" in errors[0]
    assert not list((tmp_path / "outputs").rglob("fitness.json"))  # refused before anything ran


@pytest.mark.slow
def test_process_mode_warns_and_is_recorded(tmp_path, capsys):
    from agentforge.phases import scaling

    cfg = compose_cfg(["phase=scaling", "phase.sandbox=process", *TINY_CLI], tmp_path)
    result = scaling.evaluate_cfg(cfg, variant_path("baseline"))
    scaling.evaluate_cfg(cfg, variant_path("baseline"))  # a second call (a cache hit) warns again
    assert capsys.readouterr().err.count("warning: phase.sandbox=process runs candidate code WITHOUT isolation") == 2
    assert result["valid"] == 1.0 and result["sandbox"] == "process", result["error"]


@pytest.mark.slow
def test_cli_process_mode_records_it_in_fitness_json(tmp_path):
    weak = run_cli(["phase=scaling", "phase.sandbox=process", *TINY_CLI], tmp_path)
    assert weak.returncode == 0, weak.stderr[-2000:]
    assert "warning: phase.sandbox=process runs candidate code WITHOUT isolation" in weak.stderr
    fitness = json.loads(next((tmp_path / "outputs" / "runs").glob("*/*/fitness.json")).read_text())
    assert fitness["sandbox"] == "process" and fitness["valid"] == 1.0


# -- the trusted side on hand-made outputs (no sandbox) ----------------------------------------------------
SIZE = {"name": "xs", "d_model": 16, "n_layers": 1, "n_heads": 2}


def outputs(weights=None, last=None, probe=None, n=4, p=1, t=6):
    shapes = trust.expected_shapes(SIZE)
    weights = weights if weights is not None else {k: torch.zeros(s) for k, s in shapes.items()}
    vocab = shapes["embed.weight"][0]
    last = last if last is not None else torch.zeros(n, vocab)
    probe = probe if probe is not None else torch.zeros(2 * p, t, vocab)
    return {"weights_xs.safetensors": save(weights), "logits_xs.safetensors": save({"last": last, "probe": probe})}


HELDOUT = {"inputs": torch.zeros(4, 6, dtype=torch.long), "targets": torch.tensor([1, 2, 3, 4]),
           "probe": torch.zeros(2, 6, dtype=torch.long), "cuts": torch.tensor([2])}


def test_trusted_loss_and_param_count_on_a_hand_case():
    shapes = trust.expected_shapes(SIZE)
    got = trust.score_size(SIZE, outputs(), HELDOUT, 0.05)
    assert got["loss"] == pytest.approx(math.log(shapes["embed.weight"][0]))  # uniform logits: ln(vocab)
    assert got["params_returned"] == sum(math.prod(s) for s in shapes.values())
    assert got["non_embedding_params_returned"] == got["params_returned"] - math.prod(shapes["embed.weight"])
    assert (got["params"], got["non_embedding_params"]) == trust.reference_params(SIZE)  # the fit's x-axis
    extra = {k: torch.zeros(s) for k, s in shapes.items()} | {"blocks.0.attn.w": torch.zeros(3, 5)}
    padded = trust.score_size(SIZE, outputs(extra), HELDOUT, 0.05)
    assert padded["params_returned"] == got["params_returned"] + 15 and padded["params"] == got["params"]


@pytest.mark.parametrize("case,kind", [
    ("wrong_shape", "forged"), ("extra_layer", "forged"), ("bigger_embed", "forged"), ("nan", "non_finite"),
    ("leak", "non_causal"), ("too_good", "forged"), ("missing", "crash"), ("garbage", "forged")])
def test_trusted_checks_reject(case, kind):
    shapes = trust.expected_shapes(SIZE)
    vocab = shapes["embed.weight"][0]
    w = {k: torch.zeros(s) for k, s in shapes.items()}
    files = {
        "wrong_shape": lambda: outputs(last=torch.zeros(4, vocab - 1)),
        "extra_layer": lambda: outputs(w | {"blocks.1.attn.w": torch.zeros(2)}),
        "bigger_embed": lambda: outputs(w | {"embed.weight": torch.zeros(vocab, 32)}),
        "nan": lambda: outputs(last=torch.full((4, vocab), float("nan"))),
        "leak": lambda: outputs(probe=torch.cat([torch.zeros(1, 6, vocab), torch.ones(1, 6, vocab)])),
        "too_good": lambda: outputs(last=torch.nn.functional.one_hot(HELDOUT["targets"], vocab).float() * 100),
        "missing": lambda: {"weights_xs.safetensors": save(w)},
        "garbage": lambda: {"weights_xs.safetensors": b"\x00" * 16, "logits_xs.safetensors": b"x"},
    }[case]()
    with pytest.raises(CandidateFailure) as err:
        trust.score_size(SIZE, files, HELDOUT, 0.05)
    assert err.value.kind == kind


def test_heldout_is_secret_seeded_and_withholds_the_next_token(tmp_path):
    a = trust.make_heldout(TINY_SETTINGS, trust.heldout_salt(tmp_path))
    b = trust.make_heldout(TINY_SETTINGS, trust.heldout_salt(tmp_path))  # the same key file: the same rows
    c = trust.make_heldout(TINY_SETTINGS, "another-salt")
    assert torch.equal(a["inputs"], b["inputs"]) and not torch.equal(a["inputs"], c["inputs"])
    assert a["inputs"].shape == (64, 16) and a["targets"].shape == (64,) and a["probe"].shape == (4, 16)
    assert (tmp_path / trust.KEY_FILE).stat().st_mode & 0o077 == 0
    stream = trust.heldout_stream(TINY_SETTINGS, trust.heldout_seed(TINY_SETTINGS, "another-salt"), 2 * 66)
    assert torch.equal(c["inputs"], stream[0:128:2, :-1]) and torch.equal(c["targets"], stream[0:128:2, -1])
    assert torch.equal(c["probe"][:2], stream[128:132:2, :-1])  # odd rows (right after a target) never go out


def test_guarded_fitness_hand_case():
    fit = fit_scaling_law([math.e, math.e ** 2], [3.0, 2.5])  # slope -0.5
    ref = {"fitness": 0.4, "losses": {"a": 2.9, "b": 2.6}}
    honest = guarded_fitness(fit, {"a": 3.0, "b": 2.5}, "b", ref, tolerance=0.2)
    assert honest["combined_score"] == pytest.approx(0.5 + 0.1) and honest["guard_excess"] == 0
    sabotage = guarded_fitness(fit, {"a": 3.0, "b": 2.5}, "b", ref, tolerance=0.05)
    assert sabotage["guard_excess"] == pytest.approx(0.05)
    assert sabotage["combined_score"] == pytest.approx(0.4 - 0.05)  # capped at the baseline, then below it
    assert guarded_fitness(fit, {"a": 3.0, "b": 2.5}, "b", None, 0.05)["combined_score"] == pytest.approx(0.5)
