"""Training-loop hooks and gradient capture (installed as ``gumbel_analysis.hooks``).

A hook is a small object with ``before_train``, ``before_step``, ``after_backward``,
``after_step`` and ``after_train`` methods, called by the engine's loop (as detectron2's
``HookBase``). ``after_backward`` runs between ``loss.backward()`` and ``optimizer.step()``.

:class:`PositiveGradientRecorder` captures per-category gradients of a classifier's logits and
:class:`GradientLogWriter` appends them to an HDF5 file (``docs/grad-log.md``).
"""

from gumbel_analysis.hooks.base import HookBase, HookList
from gumbel_analysis.hooks.grad_log import GradientLogWriter, log_attributes
from gumbel_analysis.hooks.gradient_recorder import QUANTITIES, PositiveGradientRecorder

__all__ = [
    "QUANTITIES",
    "GradientLogWriter",
    "HookBase",
    "HookList",
    "PositiveGradientRecorder",
    "log_attributes",
]
