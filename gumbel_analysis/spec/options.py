"""One rule system for every value a user gives: a run's fields and each loss's options.

An :class:`Option` declares a value once (its key, flag, type, default, accepted range and help);
``gumbel train``'s flags, the configuration file's keys, their validation and their messages all
follow from that declaration. No torch here: the command line reads declarations to build itself.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Any

from gumbel_analysis.errors import InputError

#: The kinds of value an option may hold.
KINDS = ("int", "float", "bool", "str", "choice", "steps", "dict")


@dataclass(frozen=True)
class Option:
    """One declared value: ``name`` is its configuration key, ``flag`` its command-line spelling.

    ``flag`` "" derives the flag from the name (``lambda_`` -> ``--lambda``); ``None`` means a
    key of the configuration file only. A ``default`` of ``None`` means "derived" (from the
    preset or the data: ``help`` says from what) and is the only case where ``None`` is accepted.
    Numbers are finite and within ``[low, high]`` (``low_open`` / ``high_open`` exclude a bound).
    """

    name: str
    kind: str
    default: Any = None
    help: str = ""
    flag: str | None = ""
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    #: What the value means, appended to a refusal (``--lr must be ... (the base rate ...)``).
    extra: str = ""
    #: Older spellings of the flag, still accepted.
    aliases: tuple[str, ...] = ()
    #: A ``str`` option's accepted spellings, as a regular expression the whole value matches,
    #: and those spellings in words.
    pattern: str = ""
    pattern_text: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"option {self.name}: kind must be one of {', '.join(KINDS)}")

    @property
    def cli_flag(self) -> str:
        """How messages name the option: its flag, or ``NAME (config key)`` without one."""
        if self.flag is None:
            return f"{self.name} (config key)"
        return self.flag or flag_of(self.name)

    def accepted(self) -> str:
        """The accepted values in words: ``an integer >= 1``, ``a number in (0, 1]``."""
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        fixed = {
            "bool": "true or false",
            "str": "a non-empty string",
            "dict": "an object",
            "steps": "a list of increasing epochs >= 1",
        }
        if self.kind == "str" and self.pattern:
            return self.pattern_text
        if self.kind in fixed:
            return fixed[self.kind]
        if self.kind == "float" and self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"a number in {left}{_num(self.low)}, {_num(self.high)}{right}"
        noun = "an integer" if self.kind == "int" else "a finite number"
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {_num(self.low)}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {_num(self.high)}")
        return noun + (" " + " and ".join(bounds) if bounds else "")

    def refusal(self, value: Any) -> InputError:
        extra = f" ({self.extra})" if self.extra else ""
        return InputError(f"{self.cli_flag} must be {self.accepted()}{extra}, got {_shown(value)}")

    def check(self, value: Any) -> Any:
        """``value`` converted to the option's type; :class:`InputError` naming the flag and the
        accepted values if it is not accepted."""
        if value is None:
            if self.default is None:
                return None
            raise InputError(f"{self.cli_flag} needs a value ({self.accepted()})")
        value = getattr(value, "value", value)  # a str Enum member is its value
        if self.kind == "bool":
            return self._require(value, isinstance(value, bool))
        if self.kind == "str":
            ok = isinstance(value, str) and bool(value)
            ok = ok and (not self.pattern or re.fullmatch(self.pattern, value) is not None)
            return self._require(value, ok)
        if self.kind == "choice":
            return self._require(value, isinstance(value, str) and value in self.choices)
        if self.kind == "dict":
            return self._require(value, isinstance(value, dict))
        if self.kind == "steps":
            return tuple(self._require(value, _is_steps(value)))
        return self._check_number(value)

    def _require(self, value: Any, ok: bool) -> Any:
        if not ok:
            raise self.refusal(value)
        return value

    def _check_number(self, value: Any) -> int | float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.refusal(value)
        number: int | float = value
        if not math.isfinite(number):
            raise self.refusal(value)
        if self.kind == "int":
            if isinstance(number, float) and not number.is_integer():
                raise self.refusal(value)
            number = int(number)
        else:
            number = float(number)
        if self.low is not None and (number <= self.low if self.low_open else number < self.low):
            raise self.refusal(value)
        if self.high is not None and (
            number >= self.high if self.high_open else number > self.high
        ):
            raise self.refusal(value)
        return number


def check_options(
    declared: tuple[Option, ...], values: dict[str, Any], owner: str
) -> dict[str, Any]:
    """Every declared option with its checked value (defaults filled); refuses undeclared keys
    in one line naming them and ``owner``'s options."""
    by_name = {o.name: o for o in declared}
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        flags = ", ".join(flag_of(name) for name in unknown)
        known = ", ".join(o.cli_flag for o in declared) or "none"
        raise InputError(f"{flags} does not apply to {owner} (its options: {known})")
    return {o.name: o.check(values.get(o.name, o.default)) for o in declared}


def flag_of(name: str) -> str:
    """The command-line flag of an option name: ``lambda_`` -> ``--lambda``."""
    return "--" + name.rstrip("_").replace("_", "-")


def kind_of(value: Any) -> str:
    """A value as a refusal shows it: ``'two' (a string)``, ``a list``, ``null``."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return f"{value!r} (a string)"
    if value is None:
        return "null"
    return repr(value)


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, float) else kind_of(value)


def _is_steps(value: Any) -> bool:
    if not isinstance(value, list | tuple):
        return False
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
        return False
    return all(b > a for a, b in itertools.pairwise(value))


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"
