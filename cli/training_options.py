"""The options of a training run on the command line, built from their one declaration in
``gumbel_analysis.spec`` (the run's fields and the loss catalogue): one spelling, one meaning,
one help, one check, for ``gumbel train`` and ``gumbel sweep`` alike."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer

from gumbel_analysis.spec import FIELD_OPTIONS, Option, available_losses, loss_entry
from gumbel_analysis.spec.losses import option_uses

#: The help panel of the loss options in ``gumbel train --help``.
LOSS_PANEL = "Loss options (each applies to the losses that declare it)"
#: Fields whose command-line value is a path, taken as the text given (click's Path would make
#: ``--out ""`` the current folder); ``data`` and ``weights`` are recorded resolved, so a run can
#: be evaluated or resumed from any folder.
_PATH_FIELDS = ("data", "weights", "out", "from_run")
_ABSOLUTE_FIELDS = ("data", "weights", "from_run")


def _choices(name: str, choices: tuple[str, ...]) -> type[StrEnum]:
    return StrEnum(f"{name.title().replace('_', '')}Choice", {c: c for c in choices})


def _python_type(name: str, option: Option) -> Any:
    if option.kind == "choice":
        return _choices(name, option.choices)
    return {"int": int, "float": float, "bool": bool, "str": str}[option.kind]


def field_option(name: str, help: str | None = None) -> Any:
    """``Annotated[T | None, typer.Option(...)]`` for the run field ``name``: its flag, type,
    choices and help from the spec (``help`` replaces the help where a command means more).
    ``None`` means "not given": the config file's, the saved run's or the preset's value."""
    option = FIELD_OPTIONS[name]
    flag = option.cli_flag
    decls = [f"{flag}/--no-{flag[2:]}"] if option.kind == "bool" else [flag]
    kind = _python_type(name, option)
    metavar = "PATH" if name in _PATH_FIELDS else None
    return Annotated[kind | None, typer.Option(*decls, help=help or option.help, metavar=metavar)]


def given_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """The run fields among a command's parameters that were given (not None), as the spec's
    values: paths and choices as text."""
    given = {}
    for name, value in values.items():
        if name in FIELD_OPTIONS and value is not None:
            given[name] = str(value) if isinstance(value, Path | StrEnum) else value
            if name in _ABSOLUTE_FIELDS and given[name]:
                given[name] = str(Path(given[name]).resolve())
    return given


def check_device_available(device: str | None, amp: bool | None = None) -> None:
    """Before anything is written: a ``--device`` this machine has (CUDA asked for where there is
    none is one line), and ``--amp`` where that device can run it. Imports torch only when one
    is given."""
    if device is not None or amp:
        from gumbel_analysis.engine.setup import check_mixed_precision, pick_device

        dev = pick_device(FIELD_OPTIONS["device"].check(device or "auto"))
        check_mixed_precision(amp, dev)


def with_loss_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` with ``--loss``, ``--activation`` and every declared loss option of the
    catalogue appended to its signature; they reach it as ``**loss_values``."""
    hints = get_type_hints(command, include_extras=True)
    params = [
        p.replace(annotation=hints[p.name], kind=p.KEYWORD_ONLY)
        for p in inspect.signature(command).parameters.values()
        if p.kind is not p.VAR_KEYWORD
    ]
    loss_params = [_keyword("loss", _loss_option()), _keyword("activation", _activation_option())]
    loss_params += [_keyword(use.option.name, _declared_option(use)) for use in option_uses()]
    signature = inspect.Signature([*params, *loss_params])

    def wrapper(**kwargs: Any) -> Any:
        return command(**kwargs)

    wrapper.__name__, wrapper.__doc__ = command.__name__, command.__doc__
    wrapper.__signature__ = signature  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    return wrapper


def _keyword(name: str, annotation: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
    )


def _loss_option() -> Any:
    kind = _choices("loss", tuple(available_losses()))
    help = FIELD_OPTIONS["loss"].help + " Default: gumbel."
    return Annotated[kind | None, typer.Option("--loss", help=help)]


def _activation_option() -> Any:
    takes: dict[str, list[str]] = {}
    for name in available_losses():
        entry = loss_entry(name)
        if not entry.fixed:  # aliases fix theirs
            takes.setdefault("|".join(entry.activations), []).append(name)
    text = "; ".join(f"{a} for {', '.join(n)}" for a, n in takes.items())
    kind = _choices("activation", FIELD_OPTIONS["activation"].choices)
    help = f"{text}. Default: the loss's first."
    return Annotated[kind | None, typer.Option("--activation", help=help)]


def _declared_option(use: Any) -> Any:
    option = use.option
    kind: Any = {"float": float, "int": int, "bool": bool, "str": str}.get(option.kind)
    if option.kind == "choice":
        kind = _choices(option.name, option.choices)
    text = f"{option.help} [{', '.join(use.losses)}]"
    if len(use.by_default) > 1:
        text += " Default: " + "; ".join(f"{d} ({', '.join(n)})" for d, n in use.by_default.items())
    elif option.default is not None:
        text += f" Default: {option.default}."
    flags: tuple[str, ...] = (option.cli_flag, *option.aliases)
    if option.kind == "bool":  # --loce-mfs/--no-loce-mfs, as the run's own switches
        flags = tuple(f"{f}/--no-{f[2:]}" for f in flags)
    return Annotated[kind | None, typer.Option(*flags, help=text, rich_help_panel=LOSS_PANEL)]


DataOption = field_option("data")
PresetOption = field_option("preset", "Model preset. Default: tiny.")
SamplerOption = field_option("sampler")
EpochsOption = field_option("epochs")
ScheduleOption = field_option("schedule")
BatchSizeOption = field_option("batch_size")
DeviceOption = field_option("device")
AmpOption = field_option("amp")
WorkersOption = field_option("workers")
MaxItersOption = field_option("max_iters")
CheckpointEveryOption = field_option("checkpoint_every")
GradLogOption = field_option("grad_log")


# --- where the runs of a sweep or a reproduce go (gumbel_analysis.experiments.launch) ----------

_LAUNCH_PANEL = "Parallel and cluster execution"
JobsOption = Annotated[
    int | None,
    typer.Option(
        "--jobs",
        help="Runs trained at a time on this machine, each with its share of the CPU cores "
        "(cores // N threads) or, on CUDA, one visible GPU each. Default: 1 on the CPU, one "
        "per visible GPU on CUDA.",
        rich_help_panel=_LAUNCH_PANEL,
    ),
]


class LauncherChoice(StrEnum):
    local = "local"
    slurm = "slurm"


LauncherOption = Annotated[
    LauncherChoice,
    typer.Option(
        "--launcher",
        help="local: on this machine (--jobs); slurm: every run a SLURM job, through submitit.",
        rich_help_panel=_LAUNCH_PANEL,
    ),
]
WaitOption = Annotated[
    bool,
    typer.Option(
        "--wait/--no-wait",
        help="slurm: wait for the jobs (with a progress bar), then write the results; "
        "--no-wait returns once they are submitted (rerun the command to collect them).",
        rich_help_panel=_LAUNCH_PANEL,
    ),
]
PartitionOption = Annotated[
    str | None,
    typer.Option("--partition", help="slurm: the partition.", rich_help_panel=_LAUNCH_PANEL),
]
TimeOption = Annotated[
    int,
    typer.Option(
        "--time", help="slurm: each job's time limit, in minutes.", rich_help_panel=_LAUNCH_PANEL
    ),
]
GpusPerJobOption = Annotated[
    int,
    typer.Option("--gpus-per-job", help="slurm: GPUs per job.", rich_help_panel=_LAUNCH_PANEL),
]
CpusPerJobOption = Annotated[
    int,
    typer.Option("--cpus-per-job", help="slurm: CPU cores per job.", rich_help_panel=_LAUNCH_PANEL),
]
