"""Carrying out planned runs: in this process, ``--jobs N`` side by side, or as SLURM jobs.

``gumbel reproduce`` and ``gumbel sweep`` plan their runs (``experiments/plan.py``) and hand
them to a launcher; the run folders stay the only state, so a report is built from them
whoever trained them.

* :class:`LocalLauncher` with ``jobs = 1`` trains the runs one after another in this process
  (as before); with ``jobs = N`` it keeps N child processes busy, each with its share of the
  cores (``cores // N`` torch threads: torchvision's RoIAlign backward is single-threaded on
  the CPU, so two one-thread runs use two cores better than one two-thread run), or on CUDA
  one GPU each (round robin over the visible ones).
* :class:`SlurmLauncher` submits every run as a job through submitit (any submitit executor:
  ``AutoExecutor`` on a cluster, ``LocalExecutor`` in the tests). The job id is kept beside
  the run folder (``.launch/NAME.job.json``), so a rerun does not submit a run whose job is
  still pending or running, and submits again (resuming from the last checkpoint) one whose
  job ended without finishing it.

A second stage (DisAlign, ``PlannedRun.after``) waits for its first: ``--jobs N`` starts it
once its first stage has ended here, SLURM submits it then (with ``--no-wait`` it is left for
the rerun), and a first stage that did not finish leaves it not run, with the reason.

Every run, whoever carries it out, holds an exclusive lock (``flock``) on ``.NAME.lock``
beside its folder while it trains: two commands on the same OUT never train a run twice. The
lock is the kernel's, so a killed process leaves no stale lock; a second command that finds it
held says so and waits, then plans the run again from its folder (usually: finished, skip).
The ``.launch`` folder sits beside the run folders, never in them, so a run folder holds only
its own files.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from gumbel_analysis.errors import InputError
from gumbel_analysis.experiments.plan import SKIP, PlannedRun, carry_out_run, plan_run
from gumbel_analysis.io import atomic_path


class LauncherKind(StrEnum):
    local = "local"
    slurm = "slurm"


#: Beside the run folders: their locks and job records (never inside a run folder).
LAUNCH_FOLDER = ".launch"


def lock_path(run: Path) -> Path:
    return run.parent / LAUNCH_FOLDER / f"{run.name}.lock"


def job_path(run: Path) -> Path:
    return run.parent / LAUNCH_FOLDER / f"{run.name}.job.json"


@contextmanager
def run_lock(run: Path, say: Callable[[str], None] | None = None) -> Iterator[bool]:
    """Hold the run's lock; yields whether another process held it first (then this one
    waited for it). Released when the block ends or the process dies."""
    path = lock_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        waited = False
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waited = True
            (say or _stderr)(f"{run} is being trained by another command; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield waited
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def discard_launch_folder(parent: Path) -> None:
    """Remove ``parent/.launch`` if it holds only lock files: for a command that made ``parent``
    itself and failed before any run started (no other command can hold those locks), so that
    it leaves no folder behind."""
    folder = parent / LAUNCH_FOLDER
    if not folder.is_dir() or any(not p.name.endswith(".lock") for p in folder.iterdir()):
        return
    for lock in folder.iterdir():
        lock.unlink(missing_ok=True)
    folder.rmdir()


def is_locked(run: Path) -> bool:
    """Whether a process holds the run's lock now (it is training the run)."""
    path = lock_path(run)
    if not path.exists():
        return False
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def carry_out_locked(item: PlannedRun, progress: bool = False, console: Any = None) -> PlannedRun:
    """Carry out one planned run under its lock. The folder is planned again once the lock is
    held: another command may have trained it meanwhile, or killed it at a checkpoint."""
    with run_lock(item.path):
        fresh = plan_run(
            item.path, item.values, seed=item.seed, temperature=item.temperature, after=item.after
        )
        item.action, item.state = fresh.action, fresh.state
        carry_out_run(item, progress=progress, console=console)
    return item


@contextmanager
def runs_progress(total: int, show: bool, console: Any) -> Iterator[tuple[Any, Any]]:
    """A rich bar of the runs ended so far (``(None, None)`` when not shown)."""
    if not show:
        yield None, None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = ("runs", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        yield bar, bar.add_task("runs", total=total)


# --- launchers ----------------------------------------------------------------------------------


Done = Callable[[int, PlannedRun], None]  # called in the parent as each run ends


class Launcher(Protocol):
    def run(self, runs: Sequence[PlannedRun], done: Done | None = None) -> bool:
        """Carry out ``runs``; True when every one has ended here (False: jobs still queued
        or running elsewhere, e.g. with --no-wait)."""
        ...


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _child(item: PlannedRun, threads: int) -> None:
    """A child process of the local launcher: its thread share, then the run."""
    import torch

    torch.set_num_threads(threads)
    carry_out_locked(item)


@dataclass
class LocalLauncher:
    """``jobs`` runs at a time on this machine (``jobs = 1``: in this process)."""

    jobs: int = 1
    gpus: int = 0  # visible CUDA devices to spread the children over (0: CPU)
    progress: bool = True
    console: Any = None
    poll_seconds: float = 0.5

    def run(self, runs: Sequence[PlannedRun], done: Done | None = None) -> bool:
        if self.jobs <= 1:
            for i, item in enumerate(runs):
                if item.action != SKIP:
                    carry_out_locked(item, progress=self.progress, console=self.console)
                else:
                    carry_out_run(item)
                if done is not None:
                    done(i, item)
            return True
        return self._run_parallel(runs, done)

    def _run_parallel(self, runs: Sequence[PlannedRun], done: Done | None) -> bool:
        context = multiprocessing.get_context("spawn")  # a fresh torch per child
        threads = max(1, cpu_cores() // self.jobs)
        queue = list(enumerate(runs))
        running: dict[int, tuple[Any, int, PlannedRun, float, int]] = {}  # slot -> child
        while queue or running:
            for slot in range(self.jobs):
                if slot in running or not queue:
                    continue
                waiting = _waiting_paths(queue, running.values())
                ready = [k for k, (_, q) in enumerate(queue) if not set(q.after) & waiting]
                if not ready:  # every queued run waits for a first stage still running
                    break
                i, item = queue.pop(ready[0])
                if item.action == SKIP:
                    carry_out_run(item)
                    if done is not None:
                        done(i, item)
                    continue
                env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
                if self.gpus:
                    env["CUDA_VISIBLE_DEVICES"] = str(slot % self.gpus)
                with _environment(env):  # spawn copies the environment at start
                    child = context.Process(target=_child, args=(item, threads), daemon=False)
                    child.start()
                running[slot] = (child, i, item, time.perf_counter(), slot)
            for slot, (child, i, item, start, _) in list(running.items()):
                if child.is_alive():
                    continue
                child.join()
                del running[slot]
                _collect(item, child.exitcode, time.perf_counter() - start)
                if done is not None:
                    done(i, item)
            if running:
                time.sleep(self.poll_seconds)
        return True


def _waiting_paths(queue: Sequence[tuple[int, PlannedRun]], running: Any) -> set[Path]:
    """The run folders still queued or running here: a run ``after`` one of them waits."""
    paths = {item.path.resolve() for _, item in queue}
    return paths | {entry[2].path.resolve() for entry in running}


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _collect(item: PlannedRun, exitcode: int | None, seconds: float) -> None:
    """A child ended: what its run folder holds now (the folder is the only state)."""
    from gumbel_analysis.experiments.runs import FAILED, read_run

    run = read_run(item.path) if item.path.exists() else None
    item.seconds = seconds
    item.status = run.status if run else ""
    item.metrics = run.metrics if run else None
    if run is not None and run.status == FAILED:
        item.error = item.error or "the loss became non-finite; see its diverged.pt"
    elif exitcode != 0:
        item.error = f"its process ended with exit code {exitcode}"


@dataclass
class SlurmLauncher:
    """Every run a job of ``executor`` (a submitit executor with its parameters set)."""

    executor: Any
    wait: bool = True
    poll_seconds: float = 5.0
    say: Callable[[str], None] = _stderr
    jobs: dict[str, Any] = field(default_factory=dict)

    def run(self, runs: Sequence[PlannedRun], done: Done | None = None) -> bool:
        pending: list[tuple[int, PlannedRun, Any]] = []
        # Second stages wait here for their first stages' jobs, then are submitted.
        held: list[tuple[int, PlannedRun]] = []
        for i, item in enumerate(runs):
            if item.action == SKIP:
                carry_out_run(item)
                if done is not None:
                    done(i, item)
                continue
            job = self._job_of(item)
            if job is None and item.after and _waits(item, pending, held):
                held.append((i, item))
                continue
            if job is None:
                job = self._submit(item)
            pending.append((i, item, job))
        if not self.wait:
            if pending or held:
                later = f"; {len(held)} second stages after their first" if held else ""
                self.say(
                    f"{len(pending)} runs submitted or still queued (job ids beside their "
                    f"folders){later}; rerun the command to collect them and write the report"
                )
            return not pending and not held
        while pending or held:
            for entry in list(held):
                if not _waits(entry[1], pending, held):
                    held.remove(entry)
                    pending.append((entry[0], entry[1], self._submit(entry[1])))
            for entry in list(pending):
                i, item, job = entry
                if not job.done():
                    continue
                pending.remove(entry)
                error = _job_error(job)
                _collect(item, 0 if error is None else 1, 0.0)
                item.seconds = None
                if error:
                    item.error = item.error or error
                if done is not None:
                    done(i, item)
            if pending:
                time.sleep(self.poll_seconds)
        return True

    def _submit(self, item: PlannedRun) -> Any:
        job = self.executor.submit(carry_out_locked, item)
        _write_job(item.path, job)
        return job

    def _job_of(self, item: PlannedRun) -> Any:
        """The job still queued or running for this run (None: submit one)."""
        record = _read_job(item.path)
        if record is None:
            return None
        # AutoExecutor wraps the cluster's executor, whose job class knows the job's state.
        job_class = getattr(getattr(self.executor, "_executor", self.executor), "job_class", None)
        if job_class is None:
            return None
        job = job_class(folder=record["folder"], job_id=record["job_id"])
        state = str(getattr(job, "state", "UNKNOWN")).upper()
        if state in {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "RESIZING", "SUSPENDED"}:
            name, job_id = item.path.name, record["job_id"]
            self.say(f"{name}: job {job_id} is {state.lower()}; not resubmitted")
            return job
        if state == "UNKNOWN" and is_locked(item.path):  # e.g. submitit's local jobs
            self.say(f"{item.path.name}: job {record['job_id']} is running; not resubmitted")
            return job
        return None


def _waits(item: PlannedRun, pending: Sequence[tuple], held: Sequence[tuple]) -> bool:
    """Whether one of ``item``'s first stages is still submitted or held here."""
    here = {entry[1].path.resolve() for entry in (*pending, *held)}
    return bool(set(item.after) & here)


def _job_error(job: Any) -> str | None:
    try:
        exc = job.exception()
    except Exception as err:
        return f"job {job.job_id}: {' '.join(str(err).split())[:300]}"
    return None if exc is None else f"job {job.job_id}: {' '.join(str(exc).split())[:300]}"


def _write_job(run: Path, job: Any) -> None:
    record = {"job_id": str(job.job_id), "folder": str(job.paths.folder)}
    job_path(run).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(job_path(run)) as tmp:
        Path(tmp).write_text(json.dumps(record) + "\n")


def _read_job(run: Path) -> dict[str, str] | None:
    try:
        record = json.loads(job_path(run).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not {"job_id", "folder"} <= set(record):
        return None
    return {"job_id": str(record["job_id"]), "folder": str(record["folder"])}


# --- from the command line's options ------------------------------------------------------------


@dataclass(frozen=True)
class LaunchOptions:
    """What ``--jobs``, ``--launcher`` and the SLURM options of a command say."""

    jobs: int | None = None
    launcher: LauncherKind = LauncherKind.local
    wait: bool = True
    partition: str | None = None
    time_minutes: int = 240
    gpus_per_job: int = 0
    cpus_per_job: int = 2

    def check(self) -> None:
        """InputError naming the option, before anything is written."""
        if self.jobs is not None and self.jobs < 1:
            raise InputError(f"--jobs must be at least 1, got {self.jobs}")
        if self.time_minutes < 1:
            raise InputError(f"--time must be at least 1 (minutes), got {self.time_minutes}")
        if self.gpus_per_job < 0:
            raise InputError(f"--gpus-per-job must be at least 0, got {self.gpus_per_job}")
        if self.cpus_per_job < 1:
            raise InputError(f"--cpus-per-job must be at least 1, got {self.cpus_per_job}")
        if self.partition is not None and not self.partition.strip():
            raise InputError("--partition must not be empty")
        if self.launcher == LauncherKind.local and not self.wait:
            raise InputError("--no-wait needs --launcher slurm (local runs end with the command)")
        if self.launcher == LauncherKind.slurm:
            try:
                import submitit  # noqa: F401
            except ImportError as err:
                raise InputError("--launcher slurm needs submitit: pip install submitit") from err

    def make(self, out: Path, device: str | None, progress: bool, console: Any) -> Launcher:
        """The launcher these options describe (``out``: where submitit keeps its logs)."""
        if self.launcher == LauncherKind.slurm:
            import submitit

            executor = submitit.AutoExecutor(folder=str(out / ".submitit" / "%j"))
            params: dict[str, Any] = {
                "timeout_min": self.time_minutes,
                "gpus_per_node": self.gpus_per_job,
                "cpus_per_task": self.cpus_per_job,
                "tasks_per_node": 1,
                "nodes": 1,
            }
            if self.partition:
                params["slurm_partition"] = self.partition
            executor.update_parameters(**params)
            return SlurmLauncher(executor, wait=self.wait)
        gpus = visible_gpus(device)
        jobs = self.jobs if self.jobs is not None else max(1, gpus)
        return LocalLauncher(jobs, gpus, progress=progress and jobs == 1, console=console)


def visible_gpus(device: str | None) -> int:
    """How many CUDA devices the runs may spread over (0 on the CPU or a named cuda:N)."""
    if device is None or device in ("cpu",) or ":" in device:
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
