"""The wire between the codegen benchmark's two sandboxes: values as one line of tagged JSON each.

Only the builtin types that tests compare cross, each by its exact type (a subclass, e.g. a ``list`` subclass
or a ``bool``-like object, does not): ``None``, ``bool``, ``int`` (any size), ``float`` (bit-exact, nan, ±inf,
-0.0), ``complex``, ``str`` (lone surrogates too), ``bytes``, ``list``, ``tuple``, ``dict`` (any key that
decodes to a hashable value), ``set``, ``frozenset``, nested. Decoding builds only these builtins, so an object
with a forged ``__eq__`` cannot reach the side that compares; it is bounded (``MAX_MESSAGE`` bytes a message,
``MAX_DEPTH`` levels of nesting) and anything malformed is a ``WireError``, never a partial value.

Layout: ``null``/``true``/``false``, a JSON string, a JSON integer (|n| < 2**53) stand for themselves; every
other value is a JSON array whose first element is a tag: ``["i", hex]`` a larger int, ``["f", float.hex]``,
``["c", re.hex, im.hex]``, ``["b", hex]`` bytes, ``["l", *items]``, ``["t", *items]``, ``["s", *items]``,
``["fs", *items]``, ``["d", k1, v1, k2, v2, ...]``. Frames are these lines ending in ``\\n`` (JSON escapes
every control character inside strings, so a line is one message).

This file is stdlib-only: the harness copies it into both sandboxes (as ``_af_wire.py``).
"""
from __future__ import annotations

import json

MAX_MESSAGE = 8 * 2**20     # bytes of one encoded message, newline excluded
MAX_DEPTH = 100             # levels of container nesting in one message
SMALL_INT = 2**53           # ints below this in magnitude travel as JSON numbers


class WireError(Exception):
    """A value that cannot cross, or a message that is not a well-formed, bounded encoding."""


def _reject(text: str):
    raise WireError(f"not a wire value: {text[:20]!r}")


def _type_name(x) -> str:
    t = type(x)
    mod = getattr(t, "__module__", "")
    name = getattr(t, "__qualname__", "?")
    return name if mod in ("builtins", "__main__", None, "") else f"{mod}.{name}"


def _enc(x, depth: int):
    t = type(x)
    if x is None or t is bool or t is str:
        return x
    if t is int and -SMALL_INT < x < SMALL_INT:
        return x
    if depth >= MAX_DEPTH:   # every other value is an array: the same bound as ``_dec``'s
        raise WireError(f"a value nested deeper than {MAX_DEPTH} levels")
    if t is int:
        return ["i", hex(x)]
    if t is float:
        return ["f", x.hex()]
    if t is complex:
        return ["c", x.real.hex(), x.imag.hex()]
    if t is bytes:
        return ["b", x.hex()]
    tag = {list: "l", tuple: "t", set: "s", frozenset: "fs"}.get(t)
    if tag is not None:
        return [tag, *(_enc(v, depth + 1) for v in x)]
    if t is dict:
        out = ["d"]
        for k, v in x.items():
            out.append(_enc(k, depth + 1))
            out.append(_enc(v, depth + 1))
        return out
    raise WireError(f"a {_type_name(x)} that cannot cross the sandbox boundary")


def encode(value) -> bytes:
    """One message (no newline); ``WireError`` for a type that cannot cross, too deep, or too large."""
    try:
        data = json.dumps(_enc(value, 0), ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode("ascii")
    except RecursionError as exc:
        raise WireError("a value nested too deeply") from exc
    if len(data) > MAX_MESSAGE:
        raise WireError(f"a message of {len(data)} bytes (the limit is {MAX_MESSAGE})")
    return data


def _items(node: list, depth: int) -> list:
    return [_dec(v, depth + 1) for v in node[1:]]


def _dec(node, depth: int):
    t = type(node)
    if node is None or t is bool or t is str or t is int:
        return node
    if t is not list or not node or type(node[0]) is not str:
        raise WireError("not a wire value")
    if depth >= MAX_DEPTH:
        raise WireError(f"a value nested deeper than {MAX_DEPTH} levels")
    tag, n = node[0], len(node)
    try:
        if tag in ("i", "f", "b") and n == 2 and type(node[1]) is str:
            s = node[1]
            return int(s, 16) if tag == "i" else float.fromhex(s) if tag == "f" else bytes.fromhex(s)
        if tag == "c" and n == 3 and type(node[1]) is str and type(node[2]) is str:
            return complex(float.fromhex(node[1]), float.fromhex(node[2]))
        if tag == "l":
            return _items(node, depth)
        if tag == "t":
            return tuple(_items(node, depth))
        if tag == "s":
            return set(_items(node, depth))
        if tag == "fs":
            return frozenset(_items(node, depth))
        if tag == "d" and n % 2 == 1:
            items = _items(node, depth)
            return dict(zip(items[0::2], items[1::2]))
    except (TypeError, ValueError, OverflowError) as exc:   # unhashable key or element, a bad number
        raise WireError(f"a malformed {tag!r} value: {exc}") from None
    raise WireError(f"a malformed {tag[:10]!r} value")


def decode(data: bytes | str):
    """The value of one message; ``WireError`` for anything but a bounded, well-formed encoding."""
    if len(data) > MAX_MESSAGE:
        raise WireError(f"a message of {len(data)} bytes (the limit is {MAX_MESSAGE})")
    try:
        node = json.loads(data, parse_float=_reject, parse_constant=_reject)
    except RecursionError:
        raise WireError("a message nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, an int over Python's digit limit
        raise WireError(f"not JSON: {str(exc)[:80]}") from None
    try:
        return _dec(node, 0)
    except RecursionError:
        raise WireError("a message nested too deeply") from None


def send(stream, data: bytes) -> None:
    """Write one frame to a binary stream and flush it."""
    stream.write(data + b"\n")
    stream.flush()


def recv(stream) -> bytes:
    """Read one frame; ``EOFError`` at a clean end of stream, ``WireError`` for an oversized or cut frame."""
    line = stream.readline(MAX_MESSAGE + 1)
    if not line:
        raise EOFError("end of stream")
    if not line.endswith(b"\n"):
        raise WireError(f"a message longer than {MAX_MESSAGE} bytes" if len(line) > MAX_MESSAGE
                        else "a message cut off by the end of the stream")
    return line[:-1]
