"""The codegen benchmark's SOLUTION side: runs the completion's program, then answers the driver's calls.

Run as ``python _af_serve.py REQUEST_FD RESPONSE_FD`` in a sandbox of its own, beside ``solution.py`` (the
program: HumanEval ``prompt + completion``, MBPP ``setup + completion``) and ``_af_wire.py``. It executes the
program as ``__main__`` (an exception there ends the process with its traceback on stderr, which the parent
reports), then reads call requests (``("call", name, args, kwargs)``) until the driver closes the pipe and
answers each with ``("ok", value)``, ``("raise", nearest builtin exception class, type name, message)`` or
``("unencodable", why)`` for a value ``wire`` cannot carry.

This code runs inside the untrusted interpreter, next to the solution, which can replace or bypass all of
it: it is a convenience for honest solutions, not a defence. The driver trusts nothing it sends. No secret
and no channel to the driver's report reach this process: only the two pipe ends.

Stdlib only: the harness copies this file into the sandbox.
"""
from __future__ import annotations

import builtins
import os
import sys

if __package__:
    from agentforge.codegen import wire
else:  # a script in the sandbox, beside the copy of wire.py
    import _af_wire as wire  # type: ignore[no-redef]

MESSAGE_CHARS = 1000


def builtin_base(exc: BaseException) -> str:
    """The name of the nearest builtin class in the exception's MRO (``Exception`` at worst)."""
    for c in type(exc).__mro__:
        if getattr(builtins, c.__name__, None) is c:
            return c.__name__
    return "Exception"


def _message(exc: BaseException) -> str:
    try:
        return str(exc)[:MESSAGE_CHARS]
    except Exception:
        return ""


def answer(ns: dict, request) -> bytes:
    """The response line to one request."""
    if not (type(request) is tuple and len(request) == 4 and request[0] == "call" and type(request[2]) is tuple
            and type(request[3]) is dict):
        return wire.encode(("raise", "RuntimeError", "RuntimeError", "malformed request"))
    _, name, args, kwargs = request
    try:
        fn = ns.get(name)
        if not callable(fn):
            raise NameError(f"name {name!r} is not defined")
        value = fn(*args, **kwargs)
    except Exception as exc:   # SystemExit and KeyboardInterrupt end the process: the driver sees EOF
        return wire.encode(("raise", builtin_base(exc), type(exc).__name__, _message(exc)))
    try:
        return wire.encode(("ok", value))
    except wire.WireError as exc:
        return wire.encode(("unencodable", f"returned {exc}"))
    except Exception as exc:
        return wire.encode(("unencodable", f"returned a value that could not be encoded ({type(exc).__name__})"))


def serve(ns: dict, inp, out) -> None:
    while True:
        try:
            line = wire.recv(inp)
        except EOFError:
            return
        wire.send(out, answer(ns, wire.decode(line)))


def main(argv: list[str]) -> None:
    inp, out = os.fdopen(int(argv[1]), "rb"), os.fdopen(int(argv[2]), "wb")
    ns: dict = {"__name__": "__main__", "__builtins__": builtins}
    with open("solution.py", encoding="utf-8") as f:
        source = f.read()
    exec(compile(source, "solution.py", "exec"), ns)
    serve(ns, inp, out)
    sys.stdout.flush()
    os._exit(0)   # threads the solution left behind do not keep the sandbox alive


if __name__ == "__main__":
    main(sys.argv)
