"""User-facing errors.

``UsageError`` is raised for bad input that the user can fix: a config value, a command-line
option, a file that is missing or of the wrong kind. The CLI prints its message as one line and
exits with status 2, without a traceback. Messages name the field/option/file and what was
expected.
"""


class UsageError(ValueError):
    """Bad input from the user: printed as one line by the CLI, exit status 2."""


def check_choice(name: str, value, allowed) -> None:
    """Raise ``UsageError`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        allowed_s = ", ".join(repr(a) for a in allowed)
        raise UsageError(f"{name}: got {value!r}, expected one of {allowed_s}")


def check_positive(name: str, value, allow_zero: bool = False) -> None:
    """Raise ``UsageError`` unless ``value`` is an int/float > 0 (or >= 0)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise UsageError(f"{name}: got {value!r}, expected a number {bound}")
