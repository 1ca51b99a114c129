"""The official lvis-api (``lvis`` 0.5.3), kept as the reference evaluator (``--evaluator lvis``).

Everything that touches the ``lvis`` package lives here:

* :func:`patch_lvis_numpy` makes the released ``lvis`` work with numpy 2: its evaluator uses
  ``np.float``, an alias numpy 2 removed. Rather than touching numpy or site-packages, the
  ``lvis`` modules get a proxy of numpy that also answers the removed aliases.
* :func:`load_lvis` builds an ``lvis.LVIS`` from a loaded dict (``LVIS()`` only takes a path).
* :func:`lvis_api_eval` runs ``LVISEval`` on LVIS result entries and returns its ``results``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

# numpy 1.x aliases removed in numpy 2 (and deprecated since 1.20) that lvis still uses.
_REMOVED_NUMPY_ALIASES = {
    "float": float,
    "int": int,
    "bool": bool,
    "object": object,
    "str": str,
    "long": int,
    "complex": complex,
}


class _NumpyWithAliases(types.ModuleType):
    """numpy as seen by lvis: every attribute of numpy, plus the removed builtin aliases."""

    def __init__(self) -> None:
        super().__init__("numpy")

    def __getattr__(self, name: str) -> Any:
        try:
            return getattr(np, name)
        except AttributeError:
            if name in _REMOVED_NUMPY_ALIASES:
                return _REMOVED_NUMPY_ALIASES[name]
            raise


def patch_lvis_numpy() -> None:
    """Give the ``lvis`` modules that use numpy a numpy with the removed aliases. Idempotent."""
    import lvis.colormap
    import lvis.eval

    for module in (lvis.eval, lvis.colormap):
        if not isinstance(module.np, _NumpyWithAliases):
            module.np = _NumpyWithAliases()


def load_lvis(path_or_data: str | os.PathLike | dict):
    """An official ``lvis.LVIS`` object from a path or an already loaded dict."""
    import lvis

    if not isinstance(path_or_data, dict):
        from gumbel_analysis.data.lvis_io import load_lvis_json

        path_or_data = load_lvis_json(path_or_data)
    api = lvis.LVIS.__new__(lvis.LVIS)
    api.logger = lvis.lvis.logging.getLogger(lvis.lvis.__name__)
    api.dataset = path_or_data
    api._create_index()
    return api


def lvis_api_eval(
    data: dict,
    entries: list[dict],
    iou_type: str,
    max_dets: int = 300,
    tick: Callable[[], None] | None = None,
    verbose: bool = False,
) -> dict[str, float]:
    """``LVISEval(gt, LVISResults(gt, entries, max_dets), iou_type).run()``; its ``results``.

    ``data``: an LVIS ground truth dict (not modified); ``entries``: result dicts as
    ``LVISResults`` takes them (for segm without ``bbox``, so that areas come from the masks).
    ``tick`` is called per (image, category) step, for a progress bar.
    """
    from lvis import LVISResults

    patch_lvis_numpy()
    # LVISEval writes "ignore" flags and RLEs into the annotation dicts: give it copies
    gt_api = load_lvis({**data, "annotations": [dict(a) for a in data["annotations"]]})
    # LVISResults deep-copies the GT it is given but keeps only its images and categories
    images_only = load_lvis({**data, "annotations": []})
    with _quiet_lvis(verbose):
        if entries:
            dt_api = LVISResults(images_only, [dict(e) for e in entries], max_dets=max_dets)
        else:  # LVISResults cannot take an empty list (it reads results[0]): build it empty
            dt_api = LVISResults.__new__(LVISResults)
            dt_api.dataset, dt_api.logger = images_only.dataset, images_only.logger
            dt_api._create_index()
        evaluator = _lvis_eval_class()(gt_api, dt_api, iou_type, tick)
        evaluator.params.max_dets = max_dets
        evaluator.run()
        if verbose:
            evaluator.print_results()
    return dict(evaluator.results)


@contextlib.contextmanager
def _quiet_lvis(verbose: bool) -> Iterator[None]:
    """Silence lvis's info/warning log and its ``Logger.warn`` deprecation warnings."""
    if verbose:
        yield
        return
    logger = logging.getLogger("lvis")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


@functools.cache
def _lvis_eval_class() -> type:
    """Built on first use: importing lvis takes half a second and configures root logging."""
    from lvis import LVISEval

    class CountingLVISEval(LVISEval):
        """``LVISEval`` unchanged but for a call of ``tick`` per (image, category) step."""

        def __init__(self, gt, dt, iou_type, tick):
            super().__init__(gt, dt, iou_type)
            self._tick = tick or (lambda: None)

        def compute_iou(self, img_id, cat_id):
            self._tick()
            return super().compute_iou(img_id, cat_id)

        def evaluate_img(self, img_id, cat_id, area_rng):
            self._tick()
            return super().evaluate_img(img_id, cat_id, area_rng)

    return CountingLVISEval
