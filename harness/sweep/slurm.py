"""SLURM options of `sweep` and `tune` (command line, or a sweep file's [slurm] table) → submitit's executor.

The same parameters build the executor that submits and the script `--dry-run` prints: submitit writes the
sbatch script in both cases, so what is shown is what would be submitted, on a machine without SLURM too.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError

GRES = re.compile(r"[A-Za-z][\w.-]*(:[\w.-]+)?:[0-9]+")
HOSTLIST = re.compile(r"[\w.\-\[\],]+")
SBATCH_KEY = re.compile(r"[a-z][a-z0-9-]*")
# Options the harness sets itself (an --sbatch line may not change them: the jobs' logs, signal and array
# depend on them) or that have a flag of their own.
OWN_FLAG = {"partition", "account", "qos", "cpus-per-task", "mem", "gres", "constraint", "exclude", "nodelist"}
MANAGED = {"array": "--max-concurrent", "output": None, "error": None, "open-mode": None, "signal": None,
           "job-name": None, "wckey": None, "time": "--margin-minutes", "nodes": "the budget",
           "ntasks-per-node": "the budget", "gpus-per-node": "the budget (or --gres)"}


@dataclass
class SlurmOptions:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    max_concurrent: int = 32
    margin_minutes: float = 10.0
    gres: str | None = None          # generic resources, name[:type]:count (gpu:h100:8)
    constraint: str | None = None    # node features (h100&ib)
    exclude: str | None = None       # nodes never to use (node[01-03])
    nodelist: str | None = None      # nodes to use
    sbatch: list[str] = field(default_factory=list)  # extra #SBATCH options, "--mail-type=END"
    setup: list[str] = field(default_factory=list)   # shell lines the job runs before the run, in order

    def __post_init__(self) -> None:
        for name in ("partition", "account", "qos", "constraint"):
            one_line(getattr(self, name), f"--{name}")
        if self.gres is not None and not all(GRES.fullmatch(g) for g in one_line(self.gres, "--gres").split(",")):
            raise UserError(f"--gres {self.gres!r} should be name[:type]:count, e.g. gpu:8 or gpu:h100:8")
        for name in ("exclude", "nodelist"):
            value = getattr(self, name)
            if value is not None and not HOSTLIST.fullmatch(value):
                raise UserError(f"--{name} {value!r} should be a non-empty SLURM node list, e.g. node[01-04],node07")
        for line in self.setup:
            if not one_line(line, "--setup").strip():
                raise UserError("--setup '' is empty; give a shell line such as 'module load cuda/12.4'")
        sbatch_parameters(self.sbatch)

    def gpus_in_gres(self) -> int | None:
        """How many GPUs --gres asks for per node (None when it names no GPUs)."""
        counts = [int(g.rsplit(":", 1)[1]) for g in (self.gres or "").split(",") if g.split(":")[0] == "gpu"]
        return sum(counts) if counts else None


def one_line(value: str | None, flag: str) -> str | None:
    if value is not None and (not value or "\n" in value or "\r" in value):
        raise UserError(f"{flag} {value!r} should be one non-empty line")
    return value


def sbatch_parameters(lines: list[str]) -> dict[str, Any]:
    """Extra sbatch options ("--mail-type=END", "--mail-user me@x", "--requeue") → submitit's
    additional_parameters ({"mail-type": "END", ...}; a bare flag is True, which submitit writes as the flag)."""
    out: dict[str, Any] = {}
    for line in lines:
        one_line(line, "--sbatch")
        try:
            words = shlex.split(line.removeprefix("#SBATCH").strip())
        except ValueError as exc:
            raise UserError(f"--sbatch {line!r}: {exc}") from None
        key, eq, value = words[0].partition("=") if words else ("", "", "")
        if len(words) == 2 and not eq and not words[1].startswith("-"):
            value, eq = words[1], "="
        elif len(words) != 1:
            key = ""
        name = key.removeprefix("--")
        if not key.startswith("--") or not SBATCH_KEY.fullmatch(name) or (eq and not value):
            raise UserError(f"--sbatch {line!r} is not an sbatch option; give one long option such as "
                            f"'--mail-type=END', '--mail-user me@example.org' or '--requeue'")
        if name in OWN_FLAG:
            raise UserError(f"--sbatch {line!r}: use --{'mem-gb' if name == 'mem' else name} for that")
        if name in MANAGED:
            by = MANAGED[name]
            raise UserError(f"--sbatch {line!r}: the harness sets --{name} itself"
                            + (f" (from {by})" if by else " (its logs and requeue depend on it)"))
        out[name] = value if eq else True
    return out


TABLE_KEYS = {f.name: f.type for f in dataclasses.fields(SlurmOptions)}


def from_table(table: Any, where: str) -> dict[str, Any]:
    """A sweep file's [slurm] table → SlurmOptions fields, each checked for its type."""
    if not isinstance(table, dict):
        raise UserError(f"{where}: [slurm] must be a table of options such as partition = \"gpu\"")
    out: dict[str, Any] = {}
    for key, value in table.items():
        kind = TABLE_KEYS.get(key)
        if kind is None:
            raise UserError(f"{where}: [slurm] has no option {key!r}; it takes {', '.join(sorted(TABLE_KEYS))}")
        if key in ("sbatch", "setup"):
            value = [value] if isinstance(value, str) else value
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif "int" in kind:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        elif "float" in kind:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
        else:
            ok = isinstance(value, str)
        if not ok:
            raise UserError(f"{where}: [slurm] {key} = {value!r} should be "
                            + ("a list of lines" if key in ("sbatch", "setup") else
                               "a whole number, at least 1" if "int" in kind else
                               "a number" if "float" in kind else "a string"))
        out[key] = value
    return out


def merge(table: dict[str, Any], given: dict[str, Any]) -> SlurmOptions:
    """The file's options, each replaced by the command line's where it gives one; --sbatch lines replace only
    the file's lines for the same option."""
    values = {**table, **{k: v for k, v in given.items() if v is not None and k != "sbatch"}}
    if given.get("sbatch"):
        mine = {k for line in given["sbatch"] for k in sbatch_parameters([line])}
        values["sbatch"] = [line for line in table.get("sbatch", [])
                            if not set(sbatch_parameters([line])) & mine] + list(given["sbatch"])
    return SlurmOptions(**values)


def executor_parameters(budget, slurm: SlurmOptions, timeout_min: int, name: str) -> dict[str, Any]:
    """submitit SlurmExecutor parameters for jobs of one budget: one task per device, its GPUs (or --gres), the
    user's options, and SIGUSR2 two minutes before the time limit."""
    from submitit.slurm.slurm import _convert_mem

    params: dict[str, Any] = {"time": timeout_min, "nodes": 1, "ntasks_per_node": budget.device_count,
                              "array_parallelism": slurm.max_concurrent, "signal_delay_s": 120, "job_name": name}
    gres_gpus = slurm.gpus_in_gres()
    if budget.device == "cuda":
        if gres_gpus is None:
            params["gpus_per_node"] = budget.device_count
        elif gres_gpus != budget.device_count:
            raise UserError(f"--gres {slurm.gres} asks for {gres_gpus} GPU(s) per node but budget {budget.name} "
                            f"trains on {budget.device_count}; give gpu[:type]:{budget.device_count}")
    if slurm.cpus_per_task:
        params["cpus_per_task"] = slurm.cpus_per_task
    if slurm.mem_gb:
        params["mem"] = _convert_mem(slurm.mem_gb)
    for key in ("partition", "account", "qos", "gres", "constraint", "exclude", "nodelist"):
        if getattr(slurm, key):
            params[key] = getattr(slurm, key)
    if slurm.sbatch:
        params["additional_parameters"] = sbatch_parameters(slurm.sbatch)
    if slurm.setup:
        params["setup"] = list(slurm.setup)
    return params


def executor(folder: Path, params: dict[str, Any]):
    import submitit

    ex = submitit.SlurmExecutor(folder=folder)
    ex.update_parameters(**params)
    return ex


def sbatch_script(folder: Path, params: dict[str, Any], count: int) -> str:
    """The sbatch script submitit writes for `count` jobs with these parameters (an array when more than one),
    made by submitit itself; needs no SLURM on this machine."""
    from submitit.slurm.slurm import SlurmExecutor

    class Preview(SlurmExecutor):
        @classmethod
        def affinity(cls) -> int:  # submitit checks for srun here; a preview submits nothing
            return 1

    ex = Preview(folder=folder)
    ex.update_parameters(**params)
    if count > 1:  # as submitit's array submission does
        ex.parameters["map_count"] = count
    return ex._make_submission_file_text(ex._submitit_command_str, "preview")
