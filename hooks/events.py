"""What the loop records at each iteration, kept apart from the hooks that write it out.

As detectron2's ``EventStorage``: the trainer puts the step's scalars (the losses) into the
storage; the writers (``metrics.jsonl``, the progress bar) read them from it. Nothing in here
writes a file or knows a writer.
"""

from __future__ import annotations


class EventStorage:
    """The scalars of the iteration in progress (``iteration``: 1-based, the step being done).

    :meth:`begin_iteration` drops the previous iteration's scalars, so :meth:`latest` only ever
    holds one step's records, in the order they were put.
    """

    def __init__(self) -> None:
        self.iteration = 0
        self._scalars: dict[str, float] = {}

    def begin_iteration(self, iteration: int) -> None:
        """Start recording ``iteration``: the previous iteration's scalars are dropped."""
        self.iteration = int(iteration)
        self._scalars = {}

    def put_scalar(self, name: str, value: float) -> None:
        """Record one scalar of the current iteration (a second put replaces the first)."""
        self._scalars[name] = float(value)

    def put_scalars(self, **scalars: float) -> None:
        """Record several scalars of the current iteration, in the order given."""
        for name, value in scalars.items():
            self.put_scalar(name, value)

    def latest(self) -> dict[str, float]:
        """The current iteration's scalars (a copy), in the order they were put."""
        return dict(self._scalars)
