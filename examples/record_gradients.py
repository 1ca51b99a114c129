"""The gradient recorder on a plain classification model, written to the HDF5 gradient log.

A small MLP learns a long-tailed 3-group problem with the Gumbel and the Sigmoid loss; the
recorder captures the per-class gradients autograd delivers to the logits, and the log is read
back the way ``gumbel grads`` reads it (``gumbel grads OUT_DIR/*.h5`` draws Figure 2 from it).
Run: ``python examples/record_gradients.py [OUT_DIR]``.
"""

import sys
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from gumbel_analysis.hooks.gradient_recorder import GradientRecorder
from gumbel_analysis.losses import build_loss

C, DIM, STEPS, EVERY = 12, 32, 200, 20
out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "example-grads")
out_dir.mkdir(exist_ok=True)
gen = torch.Generator().manual_seed(0)
counts = np.round(2000 * 0.6 ** np.arange(C)).astype(int) + 1  # a long tail
groups = ["f" if n > 200 else "c" if n > 20 else "r" for n in counts]
prob = torch.tensor(np.append(counts, counts.sum()) / (2 * counts.sum()))  # half background
centres = torch.randn(C + 1, DIM, generator=gen) * 2
categories = [
    {
        "id": c + 1,
        "name": f"class{c}",
        "frequency": groups[c],
        "image_count": int(counts[c]),
        "instance_count": int(counts[c]),
    }
    for c in range(C)
]

for name in ("sigmoid", "gumbel"):
    torch.manual_seed(0)
    loss = build_loss(name, C)
    model = nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, loss.num_outputs))
    loss.init_classifier(model[-1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    path = out_dir / f"{name}.h5"
    with GradientRecorder(
        path, categories, every=EVERY, loss=name, activation=loss.activation
    ) as recorder:
        for _ in range(STEPS):
            labels = torch.multinomial(prob, 256, replacement=True, generator=gen)
            x = centres[labels] + torch.randn(256, DIM, generator=gen)
            logits = model(x)
            recorder.watch(logits, labels)  # the tensor hook sees dL/dlogits in backward
            optimizer.zero_grad()
            loss(logits, labels).backward()
            optimizer.step()
            recorder.step()  # a row every EVERY steps
    # leaving the block wrote the last partial row (none here) and closed the file
    with h5py.File(path, "r", swmr=True) as f:
        g = np.abs(f["positive_sum"][:].sum(0)) / f["positive_count"][:].sum(0)
    db = 20 * np.log10(g)
    group_of = np.array(groups)
    by_group = {k: float(db[group_of == k].mean()) for k in "rcf"}
    print(
        f"{name:8s} mean |positive gradient| in dB (20 log10): all {db.mean():6.2f}  "
        + "  ".join(f"{k} {v:6.2f}" for k, v in by_group.items())
        + f"   -> {path}"
    )
