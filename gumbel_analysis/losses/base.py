"""The interface every classification loss of the registry implements.

A detector asks its loss three things: how many columns the classifier has (``num_outputs``),
how to initialise that layer (``init_classifier``) and how to turn logits into per-class scores at
test time (``scores``). Training calls ``forward(logits, labels)`` with labels in ``[0, C]``,
where ``C`` (``num_classes``) is the background.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

#: The ``instances=`` id of a row replayed from a feature memory (LOCE's MFS) rather than
#: sampled from the image: such rows of one class count as one instance together.
MEMORY_INSTANCE = -2


def compute_dtype(logits: torch.Tensor) -> torch.Tensor:
    """Half precision is computed in float32; float32 and float64 stay as they are."""
    return logits if logits.dtype == torch.float64 else logits.float()


class ClassificationLoss(nn.Module):
    """Base class: ``C`` foreground classes, logits with ``C + 1`` or ``C`` columns.

    Subclasses set ``with_background`` (True: a background column, target 1 for background
    proposals; False: C columns, background proposals have all-zero targets) and implement
    ``forward``, ``scores`` and ``init_classifier``.
    """

    #: Catalogue name (``gumbel_analysis.spec.losses``), set by ``build_loss``.
    name: str = ""
    with_background: bool = True
    #: The inference activation, for reports: "gumbel", "sigmoid" or "softmax".
    activation: str = ""
    #: The activations the method works with; the first is its default. Its options are
    #: declared in the loss catalogue, ``gumbel_analysis.spec.losses``.
    activations: ClassVar[tuple[str, ...]] = ()
    #: Whether the method needs the r/c/f group of each class (``frequency_groups``).
    needs_groups: ClassVar[bool] = False
    #: Whether ``forward`` takes ``instances=`` [N]: the id of each proposal's matched
    #: ground-truth instance (LOCE's per-instance mean scores); the RoI heads pass it.
    needs_instances: ClassVar[bool] = False
    #: Whether the model's box predictor adjusts its logits for this loss and everything else
    #: is frozen (DisAlign's second stage, ``model/disalign.py``).
    adjusts_logits: ClassVar[bool] = False
    #: The feature memory the RoI heads replay for this loss (``model.feature_memory``): its
    #: keyword options, or None for none. It draws classes by ``memory_scores()``.
    feature_memory_options: dict[str, int] | None = None
    #: The [N, K] weights of the last forward pass, for the gradient recorder (None: all 1).
    last_weights: torch.Tensor | None = None

    def __init__(
        self,
        num_classes: int,
        class_frequency: torch.Tensor | None = None,
        frequency_groups: list[str] | None = None,
    ):
        super().__init__()
        # The catalogue name once built by ``build_loss``; the class's name until then.
        self.name = type(self).name or type(self).__name__
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
        self.num_classes = int(num_classes)
        if class_frequency is not None:
            class_frequency = torch.as_tensor(class_frequency, dtype=torch.float64).flatten()
            if class_frequency.numel() != self.num_classes:
                raise ValueError(
                    f"class_frequency has {class_frequency.numel()} entries for "
                    f"{self.num_classes} classes"
                )
            if not torch.isfinite(class_frequency).all() or (class_frequency < 0).any():
                raise ValueError("class_frequency must be finite and non-negative")
            self.register_buffer("class_frequency", class_frequency, persistent=False)
        else:
            self.class_frequency = None
        if frequency_groups is not None:
            frequency_groups = [str(g) for g in frequency_groups]
            if len(frequency_groups) != self.num_classes or not set(frequency_groups) <= set("rcf"):
                raise ValueError(
                    f"frequency_groups needs one of 'r', 'c', 'f' for each of the "
                    f"{self.num_classes} classes"
                )
        self.frequency_groups = frequency_groups

    @property
    def num_outputs(self) -> int:
        """Columns of the classifier: ``C + 1`` with a background column, else ``C``."""
        return self.num_classes + 1 if self.with_background else self.num_classes

    def check_inputs(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if logits.dim() != 2 or logits.shape[1] != self.num_outputs:
            raise ValueError(
                f"{self.name} expects logits [N, {self.num_outputs}], got {tuple(logits.shape)}"
            )
        if labels.shape != (logits.shape[0],):
            raise ValueError(f"expected labels [{logits.shape[0]}], got {tuple(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() > self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}] ({self.num_classes} is background)"
            )

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-class scores [N, C] at test time, background column dropped."""
        raise NotImplementedError

    def background_scores(self, logits: torch.Tensor) -> torch.Tensor | None:
        """The background's probability [N] where the class scores share one with it (a softmax
        over the classes and the background: ``scores`` and this sum to 1), else None
        (independent per-class probabilities). Post-hoc calibration renormalises with it."""
        return None

    def init_classifier(self, layer: nn.Linear) -> None:
        """Initialise the classification layer as this loss prescribes."""
        raise NotImplementedError

    def memory_scores(self) -> torch.Tensor:
        """[C] per-class scores a feature memory draws classes by (inversely); only for a loss
        with ``feature_memory_options``."""
        raise NotImplementedError(f"{self.name} keeps no feature memory")

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, outputs={self.num_outputs}"
