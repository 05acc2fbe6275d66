"""The shared value checks of ``errors.py``: what passes, and the one-line message otherwise."""

import pytest

from megatron_diffusion.errors import UsageError, check_choice, check_int, check_range, json_object


@pytest.mark.parametrize("call,message", [
    (lambda: check_int("a.n", 0, lo=1), "a.n: got 0, expected an integer >= 1"),
    (lambda: check_int("a.n", True, lo=0), "a.n: got True, expected an integer >= 0"),
    (lambda: check_int("a.n", 2.0, lo=1), "a.n: got 2.0, expected an integer >= 1"),
    (lambda: check_int("a.n", 5, lo=0, hi=3), "a.n: got 5, expected an integer in [0, 3]"),
    (lambda: check_int("a.n", "3"), "a.n: got '3', expected an integer"),
    (lambda: check_range("a.x", 0, lo=0, lo_open=True), "a.x: got 0, expected a number > 0"),
    (lambda: check_range("a.x", 1.0, 0, 1, hi_open=True),
     "a.x: got 1.0, expected a number in [0, 1)"),
    (lambda: check_range("a.x", 0.0, 0, 1, lo_open=True),
     "a.x: got 0.0, expected a number in (0, 1]"),
    (lambda: check_range("a.x", 3, hi=2), "a.x: got 3, expected a number <= 2"),
    (lambda: check_range("a.x", False, lo=0), "a.x: got False, expected a number >= 0"),
    (lambda: check_range("a.x", float("inf"), lo=0, lo_open=True),
     "a.x: got inf, expected a finite number > 0"),
    (lambda: check_range("a.x", float("nan")), "a.x: got nan, expected a finite number"),
    (lambda: check_choice("a.c", "z", ("x", "y")), "a.c: got 'z', expected one of 'x', 'y'"),
])
def test_bad_values_raise_one_line_naming_the_field(call, message):
    with pytest.raises(UsageError) as e:
        call()
    assert str(e.value) == message


def test_good_values_pass():
    check_int("n", 1, lo=1)
    check_int("n", 3, lo=0, hi=3)
    check_int("n", -7)
    check_range("x", 1, 0, 1)
    check_range("x", 0.5, 0, 1, lo_open=True, hi_open=True)
    check_range("x", 1e9, lo=0)
    check_choice("c", None, (None, "a"))


def test_json_object_names_the_line():
    assert json_object('{"a": 1}', "f.jsonl:3") == {"a": 1}
    with pytest.raises(UsageError, match=r"^f\.jsonl:3: not valid JSON \(.* at column \d+\)$"):
        json_object('{"a": ', "f.jsonl:3")
    with pytest.raises(UsageError, match=r"^f\.jsonl:3: got a JSON list, expected an object$"):
        json_object("[1]", "f.jsonl:3")
