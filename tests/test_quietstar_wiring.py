"""Quiet-STaR step 2's wiring inside ``run_rl`` and ``run``: the training stream's windows kept out of the anti-theater
draw, the held-out capacity checked with them before baking, and the last check re-run in fp32 only when the fit ran
under other numerics. (``tests/test_thought_windows.py`` tests the functions; these, that the phase calls them so.)"""
from __future__ import annotations

import pytest
import torch

from agentforge.data.tokenizer import ByteTokenizer
from agentforge.errors import ConfigError
from agentforge.reasoning.rl import clean_positions, document_windows, seen_windows, window_capacity
from agentforge.training.rl_module import QuietStarModule
from tests.conftest import compose_cfg, run_in_process
from tests.test_quietstar import QS_TINY, tiny_input  # noqa: F401  (tiny_input: the module-scoped fixture)


class Built(Exception):
    """Raised in place of building the QuietStarModule: carries what run_rl would have built it with."""


def _built(model, ref, head, train_stream, eval_windows, *args, **kwargs):
    raise Built(train_stream, eval_windows)


def test_run_rl_draws_no_anti_theater_window_that_occurs_in_its_training_stream(tiny_input, tmp_path, monkeypatch):  # noqa: F811
    """The real documents, default sizes and seed (42; windows drawn with seed 43): the unfiltered draw holds windows
    that occur word for word, true tokens included, in the RL training stream (12 of 64, an audit); the windows
    run_rl passes to the module hold none, compared with the very stream it trains on."""
    from agentforge.phases import quietstar as qs

    monkeypatch.setattr(qs, "QuietStarModule", _built)
    cfg = compose_cfg(["phase=quietstar", "logger=none", "step=rl", f"phase.input={tiny_input}"], tmp_path)
    r = cfg.phase.rl
    assert cfg.seed == 42 and (r.context_len, r.n_true, r.eval_windows) == (32, 4, 64)
    with pytest.raises(Built) as got:
        qs.run(cfg)
    stream, windows = got.value.args
    runs = stream.unfold(0, 36, 1)   # every 36-token run of the training stream, compared directly

    def in_training(w):
        return bool((runs == w).all(1).any())

    held = qs._documents(ByteTokenizer(), 42, "test", qs.HELDOUT_DOCS)
    unfiltered = document_windows(held, 64, 32, 4, torch.Generator().manual_seed(43))
    assert sum(map(in_training, unfiltered)) >= 10   # the test can fail: without the filter the draw is not clean
    assert windows.shape == (64, 36)
    leaked = [i for i, w in enumerate(windows) if in_training(w)]
    assert not leaked, f"{len(leaked)} of the 64 anti-theater windows occur in the RL training stream: {leaked}"


@pytest.mark.parametrize("step", ["rl", "both"])
def test_too_few_held_out_documents_clear_of_the_training_stream_is_one_config_error_before_baking(
        tiny_input, tmp_path, monkeypatch, step):  # noqa: F811
    """context_len=8, n_true=1 (seed 42): all 80 held-out documents hold a 9-token window, but only 58 hold one that
    is not in the training stream, so 64 eval windows cannot be drawn. For step=both that is known before baking (the
    baking is replaced by a failure here): a ConfigError naming phase.rl.eval_windows, not a failure after it."""
    from agentforge.phases import quietstar as qs

    def baking(*args, **kwargs):
        raise AssertionError("baking ran before step 2's held-out capacity was checked")

    monkeypatch.setattr(qs, "run_baking", baking)
    monkeypatch.setattr(qs, "QuietStarModule", _built)
    cfg = compose_cfg(["phase=quietstar", "logger=none", f"step={step}", f"phase.input={tiny_input}",
                       "phase.rl.context_len=8", "phase.rl.n_true=1"], tmp_path)
    with pytest.raises(ConfigError, match=r"phase\.rl\.eval_windows=64 windows .*not in the training stream.* need 64 "
                                          r"documents that hold one; 58 of the 80 held-out documents do"):
        qs.run(cfg)
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs" / "artifacts" / "quietstar").exists()


def test_seen_windows_include_the_streams_last_window():
    """Every run of ``width`` tokens, the last one included: a held-out window equal to the stream's end is seen."""
    stream = torch.arange(5)
    assert seen_windows(stream, 3) == {torch.arange(i, i + 3).to(torch.int32).numpy().tobytes() for i in range(3)}
    assert seen_windows(stream, 5) == {stream.to(torch.int32).numpy().tobytes()}
    # the hand case of test_thought_windows: document 3's window at p=10 (tokens 300..311) ends the training stream
    doc = torch.arange(300, 340)
    seen = seen_windows(torch.cat([torch.arange(0, 12), torch.arange(300, 312)]), 12)
    assert 10 not in clean_positions(doc, 10, 2, seen) and len(clean_positions(doc, 10, 2, seen)) == 28
    assert window_capacity([torch.arange(300, 312)], 10, 2, seen) == 0


@pytest.mark.parametrize("precision,reruns", [("32-true", False), ("bf16-mixed", True)])
def test_the_stored_last_check_is_the_fp32_one_and_a_fp32_fit_reruns_nothing(tiny_input, tmp_path, monkeypatch, capsys,  # noqa: F811
                                                                             precision, reruns):
    """Each check is tagged with whether it ran under CPU autocast. bf16-mixed: the fit's checks (episodes 1, 2) ran
    under autocast, then episode 2's is run again outside it, and that fp32 result is the one the report reads (the
    accuracies alone could not tell: at these sizes the fp32 and bf16 answers coincide). The default fp32 fit: the
    checks run once each (0, 1, 2), none under autocast, and no re-run line is printed."""
    from agentforge.phases import quietstar as qs

    calls, real_check = [], QuietStarModule.check

    def check(self, episode):
        res = real_check(self, episode)
        calls.append((episode, torch.is_autocast_enabled("cpu"), res))
        return res

    reported, real_finish = {}, qs.finish_rl

    def finish_rl(ctx, cfg, model, head, tok, tc, tids, source, history, *args, **kwargs):
        reported["checks"] = list(history["checks"])
        return real_finish(ctx, cfg, model, head, tok, tc, tids, source, history, *args, **kwargs)

    monkeypatch.setattr(QuietStarModule, "check", check)
    monkeypatch.setattr(qs, "finish_rl", finish_rl)
    overrides = [a for a in QS_TINY if not a.startswith("logger=")]
    got = run_in_process(["phase=quietstar", "step=rl", f"phase.input={tiny_input}", "logger=none", *overrides,
                          f"hardware.precision={precision}"], tmp_path, capsys)
    rerun_line = "rl: the last check (episode 2) re-run after the fit on the CPU in fp32"
    if reruns:
        assert [(e, a) for e, a, _ in calls] == [(0, False), (1, True), (2, True), (2, False)]
        assert rerun_line in got.stdout
    else:
        assert [(e, a) for e, a, _ in calls] == [(0, False), (1, False), (2, False)]
        assert "re-run after the fit" not in got.stdout
    assert [c["episode"] for c in reported["checks"]] == [0, 1, 2]
    made = [(e, a) for e, a, res in calls if res is reported["checks"][-1]]
    assert made == [calls[-1][:2]], f"the reported last check was made at (episode, autocast) {made}, not {calls[-1][:2]}"
    assert reported["checks"][0] is calls[0][2]
