"""The gradient recorder and the HDF5 log: analytic gradients, weights, rows, DDP, SIGKILL."""

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gumbel_analysis.hooks import GradientLogWriter, log_attributes
from gumbel_analysis.hooks.gradient_recorder import GradientRecorderHook
from gumbel_analysis.losses import build_loss, drop_weights

C = 4
QUANTITIES_ORDER = ("positive_sum", "positive_count", "negative_sum", "negative_count")
FREQ = torch.tensor([1e-4, 5e-4, 0.05, 0.2], dtype=torch.float64)


def batch(seed, n=64, cols=C + 1, low=-3.0, high=5.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.rand(n, cols, generator=g, dtype=torch.float64) * (high - low) + low
    labels = torch.randint(0, C + 1, (n,), generator=g)
    return logits, labels


def analytic_grad(name, q, sigma=1.0):
    """Per-proposal dL/dq of each loss, from its formula (positive, negative)."""
    if name == "gumbel":
        a = torch.exp(-q / sigma)
        return -a / sigma, (a / sigma) / torch.expm1(a)
    if name == "sigmoid":
        p = torch.sigmoid(q)
        return p - 1, p
    raise ValueError(name)


def expected_sums(pos_grad, neg_grad, labels, weights=None):
    out = np.zeros((4, C))
    for i, label in enumerate(labels.tolist()):
        for c in range(C):
            if label == c:
                out[0, c] += float(pos_grad[i, c])
                out[1, c] += 1
            else:
                w = 1.0 if weights is None else float(weights[i, c])
                out[2, c] += w * abs(float(neg_grad[i, c]))
                out[3, c] += w
    return out


@pytest.mark.parametrize(("name", "sigma"), [("gumbel", 1.0), ("gumbel", 1.3), ("sigmoid", 1.0)])
def test_recorded_sums_are_the_analytic_per_proposal_gradients(name, sigma):
    logits, labels = batch(0)
    loss = build_loss(name, C, **({"temperature": sigma} if name == "gumbel" else {}))
    recorder = GradientRecorderHook(C)
    x = logits.clone().requires_grad_()
    recorder.watch(x, labels)
    loss(x, labels).backward()
    pos, neg = analytic_grad(name, logits, sigma)
    expected = expected_sums(pos, neg, labels)
    np.testing.assert_allclose(recorder.pop().numpy(), expected, rtol=1e-9)


def test_softmax_positive_gradient_is_p_minus_one():
    logits, labels = batch(1)
    x = logits.clone().requires_grad_()
    recorder = GradientRecorderHook(C)
    recorder.watch(x, labels)
    build_loss("softmax", C)(x, labels).backward()
    p = torch.softmax(logits, 1)
    np.testing.assert_allclose(recorder.pop().numpy(), expected_sums(p - 1, p, labels), rtol=1e-9)


def test_gol_dropped_negatives_are_absent():
    logits, labels = batch(2, cols=C)
    loss = build_loss("gol", C, class_frequency=FREQ, lambda_=1e-3)
    loss.generator = torch.Generator().manual_seed(4)
    recorder = GradientRecorderHook(C, weights_fn=lambda: loss.last_weights)
    x = logits.clone().requires_grad_()
    recorder.watch(x, labels)
    loss(x, labels).backward()
    w = drop_weights(labels, FREQ < 1e-3, generator=torch.Generator().manual_seed(4))
    assert (w == 0).any()
    pos, neg = analytic_grad("gumbel", logits)
    expected = expected_sums(pos, neg, labels, weights=w)
    np.testing.assert_allclose(recorder.pop().numpy(), expected, rtol=1e-9)


def test_amp_scale_is_divided_out():
    logits, labels = batch(3)
    loss = build_loss("sigmoid", C)
    plain, scaled = (
        GradientRecorderHook(C),
        GradientRecorderHook(C, scale_fn=lambda: 1024.0),
    )
    x = logits.clone().requires_grad_()
    plain.watch(x, labels)
    loss(x, labels).backward()
    y = logits.clone().requires_grad_()
    scaled.watch(y, labels)
    (loss(y, labels) * 1024.0).backward()
    torch.testing.assert_close(plain.pop(), scaled.pop())


def test_loss_scale_fn_is_the_scale_the_loss_was_multiplied_by():
    # The training loop's recorder divides by the scaler's current scale, read through the public
    # GradScaler API and without a host sync; it follows the scale as update() changes it.
    from gumbel_analysis.engine.trainer import loss_scale_fn

    device = torch.device("cpu")
    assert loss_scale_fn(torch.amp.GradScaler("cpu", enabled=False), device) is None
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    scale = loss_scale_fn(scaler, device)
    w = torch.nn.Parameter(torch.tensor([1.5, -2.0]))
    opt = torch.optim.SGD([w], lr=0.1)
    for _ in range(2):
        loss = (w**2).sum()
        scaled = scaler.scale(loss)
        assert torch.is_tensor(scale()) and torch.equal(scaled, loss * scale())
        assert float(scale()) == scaler.get_scale()
        scaled.backward()
        scaler.step(opt)
        scaler.update()
    assert float(scale()) == scaler.get_scale() == 2.0**12  # grew after each finite step


def categories():
    return [
        {
            "id": i + 1,
            "name": f"c{i}",
            "frequency": "rcff"[i],
            "image_count": 10 * (i + 1),
            "instance_count": 20 * (i + 1),
        }
        for i in range(C)
    ]


def attributes(every=1):
    return log_attributes(
        loss="gumbel",
        activation="gumbel",
        num_classes=C,
        temperature=1.0,
        gumbel_mode="stable",
        dataset="test",
        grad_every=every,
    )


def run_hook(path, every, batches, iterations_per_epoch=4):
    """Drive the recorder as the training loop does, without a model."""
    writer = GradientLogWriter(path, attributes(every), categories())
    recorder = GradientRecorderHook(C, writer=writer, every=every)
    trainer = SimpleNamespace(iteration=0, epoch=0, epoch_iteration=0, is_last_iteration=False)
    recorder.trainer = trainer
    loss = build_loss("gumbel", C)
    for k, (logits, labels) in enumerate(batches):
        x = logits.clone().requires_grad_()
        recorder.watch(x, labels)
        loss(x, labels).backward()
        trainer.iteration = k + 1
        trainer.epoch_iteration = (k + 1) % iterations_per_epoch
        trainer.epoch = (k + 1) // iterations_per_epoch
        trainer.is_last_iteration = k + 1 == len(batches)
        recorder.after_step()
    recorder.after_train()


def read(path):
    with h5py.File(path, "r", swmr=True) as f:
        return {
            k: f[k][:]
            for k in (
                "positive_sum",
                "positive_count",
                "negative_sum",
                "negative_count",
                "iteration",
                "epoch",
            )
        }


def test_totals_do_not_depend_on_grad_every(tmp_path):
    batches = [batch(10 + k) for k in range(7)]
    run_hook(tmp_path / "every1.h5", 1, batches)
    run_hook(tmp_path / "every3.h5", 3, batches)
    a, b = read(tmp_path / "every1.h5"), read(tmp_path / "every3.h5")
    assert a["iteration"].tolist() == list(range(1, 8))
    assert b["iteration"].tolist() == [3, 6, 7]  # the last, partial row at the end
    assert b["epoch"].tolist() == [0, 1, 1]
    for key in ("positive_sum", "positive_count", "negative_sum", "negative_count"):
        np.testing.assert_allclose(a[key].sum(0), b[key].sum(0), rtol=1e-12)


def test_schema_attributes_and_categories(tmp_path):
    run_hook(tmp_path / "g.h5", 2, [batch(1), batch(2)])
    with h5py.File(tmp_path / "g.h5", "r", swmr=True) as f:
        assert f.attrs["schema"] == "gumbel-analysis/grad-log" and f.attrs["schema_version"] == 1
        assert f.attrs["loss"] == "gumbel" and f.attrs["num_classes"] == C
        assert f["categories/name"].asstr()[:].tolist() == ["c0", "c1", "c2", "c3"]
        assert f["categories/frequency"].asstr()[:].tolist() == list("rcff")
        assert f["positive_sum"].compression == "gzip"
        assert f["positive_count"].dtype == np.int64


def test_resume_drops_rows_past_the_checkpoint(tmp_path):
    path = tmp_path / "g.h5"
    run_hook(path, 1, [batch(k) for k in range(5)])
    before = read(path)
    writer = GradientLogWriter(path, attributes(), categories(), resume_after=3)
    writer.append(4, 0, np.ones((4, C)))
    writer.close()
    after = read(path)
    assert after["iteration"].tolist() == [1, 2, 3, 4]
    np.testing.assert_array_equal(after["positive_sum"][:3], before["positive_sum"][:3])
    np.testing.assert_array_equal(after["positive_sum"][3], np.ones(C))


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from gumbel_analysis.hooks import GradientLogWriter, log_attributes
    C = 4
    cats = [{"id": i + 1, "name": f"c{i}", "frequency": "rcff"[i], "image_count": 1,
             "instance_count": 1} for i in range(C)]
    attrs = log_attributes(loss="sigmoid", activation="sigmoid", num_classes=C)
    w = GradientLogWriter(sys.argv[1], attrs, cats)
    i = 0
    while True:
        i += 1
        w.append(i, 0, np.full((4, C), float(i)))
        print(i, flush=True)
        time.sleep(0.02)
    """
)


def test_a_writer_killed_with_sigkill_leaves_a_readable_file(tmp_path):
    path = tmp_path / "killed.h5"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(path)], stdout=subprocess.PIPE, text=True
    )
    written = 0
    deadline = time.time() + 120
    while written < 5 and time.time() < deadline:
        written = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rows = read(path)
    n = len(rows["iteration"])
    assert n >= 5
    assert rows["iteration"].tolist() == list(range(1, n + 1))
    np.testing.assert_array_equal(rows["positive_sum"][:n, 0], np.arange(1, n + 1))
    # A resumed run can take the file over again.
    writer = GradientLogWriter(path, attributes(), categories(), resume_after=3)
    writer.close()
    assert read(path)["iteration"].tolist() == [1, 2, 3]


def _ddp_worker(rank, world, init_file, batches, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    recorder = GradientRecorderHook(C, reduce_fn=lambda t: (dist.all_reduce(t), t)[1])
    loss = build_loss("gumbel", C)
    for logits, labels in batches[rank::world]:
        x = logits.clone().requires_grad_()
        recorder.watch(x, labels)
        loss(x, labels).backward()
    row = recorder.reduce_fn(recorder.pop())
    if rank == 0:
        torch.save(row, out)
    dist.destroy_process_group()


def test_two_gloo_processes_record_the_totals_of_one(tmp_path):
    batches = [batch(20 + k) for k in range(6)]
    single = GradientRecorderHook(C)
    loss = build_loss("gumbel", C)
    for logits, labels in batches:
        x = logits.clone().requires_grad_()
        single.watch(x, labels)
        loss(x, labels).backward()
    out = tmp_path / "row.pt"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), batches, str(out)), nprocs=2)
    torch.testing.assert_close(torch.load(out), single.pop(), rtol=1e-12, atol=0)


def test_recorder_rejects_bad_arguments():
    with pytest.raises(ValueError, match="every"):
        GradientRecorderHook(C, every=0)
    with pytest.raises(RuntimeError, match="nothing recorded"):
        GradientRecorderHook(C).pop()
    assert math.isnan(
        log_attributes(loss="softmax", activation="softmax", num_classes=2)["temperature"]
    )


def test_standalone_recorder_writes_rows_any_classifier_can_use(tmp_path):
    # The public API: a context manager with the log's path and categories, watch() and step();
    # the rows are the analytic per-proposal gradients summed over their steps.
    from gumbel_analysis.analysis.gradients import read_grad_log
    from gumbel_analysis.hooks.gradient_recorder import GradientRecorder

    loss = build_loss("gumbel", C)
    layer = torch.nn.Linear(C + 1, loss.num_outputs, dtype=torch.float64)
    expected = [np.zeros((4, C)) for _ in range(3)]
    path = tmp_path / "log.h5"
    with GradientRecorder(path, ["a", "b", "c", "d"], every=2, loss="gumbel") as rec:
        for step in range(5):  # rows after steps 2 and 4, a partial row for step 5 on exit
            x, labels = batch(step)
            logits = layer(x)
            rec.watch(logits, labels)
            loss(logits, labels).backward()
            rec.step(epoch=step // 2)
            pos, neg = analytic_grad("gumbel", logits.detach()[:, :C])
            expected[min(step // 2, 2)] += expected_sums(pos, neg, labels)
    with h5py.File(path, "r") as f:
        assert f["iteration"][:].tolist() == [2, 4, 5]
        assert f["epoch"][:].tolist() == [0, 1, 2]
        assert [n.decode() for n in f["categories/name"][:]] == ["a", "b", "c", "d"]
        assert f.attrs["loss"] == "gumbel" and f.attrs["grad_every"] == 2
        for row in range(3):
            got = np.stack([f[name][row] for name in QUANTITIES_ORDER])
            np.testing.assert_allclose(got, expected[row], rtol=1e-9, atol=1e-12)
    assert read_grad_log(path).rows == 3
    with pytest.raises(ValueError, match="categories"):
        GradientRecorder(tmp_path / "x.h5", every=1)
