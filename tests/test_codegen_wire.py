"""The codegen wire encoding (``agentforge/codegen/wire.py``): exact round trips of the builtin values tests
compare, nothing else crosses, and every malformed, oversized or too deeply nested message is refused."""
from __future__ import annotations

import io
import math
from collections import OrderedDict, namedtuple

import pytest

from agentforge.codegen import wire
from agentforge.codegen.wire import MAX_DEPTH, MAX_MESSAGE, WireError, decode, encode


def same(a, b) -> bool:
    """Equal, of the same exact types all the way down, floats bit for bit (nan, -0.0)."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return a.hex() == b.hex()
    if type(a) is complex:
        return same(a.real, b.real) and same(a.imag, b.imag)
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


ROUND_TRIP = [None, True, False, 0, 1, -1, 2**53 - 1, 2**53, -2**53, 10**5000, -(7**9000), 0.1, 1e-320, -0.0,
              math.inf, -math.inf, math.nan, 1.7976931348623157e308, complex(1, -0.0), complex(math.nan, math.inf),
              "", "é\n\x00\t\"\\", "\ud800 lone surrogate", "😀", b"", b"\x00\xff\n", [], (), [1, [2, (3, [4.5])]],
              (1,), ((),), {"a": 1, 2: "b", (1, 2): [3], frozenset({1}): None, 1.5: 2.5, None: True, b"k": b"v"},
              {1, "a", (2, 3), frozenset({4})}, frozenset(), set(), [True, 1, 1.0], {True: [], 2: ()}]


@pytest.mark.parametrize("value", ROUND_TRIP, ids=[f"{type(v).__name__}{i}" for i, v in enumerate(ROUND_TRIP)])
def test_builtin_values_round_trip_exactly(value):
    data = encode(value)
    assert b"\n" not in data and len(data) <= MAX_MESSAGE
    assert same(decode(data), value) and same(decode(data.decode()), value)


def test_tuple_list_and_bool_int_stay_distinct():
    assert type(decode(encode((1, 2)))) is tuple and type(decode(encode([1, 2]))) is list
    assert decode(encode([1, 2])) != (1, 2)   # as in plain Python, a list is not equal to a tuple
    assert decode(encode(True)) is True and type(decode(encode(1))) is int
    assert math.isnan(decode(encode(math.nan))) and math.copysign(1, decode(encode(-0.0))) == -1


class MyList(list):
    pass


class Yes:
    def __eq__(self, other):
        return True

    def __hash__(self):
        return 0


@pytest.mark.parametrize("value", [MyList([1]), Yes(), [1, Yes()], {"k": Yes()}, {Yes(): 1}, OrderedDict(a=1),
                                   namedtuple("P", "x y")(1, 2), range(3), iter([1]), bytearray(b"x"),
                                   print, type, object()])
def test_other_types_cannot_cross(value):
    with pytest.raises(WireError, match="cannot cross the sandbox boundary"):
        encode(value)


def test_nesting_and_size_are_bounded_both_ways():
    deep = []
    inner = deep
    for _ in range(MAX_DEPTH - 1):
        inner.append([])
        inner = inner[0]
    assert decode(encode(deep)) == deep          # the limit itself crosses
    inner.append([])
    with pytest.raises(WireError, match="nested deeper"):
        encode(deep)
    cyclic = []
    cyclic.append(cyclic)
    with pytest.raises(WireError, match="nested deeper"):
        encode(cyclic)
    with pytest.raises(WireError, match="nested deeper"):
        decode(b'["l",' * (MAX_DEPTH + 1) + b"1" + b"]" * (MAX_DEPTH + 1))
    with pytest.raises(WireError, match="too deeply"):  # json's own recursion: a WireError, not a RecursionError
        decode(b"[" * 200_000 + b"]" * 200_000)
    with pytest.raises(WireError, match="bytes"):
        encode("x" * MAX_MESSAGE)
    with pytest.raises(WireError, match="bytes"):
        decode(b'"' + b"x" * MAX_MESSAGE + b'"')


@pytest.mark.parametrize("data", [b"", b"1.5", b"NaN", b"Infinity", b'{"a": 1}', b"[]", b'["x", 1]', b'["d", 1]',
                                  b'["s", ["l"]]', b'["d", ["l"], 1]', b'["i", "zz"]', b'["i", 5]', b'["f", "0x1p99999"]',
                                  b'["c", "1"]', b'["b", "0"]', b"\xff", b"1" * 5000, b"[1, 2", b'[1, "t"]'])
def test_malformed_messages_are_refused(data):
    with pytest.raises(WireError):
        decode(data)


def test_frames():
    stream = io.BytesIO()
    wire.send(stream, encode([1, "a"]))
    wire.send(stream, encode(None))
    stream.seek(0)
    assert decode(wire.recv(stream)) == [1, "a"] and decode(wire.recv(stream)) is None
    with pytest.raises(EOFError):
        wire.recv(stream)
    with pytest.raises(WireError, match="cut off"):
        wire.recv(io.BytesIO(b'["l",1'))
    with pytest.raises(WireError, match="longer than"):
        wire.recv(io.BytesIO(b"1" * (MAX_MESSAGE + 10) + b"\n"))
