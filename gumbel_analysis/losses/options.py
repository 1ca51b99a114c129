"""Declared options of losses and activations: one declaration feeds the constructor, the config
file (``TrainConfig.loss_options``), ``gumbel train``'s flags and their validation.

No torch here: the command line reads declarations to build its options.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gumbel_analysis.errors import InputError


@dataclass(frozen=True)
class LossOption:
    """One option: its keyword (``name``), its flag, type, default and accepted values.

    ``kind`` is ``float``, ``int`` or ``choice`` (one of ``choices``). Numbers are checked to be
    finite and within ``[low, high]`` (``low_open``/``high_open`` exclude the bound). A default of
    ``None`` means "derived from the data" and must be described in ``help``.
    """

    name: str
    kind: str
    default: Any
    help: str
    flag: str = ""
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    #: Older spellings of the flag, still accepted.
    aliases: tuple[str, ...] = ()

    @property
    def cli_flag(self) -> str:
        return self.flag or flag_of(self.name)

    def range_text(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        kind = "an integer" if self.kind == "int" else "a number"
        return f"{kind} in {left}{lo}, {hi}{right}"

    def check(self, value: Any) -> Any:
        """The value converted to the option's type; InputError naming the flag if it is not
        accepted."""
        if value is None:
            if self.default is None:
                return None
            raise InputError(f"{self.cli_flag} needs a value ({self.range_text()})")
        if self.kind == "choice":
            text = str(getattr(value, "value", value))
            if text not in self.choices:
                raise InputError(f"{self.cli_flag} must be {self.range_text()}, got {value!r}")
            return text
        try:
            if isinstance(value, bool) or (isinstance(value, str) and not value.strip()):
                raise TypeError
            number = float(value)
            if self.kind == "int":
                if not number.is_integer():
                    raise TypeError
                number = int(number)
        except (TypeError, ValueError, OverflowError):
            raise InputError(
                f"{self.cli_flag} must be {self.range_text()}, got {value!r}"
            ) from None
        bad = not math.isfinite(number)
        if self.low is not None:
            bad |= number <= self.low if self.low_open else number < self.low
        if self.high is not None:
            bad |= number >= self.high if self.high_open else number > self.high
        if bad:
            raise InputError(f"{self.cli_flag} must be {self.range_text()}, got {value!r}")
        return number


def check_options(
    declared: tuple[LossOption, ...], values: dict[str, Any], owner: str
) -> dict[str, Any]:
    """Every declared option with its checked value (defaults filled); refuses undeclared keys."""
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
