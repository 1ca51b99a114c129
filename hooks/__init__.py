"""Training-loop hooks and gradient capture (installed as ``gumbel_analysis.hooks``).

A hook is a small object with ``before_train``, ``before_step``, ``after_backward``,
``after_step`` and ``after_train`` methods, called by the engine's loop (as detectron2's
``HookBase``). ``after_backward`` runs between ``loss.backward()`` and ``optimizer.step()``.

:class:`PositiveGradientRecorder` captures per-category gradients of a classifier's logits and
:class:`GradientLogWriter` appends them to an HDF5 file (``docs/grad-log.md``).
"""

from typing import TYPE_CHECKING, Any

from gumbel_analysis.hooks.base import HookBase, HookList
from gumbel_analysis.hooks.grad_log import GradientLogWriter, log_attributes

if TYPE_CHECKING:
    from gumbel_analysis.hooks.gradient_recorder import PositiveGradientRecorder

__all__ = [
    "GradientLogWriter",
    "HookBase",
    "HookList",
    "PositiveGradientRecorder",
    "log_attributes",
]


def __getattr__(name: str) -> Any:
    # The recorder needs torch; reading a log (gumbel grads) must not load it.
    if name == "PositiveGradientRecorder":
        from gumbel_analysis.hooks.gradient_recorder import PositiveGradientRecorder

        return PositiveGradientRecorder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
