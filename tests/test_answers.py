"""GSM8K answers: extraction of a text's number (``evals/answers.py``), exact matching, and the majority baseline
that an accuracy is read against (``evals.tasks.chance_rates``)."""
from __future__ import annotations

import json
import re

import pytest

from agentforge.evals import tasks
from agentforge.evals.answers import answers_match, extract_number
from tests.conftest import GSM8K_TEST


@pytest.mark.parametrize("text,expected", [
    ("so 3 + 4 = 7\n#### 1,234", "1234"),
    ("#### -5", "-5"),
    ("It costs $1,000.50 in total", "1000.5"),
    ("#### $42", "42"),
    ("she lost -$5 today", "-5"),
    ("the answer is 3.0", "3"),
    ("first 12 then 15.", "15"),
    ("#### 7\nthen 9 more", "7"),
    ("x = -3.25.", "-3.25"),
    ("about .5 of it", "0.5"),
    ("no number here", None),
    # a subtraction's minus is not a sign; commas that do not group thousands are a list; "$" groups by spaces
    ("so 5 - 3", "3"), ("so 5-3", "3"), ("a-5", "5"), ("3)-2", "2"), ("(-3)", "-3"), ("$ -5", "-5"),
    ("pick 1,2,3", "3"), ("1,000,000 people", "1000000"), ("a profit of $118 000", "118000"),
    # documented (module docstring): spaces group thousands only after "$", since "12 000" may be a count before
    # a number; so the last number here is "000", i.e. 0 (a generation writing "12 000" for 12000 is not credited)
    ("12 000 people", "0"),
    ("#### 5\nQ: 2+5?\n#### 7", "5"),   # the FIRST "####" marks the answer (a run-on problem's comes later)
    ("#### \n#### 7", "7"),            # ... the first that a number follows
    ("#### so\nthen 4\n#### 7", "4"),   # ... searched up to the next "####"
    ("#### -0", "0"),                # minus zero is 0, the answer of a "#### 0" reference
    ("a profit of $ 118 000", "118000"),   # "$", one space, then space-grouped thousands
    # a comma group is exactly three digits; a minus after "2." subtracts; a "$" space group ends before a comma
    ("so 1,2345", "2345"), ("total 12,3456 dollars", "3456"), ("x=2.-3", "3"), ("5.-3", "3"), ("$100 200,300", "200300"),
])
def test_gsm8k_extraction_tricky_formats(text, expected):
    """``extract_number`` of each text by the module docstring's rules (the reason for each case in its comment)."""
    assert extract_number(text) == expected


def test_gsm8k_chance_is_the_majority_baseline_by_hand():
    """The best constant answer's hit per record: 5 and 3 appear twice each ("5.0" is 5), the first seen (5) wins."""
    recs = [{"answer": "#### 5"}, {"answer": "so\n#### 3"}, {"answer": "#### 5.0"}, {"answer": "#### 3"},
            {"answer": "#### 7"}]
    assert tasks.chance_rates(recs, "gsm8k") == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert tasks.chance_rates([], "gsm8k") == []


def test_answers_match_exactly():
    assert answers_match("The total is $1,200.", "... #### 1200")
    assert not answers_match("The total is 1201", "#### 1200")
    assert not answers_match("no idea", "#### 0")
    assert tasks.gsm8k_correct(["#### 5", "6", ""], [{"answer": "#### 5"}, {"answer": "#### 5"},
                                                     {"answer": "#### 5"}]) == [1, 0, 0]


def test_a_truncated_generation_is_credited_only_for_a_number_that_ended():
    """``truncated`` (no EOS): a final number with nothing but "," or "." after it may continue past the limit and is
    dropped ("#### 1," may be the start of "#### 1,080"); any other character after it, a newline included (the module
    docstring's "nothing but ',' or '.'"), shows it ended, so "#### 108\n" is credited. Two texts without a number
    never match (None == None is no answer)."""
    assert not answers_match("#### 1,", "#### 1", truncated=True)
    assert answers_match("#### 1,", "#### 1")   # ended with EOS: scored as written
    assert not answers_match("#### 108", "#### 108", truncated=True)
    assert answers_match("#### 108\n", "#### 108", truncated=True)
    assert not answers_match("x", "y")
    # after a "$" amount a space may separate its thousands ("$1 " of "$1 000"): dropped; a plain number's space ends it
    assert not answers_match("#### $1 ", "#### 1", truncated=True) and answers_match("#### $1 ", "#### 1")
    assert answers_match("#### 1 ", "#### 1", truncated=True) and answers_match("#### $1\n", "#### 1", truncated=True)


@pytest.mark.skipif(not GSM8K_TEST.is_file(), reason="shared GSM8K test file not present")
def test_real_gsm8k_references_extract():
    recs = [json.loads(line) for line in GSM8K_TEST.read_text().splitlines()[:200] if line.strip()]
    for r in recs:
        ref = extract_number(r["answer"])
        assert ref is not None and answers_match(r["answer"].split("####")[-1], r["answer"])


# lm-evaluation-harness's GSM8K "strict-match" filter: this regex, first match (group_select 0), per its gsm8k.yaml
STRICT_MATCH = re.compile(r"#### (\-?[0-9\.\,]+)")


@pytest.mark.parametrize("text", ["#### 5\nQ: 2+5?\n#### 7", "so 3\n#### 12\n#### 13", "#### 8 then #### 9 and #### 10"])
def test_the_first_answer_is_the_one_lm_eval_strict_match_reads(text):
    """The module docstring and README: a generation's answer is its first '####' number, as lm-evaluation-harness's
    strict-match reads it (its regex, first match), on texts where the two number grammars agree."""
    assert extract_number(text) == STRICT_MATCH.findall(text)[0]
