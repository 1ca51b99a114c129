"""Drop a Gumbel or GOL loss into any PyTorch classifier head.

The loss tells the head how many outputs to have, how to initialise them and how to score at
test time. Run: ``python examples/loss_in_your_model.py [gumbel|gol|sigmoid|softmax]``.
"""

import sys

import torch
from torch import nn

from gumbel_analysis.losses import build_loss

num_classes = 50
# f_c = images containing class c / training images: a long tail.
class_frequency = torch.logspace(-4, -1, num_classes, dtype=torch.float64)

loss = build_loss(
    sys.argv[1] if len(sys.argv) > 1 else "gumbel", num_classes, class_frequency=class_frequency
)
head = nn.Linear(256, loss.num_outputs)  # C + 1 outputs with a background column, else C
loss.init_classifier(head)  # Gumbel: weights 0.001, bias -log(log(C + 1)) (Sec. 1.1)
print(loss)

features = torch.randn(512, 256)  # e.g. RoI features
labels = torch.randint(0, num_classes + 1, (512,))  # num_classes = background
logits = head(features)
value = loss(logits, labels)
value.backward()
scores = loss.scores(logits)  # [N, C] per-class probabilities, background dropped
print(
    f"loss {value.item():.4f}; scores {tuple(scores.shape)} in [{scores.min():.2e}, "
    f"{scores.max():.2e}]; |grad W| {head.weight.grad.norm():.3e}"
)
