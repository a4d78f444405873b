"""Answer extraction for GSM8K-format problems.

The reference answer is the number after ``####``; a generation's answer is the number after its first
``####`` that a number follows (a model that runs on past its answer may write another problem and its ``####``:
the answer it committed to comes first; lm-evaluation-harness's GSM8K "strict-match" also takes the first match),
else the last number in it. Numbers may carry ``$``, thousands commas, a
sign and decimals; they are compared as exact decimals after normalization ("1,000.50" == "1000.5"). What
is not a number's part (``_NUM``): the minus of a subtraction ("5 - 3", "5-3": the last number is 3), commas
that do not group thousands ("1,2,3": 3). Spaces group thousands only after "$" ("$118 000": 118000).

A generation that hit its token limit (no EOS, ``truncated``) may end inside its answer ("#### 1" of
"#### 108"): a final number running to the end of such a text (nothing but "," or "." after it, or spaces too after a
"$" amount, whose thousands they may separate: "$1 " of "$1 000") is dropped
before extraction (``complete_part``), so a number that may have been cut off is never credited. A
generation that ended with EOS is scored as it is.
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# A number: an optional sign, an optional "$" (maybe a space after it), then digits with thousands commas in groups of
# three (or, right after a "$", thousands spaces: "$118 000"), and decimals. A "-" is a sign only where it cannot be
# a binary minus: not after a word character, ".", or ")", and directly before the "$" or the digits ("5 - 3" and
# "5-3" end in 3, not -3). A comma run that is not groups of three is a list ("1,2,3" ends in 3, not 123).
_SIGN = r"(?:(?<![\w.)])-)?"
_INT = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
_NUM = re.compile(_SIGN + r"(?:\$\s?-?(?:\d{1,3}(?: \d{3})+(?![\d,])|" + _INT + r")|" + _INT + r")(?:\.\d+)?"
                  + "|" + _SIGN + r"\$?\.\d+")


def _normalize(token: str) -> str | None:
    s = token.replace("$", "").replace(",", "").replace(" ", "")
    neg = s.count("-") % 2 == 1
    s = s.replace("-", "")
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    d = -d if neg else d
    d = d.normalize()
    if d == 0:
        return "0"
    text = format(d, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def extract_number(text: str) -> str | None:
    """The answer of a text: the first number after its first '####' that has one (searched up to the next
    '####'), else the last number; None if none."""
    for part in text.split("####")[1:]:
        m = _NUM.search(part)
        if m:
            return _normalize(m.group())
    nums = _NUM.findall(text)
    return _normalize(nums[-1]) if nums else None


def complete_part(text: str) -> str:
    """``text`` without a final number that runs to its end (it may continue past a token limit)."""
    matches = list(_NUM.finditer(text))
    last = matches[-1] if matches else None
    rest = text[last.end():] if last is not None else ""
    # after a "$" amount, spaces may still be its thousands separators ("$1 " of "$1 000")
    if last is not None and (not rest.strip(".,") or ("$" in last.group() and not rest.strip(" .,"))):
        return text[: last.start()]
    return text


def answers_match(prediction: str, reference: str, truncated: bool = False) -> bool:
    """The prediction's answer equals the reference's; ``truncated``: the prediction hit its token limit
    (its final number is dropped if it runs to the end: ``complete_part``)."""
    p, r = extract_number(complete_part(prediction) if truncated else prediction), extract_number(reference)
    return p is not None and p == r
