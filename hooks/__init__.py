"""Training-loop hooks and gradient capture (installed as ``gumbel_analysis.hooks``).

A hook is a small object with ``before_train``, ``before_step``, ``after_backward``,
``after_step`` and ``after_train`` methods, called by the engine's loop (as detectron2's
``HookBase``). ``after_backward`` runs between ``loss.backward()`` and ``optimizer.step()``.

:class:`GradientRecorder` captures per-category gradients of any classifier's logits into an
HDF5 file (``docs/grad-log.md``, written by :class:`GradientLogWriter`);
:class:`PositiveGradientRecorder` is its training-loop hook.
"""

from typing import TYPE_CHECKING, Any

from gumbel_analysis.hooks.base import HookBase, HookList
from gumbel_analysis.hooks.grad_log import GradientLogWriter, log_attributes

if TYPE_CHECKING:
    from gumbel_analysis.hooks.gradient_recorder import GradientRecorder, PositiveGradientRecorder

__all__ = [
    "GradientLogWriter",
    "GradientRecorder",
    "HookBase",
    "HookList",
    "PositiveGradientRecorder",
    "log_attributes",
]


def __getattr__(name: str) -> Any:
    # The recorder needs torch; reading a log (gumbel grads) must not load it.
    if name in ("GradientRecorder", "PositiveGradientRecorder"):
        from gumbel_analysis.hooks import gradient_recorder

        return getattr(gradient_recorder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
