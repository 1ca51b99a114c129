"""What every command shares: consoles, the one-line error exit, option aliases, JSON output."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

try:  # typer vendors click from 0.2x on; older releases depend on it
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

from gumbel_analysis.errors import InputError, TrainingError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

#: Exit status for bad input (as argparse and click use for usage errors).
EXIT_BAD_INPUT = 2

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def fail(message: str) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with status 2."""
    err_console.print(f"error: {' '.join(str(message).split())}", markup=False)
    raise typer.Exit(EXIT_BAD_INPUT)


class OneLineUsageErrors(TyperGroup):
    """The application's group: a usage error (an unknown option, a value of the wrong type or
    not among the choices, a missing argument) is one line ``error: ...`` and exit 2, like every
    other bad input, instead of a framed panel."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ClickException as err:
            err_console.print(f"error: {' '.join(err.format_message().split())}", markup=False)
            raise typer.Exit(err.exit_code) from None


def reports_input_errors(fn: F) -> F:
    """Turn bad input (InputError, a missing or unreadable file) into :func:`fail` (exit 2), and
    a training that cannot go on (TrainingError) into one line with exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InputError as err:
            fail(str(err))
        except TrainingError as err:
            err_console.print(f"error: {' '.join(str(err).split())}", markup=False)
            raise typer.Exit(1) from None
        except OSError as err:
            where = f": {err.filename}" if getattr(err, "filename", None) else ""
            fail(f"{err.strerror or err}{where}")

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    """Print data as JSON on stdout (no rich wrapping); non-finite floats become null."""
    print(json.dumps(_finite(data), indent=2))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def multi_value_command(*options: str) -> type[TyperCommand]:
    """A command class whose ``options`` take several values after one flag.

    ``--sigma 0.8 0.9 1.0`` is read as ``--sigma 0.8 --sigma 0.9 --sigma 1.0``; values continue
    until the next token that starts with ``-`` and is not a number.
    """

    class MultiValueCommand(TyperCommand):
        def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
            return super().parse_args(ctx, expand_multi_values(args, options))

    return MultiValueCommand


def expand_multi_values(args: Sequence[str], options: Sequence[str]) -> list[str]:
    out: list[str] = []
    current: str | None = None
    seen_value = False
    for token in args:
        if token == "--":
            current = None
            out.append(token)
            continue
        if token in options:
            current, seen_value = token, False
            out.append(token)
            continue
        if current is not None and (not token.startswith("-") or _is_number(token)):
            if seen_value:
                out.append(current)
            out.append(token)
            seen_value = True
            continue
        current = None
        out.append(token)
    return out


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def old_spelling(name: str, value: T | None, old_name: str, old_value: T | None) -> T | None:
    """The value of option ``name`` that also answers to a hidden ``old_name`` (both default
    None): whichever was given; both given is bad input."""
    if value is not None and old_value is not None:
        raise InputError(f"give {name} once ({old_name} is its old spelling)")
    return value if value is not None else old_value


# Options shared by several commands.
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
TemperatureOption = Annotated[
    float, typer.Option("--temperature", "-t", help="Gumbel temperature sigma of Eq. 3.")
]
SeedOption = Annotated[int, typer.Option("--seed", help="Random seed.")]
ProgressOption = Annotated[
    bool,
    typer.Option(
        "--progress/--no-progress", help="Show progress bars on stderr (never with --json)."
    ),
]
