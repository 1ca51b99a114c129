"""Commands whose options come from the loss registry (which needs torch) are built only when they
run or show their own help; ``gumbel --help`` lists them with a fixed summary, without torch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from typer.core import TyperCommand

from gumbel_analysis.cli.common import OneLineUsageErrors


class LazyCommand(TyperCommand):
    """A stand-in listed under its ``summary``; ``load()`` builds the real command on first use."""

    def __init__(self, name: str, summary: str, load: Callable[[], TyperCommand]):
        super().__init__(name, help=summary, short_help=summary)
        self._load = load
        self._real: TyperCommand | None = None

    def real(self) -> TyperCommand:
        if self._real is None:
            self._real = self._load()
            self._real.name = self.name
        return self._real

    def make_context(self, info_name: str | None, args: list[str], parent=None, **extra: Any):
        return self.real().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        return self.real().invoke(ctx)

    def get_params(self, ctx: Any) -> list[Any]:
        return self.real().get_params(ctx)


#: name -> (summary for ``gumbel --help``, loader); filled by ``cli/app.py``.
LAZY_COMMANDS: dict[str, tuple[str, Callable[[], TyperCommand]]] = {}


class GroupWithLazyCommands(OneLineUsageErrors):
    """The root group: Typer's commands plus :data:`LAZY_COMMANDS`, lazy ones listed first (and
    usage errors as one line, for the lazy commands too)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        lazy = {name: LazyCommand(name, s, load) for name, (s, load) in LAZY_COMMANDS.items()}
        self.commands = {**lazy, **self.commands}
