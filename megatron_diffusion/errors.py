"""User-facing errors.

``UsageError`` is raised for bad input that the user can fix: a config value, a command-line
option, a file that is missing or of the wrong kind. The CLI prints its message as one line and
exits with status 2, without a traceback. Messages name the field/option/file and what was
expected.

The ``check_*`` helpers are the shared value checks of every config section's ``validate()``
and of the command-line options: ``check_choice`` (one of a list), ``check_int`` (an integer
within bounds), ``check_range`` (a number within bounds, each end open or closed).
``json_object`` parses one line of a JSON-lines input into an object, with the same one-line
errors for every reader (prompt files, jsonl corpora, prompt sets).
"""

import json
import math


class UsageError(ValueError):
    """Bad input from the user: printed as one line by the CLI, exit status 2."""


def check_choice(name: str, value, allowed) -> None:
    """Raise ``UsageError`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        allowed_s = ", ".join(repr(a) for a in allowed)
        raise UsageError(f"{name}: got {value!r}, expected one of {allowed_s}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bounds(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return "in " + ("(" if lo_open else "[") + f"{lo}, {hi}" + (")" if hi_open else "]")
    if lo is not None:
        return f"> {lo}" if lo_open else f">= {lo}"
    return f"< {hi}" if hi_open else f"<= {hi}"


def _within(value, lo, hi, lo_open: bool, hi_open: bool) -> bool:
    above = lo is None or (value > lo if lo_open else value >= lo)
    below = hi is None or (value < hi if hi_open else value <= hi)
    return above and below


def check_int(name: str, value, lo: int | None = None, hi: int | None = None) -> None:
    """Raise ``UsageError`` unless ``value`` is an integer (not a bool) in ``[lo, hi]`` (a
    bound of None is open-ended)."""
    if not (isinstance(value, int) and not isinstance(value, bool)
            and _within(value, lo, hi, False, False)):
        bound = "" if lo is None and hi is None else " " + _bounds(lo, hi, False, False)
        raise UsageError(f"{name}: got {value!r}, expected an integer{bound}")


def check_range(name: str, value, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """Raise ``UsageError`` unless ``value`` is a finite number (int or float, not a bool)
    between ``lo`` and ``hi`` (inclusive unless ``lo_open``/``hi_open``; a bound of None is
    open-ended). inf and nan are refused: no setting means them, and ``optimizer.lr=inf`` was
    accepted, trained to non-finite weights and failed at the save."""
    finite = _is_number(value) and math.isfinite(value)
    if not (finite and _within(value, lo, hi, lo_open, hi_open)):
        kind = "a number" if finite or not _is_number(value) else "a finite number"
        bound = "" if lo is None and hi is None else " " + _bounds(lo, hi, lo_open, hi_open)
        raise UsageError(f"{name}: got {value!r}, expected {kind}{bound}")


def json_object(line: str, where: str) -> dict:
    """The JSON object on one line; ``where`` (e.g. ``FILE:LINE``) names it in the error."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise UsageError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{where}: got a JSON {type(obj).__name__}, expected an object")
    return obj
