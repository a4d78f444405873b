"""The codegen benchmark's DRIVER: runs one problem's tests in their own sandbox, the solution out of reach.

Run as ``python _af_driver.py REQUEST_FD RESPONSE_FD`` in a sandbox of its own, beside ``job.json`` (the
problem's prelude and tests, the entry point, the names to proxy) and ``_af_wire.py``; its stdin carries a
nonce. It executes the prelude (HumanEval: the prompt, so helpers such as ``poly`` or ``encode_cyclic`` are
the problem's own; MBPP: the setup code), binds the entry point (and any other name the tests use that is
still undefined, except a standard-library module used as ``module.attr``, which it imports) to a proxy that
forwards each call over the request pipe to the SOLUTION sandbox (``serve.py``) and decodes the answer with
``wire.decode`` (builtin values only), then executes the tests.
The last line of its stdout is ``NONCE {"outcome", "detail", "reason"}``: ``passed`` when the tests ran to
their end, ``failed`` on an ``AssertionError``, ``error`` otherwise; the parent judges from that line.

Everything the solution sends is untrusted: a malformed, oversized or too deeply nested answer, a value that
cannot cross, or the solution's process ending during a call, raises ``Broken`` (a ``BaseException``, so a
test's ``except Exception`` does not swallow it) and is remembered, so the sample is an ``error`` even if
the tests went on. An exception the solution raised is raised here as the builtin exception class the
solution side names (its nearest builtin base class), with the message; anything else is a ``Broken``.

Stdlib only: the harness copies this file into the sandbox.
"""
from __future__ import annotations

import builtins
import importlib
import json
import os
import sys

if __package__:
    from agentforge.codegen import wire
else:  # a script in the sandbox, beside the copy of wire.py
    import _af_wire as wire  # type: ignore[no-redef]

DETAIL_CHARS = 200


class Broken(BaseException):
    """The solution broke the protocol (or its process ended) during a call."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def rebuild_exception(name: str, type_name: str, message: str) -> Exception | None:
    """The builtin exception ``name`` (a subclass of Exception) carrying ``message``, None when ``name`` is no
    such class; the first class of its MRO whose constructor takes one message (UnicodeDecodeError ->
    UnicodeError)."""
    cls = getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        return None
    text = message if type_name == name else f"{message} (raised as {type_name[:60]})"
    for c in cls.__mro__:
        try:
            return c(text)
        except Exception:
            continue
    return Exception(text)


class Channel:
    """The driver's end of the two pipes; every call a request line out and a response line back."""

    def __init__(self, request_fd: int, response_fd: int):
        self.out = os.fdopen(request_fd, "wb")
        self.inp = os.fdopen(response_fd, "rb")
        self.broken: Broken | None = None
        self.calls = 0

    def fail(self, reason: str, detail: str):
        self.broken = self.broken or Broken(reason, detail[:DETAIL_CHARS])
        raise self.broken

    def call(self, name: str, args: tuple, kwargs: dict):
        if self.broken is not None:
            raise self.broken
        self.calls += 1
        try:
            request = wire.encode(("call", name, tuple(args), dict(kwargs)))
        except wire.WireError as exc:
            self.fail("argument", f"a test's argument to {name} cannot be sent: {exc}")
        try:
            wire.send(self.out, request)
            line = wire.recv(self.inp)
        except (EOFError, OSError):   # EOF, or EPIPE: the solution's process ended (or closed its pipes)
            self.fail("ended", "the solution's process ended during a call")
        except wire.WireError as exc:
            self.fail("protocol", f"the solution sent {exc}")
        try:
            msg = wire.decode(line)
        except wire.WireError as exc:
            self.fail("protocol", f"the solution sent {exc}")
        if type(msg) is tuple and len(msg) == 2 and msg[0] == "ok":
            return msg[1]
        if type(msg) is tuple and len(msg) == 4 and msg[0] == "raise" and all(type(m) is str for m in msg[1:]):
            exc = rebuild_exception(msg[1], msg[2], msg[3])
            if exc is None:
                self.fail("protocol", f"the solution named {msg[1][:40]!r}, which is no builtin exception class")
            if isinstance(exc, (StopIteration, StopAsyncIteration)):   # PEP 479: raised inside a test's map() or
                raise RuntimeError(f"{name} raised {msg[1]}") from exc   # zip() it would end it silently, unchecked
            raise exc
        if type(msg) is tuple and len(msg) == 2 and msg[0] == "unencodable" and type(msg[1]) is str:
            self.fail("unencodable", f"{name} {msg[1]}")
        self.fail("protocol", "the solution sent a malformed response")

    def close(self) -> None:
        for f in (self.out, self.inp):
            try:
                f.close()
            except OSError:
                pass


def proxy(channel: Channel, name: str):
    def call(*args, **kwargs):
        return channel.call(name, args, kwargs)
    call.__name__ = call.__qualname__ = name
    return call


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:DETAIL_CHARS]


def run(job: dict, channel: Channel) -> dict:
    """Execute the prelude and the tests with the proxies bound; the report (outcome, detail, reason)."""
    ns: dict = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(job["prelude"], "prelude.py", "exec"), ns)
    except BaseException as exc:   # the problem's own code: a broken benchmark record, not the solution
        return {"outcome": "error", "detail": f"the problem's prelude failed: {_describe(exc)}", "reason": "prelude"}
    ns[job["entry_point"]] = proxy(channel, job["entry_point"])
    for name in job["names"]:
        if name not in ns and not hasattr(builtins, name):
            ns[name] = proxy(channel, name)
    for name in job["modules"]:
        if name not in ns:
            try:
                ns[name] = importlib.import_module(name)
            except ImportError:
                pass
    try:
        exec(compile(job["tests"], "tests.py", "exec"), ns)
        outcome, detail, reason = "passed", "", "tests"
    except Broken:
        outcome, detail, reason = "error", "", ""
    except AssertionError as exc:
        outcome, detail, reason = "failed", _describe(exc), "assert"
    except BaseException as exc:
        outcome, detail, reason = "error", _describe(exc), "exception"
    if channel.broken is not None:   # sticky: a swallowed Broken still spoils the sample
        outcome, detail, reason = "error", channel.broken.detail, channel.broken.reason
    elif outcome == "passed" and channel.calls == 0:
        outcome, detail, reason = "error", "the tests never called the solution", "no_calls"
    return {"outcome": outcome, "detail": detail, "reason": reason}


def main(argv: list[str]) -> int:
    nonce = sys.stdin.readline().strip()
    with open("job.json", encoding="utf-8") as f:
        job = json.load(f)
    channel = Channel(int(argv[1]), int(argv[2]))
    report = run(job, channel)
    channel.close()            # the solution's server sees EOF and exits
    sys.stdout.write(f"\n{nonce} {json.dumps(report)}\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
