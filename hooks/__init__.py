"""Training-loop hooks and gradient capture (installed as ``gumbel_analysis.hooks``).

A hook is a small object with ``before_train``, ``before_step``, ``after_backward``,
``after_step`` and ``after_train`` methods, called by the engine's loop (as detectron2's
``HookBase``). ``after_backward`` runs between ``loss.backward()`` and ``optimizer.step()``.

The modules, each imported by its own path:

* ``base``: :class:`HookBase`, :class:`HookList` (re-exported here);
* ``events``: :class:`EventStorage`, the step's scalars the loop records (re-exported here);
* ``grad_log``: :class:`GradientLogWriter`, the HDF5 gradient log (``docs/grad-log.md``);
* ``gradient_recorder``: ``GradientRecorder``, per-category gradients of any classifier's logits,
  and ``GradientRecorderHook``, its training-loop hook (needs torch);
* ``writers``: ``MetricsWriter``, ``Checkpointer``, ``ProgressBar``, the loop's writers.

This package's own import loads neither torch nor rich, so the torch-free readers of a log
(``gumbel grads``) can import ``gumbel_analysis.hooks.grad_log``: import the recorder from
``gumbel_analysis.hooks.gradient_recorder``.
"""

from gumbel_analysis.hooks.base import HookBase, HookList
from gumbel_analysis.hooks.events import EventStorage
from gumbel_analysis.hooks.grad_log import GradientLogWriter, log_attributes

__all__ = ["EventStorage", "GradientLogWriter", "HookBase", "HookList", "log_attributes"]
