"""The hook interface of the training loop and a list that calls several hooks in order."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class HookBase:
    """Override what you need. ``trainer`` is set by the loop before ``before_train``.

    The loop calls, per iteration: ``before_step`` -> forward, backward -> ``after_backward``
    -> optimizer step -> ``after_step``; ``after_train`` always runs (in a ``finally``), so a hook
    can close its files even when training fails.
    """

    trainer: Any = None
    #: The name of this hook's state in a checkpoint; None: the class name.
    state_key: str | None = None

    def before_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_backward(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def state_dict(self) -> dict:
        """What a checkpoint must keep to resume this hook."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    @property
    def checkpoint_name(self) -> str:
        """The key of :meth:`state_dict` in a checkpoint's ``hooks``."""
        return self.state_key or type(self).__name__


class HookList:
    """Hooks called in the order given."""

    def __init__(self, hooks: Iterable[HookBase] = ()):
        self.hooks = list(hooks)

    def attach(self, trainer: Any) -> None:
        """Give every hook its ``trainer``."""
        for h in self.hooks:
            h.trainer = trainer

    def call(self, method: str) -> None:
        """Call ``method`` of every hook, in order."""
        for h in self.hooks:
            getattr(h, method)()

    def after_train(self) -> None:
        """Run every hook's ``after_train`` even if one fails; re-raise the first error."""
        first: BaseException | None = None
        for h in self.hooks:
            try:
                h.after_train()
            except BaseException as err:
                first = first or err
        if first is not None:
            raise first
