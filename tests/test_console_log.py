"""The stdout tee behind 'agentforge.log holds everything the run printed' (the real CLI: test_readme_claims_behaviour)."""
import io
import logging
import sys

from agentforge.tracking import console_log


def _logged(handler_stream: io.StringIO) -> list[str]:
    return handler_stream.getvalue().splitlines()


def test_printed_lines_reach_the_file_handlers_and_progress_displays_do_not(tmp_path, monkeypatch):
    log_file = tmp_path / "run.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(name)s|%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    console = io.StringIO()
    monkeypatch.setattr(sys, "stdout", console)
    try:
        with console_log.stdout_into_log():
            print("val loss 5.59  perplexity 267.62")
            print("\x1b[1mbold\x1b[0m result")                                 # colour stripped
            sys.stdout.write("step 1\rstep 2\rstep 3\n")                       # the last drawing
            sys.stdout.write("\x1b[2K\x1b[1AEpoch 0 3/3\nloss 1.2\n")         # a live redraw: not logged
            sys.stdout.write("Epoch 0/0  ━━━━━━ 3/3\n      loss: 1.2\n")      # a bar's final frame: not logged
            sys.stdout.write("no newline at the end")
        assert sys.stdout is console
    finally:
        root.removeHandler(handler)
        handler.close()
    assert log_file.read_text().splitlines() == [
        "agentforge.console|val loss 5.59  perplexity 267.62", "agentforge.console|bold result",
        "agentforge.console|step 3", "agentforge.console|no newline at the end"]
    assert "━" in console.getvalue() and "\x1b[2K" in console.getvalue()   # the console still gets everything


def test_without_a_log_file_stdout_is_left_alone(monkeypatch):
    monkeypatch.setattr(console_log, "file_handlers", lambda: [])
    before = sys.stdout
    with console_log.stdout_into_log():
        assert sys.stdout is before
