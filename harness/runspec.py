"""What one run is: a variant's resolved config under a budget, its seed, where it records, and every departure
from the budget's contract (its overrides), which keep it apart from runs under the plain budget.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import precision
from harness.budget import Budget
from harness.config import as_dict, stable_hash
from harness.registry import Variant


@dataclass
class RunSpec:
    variant: Variant
    config: Any
    budget: Budget
    preset: str | None = None
    seed: int = 1337
    run_id: str | None = None
    results_dir: Path | None = None
    data_root: Path | None = None
    data_dir: Path | None = None
    tokenizer: Path | None = None
    device: str | None = None        # overrides the budget's device kind ("cpu" to run a CUDA budget here)
    compile: bool | None = None      # None: compile on CUDA, not on CPU
    precision: str | None = None     # None: the challenge's scheme on CUDA, fp32 on CPU (harness.precision)
    max_steps: int | None = None     # overrides the budget's step cap (tests, quick checks)
    preflight: bool = True           # the conformance checks before training (harness.conformance); off: unverified
    keep_weights: bool = False       # also save the trained full-precision weights (weights.pt), to export again
    tensorboard: Path | None = None  # also mirror the curve's scalars to TensorBoard event files in DIR/<run_id>/
    techniques: list = field(default_factory=list)  # [(TechniqueSpec, config)] in application order
    quiet: bool = False
    note: str | None = None          # free text kept in the record (what this run is for)
    resume: bool = False             # continue from the run folder's checkpoint with the clock it had left
    sweep: dict | None = None        # {"name", "params"}: the sweep this run belongs to, kept in the record
    study: dict | None = None        # {"name", "trial", "params", ...}: the tuning study this run is a trial of
    # Pruning: validate when this fraction of the clock (or of the step cap) is spent, and stop the run as
    # "pruned" if on_report(fraction, val_bpb, step) says so.
    report_fractions: tuple[float, ...] = ()
    on_report: Callable[[float, float, int], bool] | None = None
    command: list[str] = field(default_factory=lambda: list(sys.argv))

    def config_hash(self) -> str:
        budget = {k: v for k, v in self.budget.to_dict().items() if k != "source"}
        key = {"variant": self.variant.name, "config": hashed_config(as_dict(self.config)), "budget": budget,
               "seed": self.seed}
        if self.techniques:
            key["techniques"] = self.technique_record()
        departures = {o["name"]: o["effective"] for o in self.overrides()}
        return stable_hash({**key, "overrides": departures} if departures else key)

    def technique_record(self) -> list[dict]:
        return [{"name": spec.name, **({"preset": spec.preset} if spec.preset else {}), "config": as_dict(config)}
                for spec, config in self.techniques]

    def label(self) -> str:
        """The variant's name with its techniques and the export and eval schemes that are not the defaults, safe
        for a folder name: baseline-with-mtp-deep_supervision, baseline-gptq-zstd-sliding."""
        axes = "".join(f"-{value}" for value, default in ((getattr(self.config, "export", None), "int8-zlib"),
                                                          (getattr(self.config, "eval", None), "standard"))
                       if value is not None and value != default)
        names = [spec.name for spec, _ in self.techniques]
        if not names:
            return self.variant.name + axes
        shown = names[:3] if len(names) > 4 else names  # a folder name stays short; the record lists them all
        more = f"-and-{len(names) - len(shown)}-more" if len(shown) < len(names) else ""
        return f"{self.variant.name}{axes}-with-{'-'.join(shown)}{more}"

    def overrides(self, world_size: int | None = None) -> list[dict]:
        """Every departure from the budget's contract, with the budget's value and the effective one. A run with
        any never shares a leaderboard with runs under the plain budget."""
        b = self.budget
        device = self.device or b.device
        out = []

        def differs(name: str, budget_value, effective) -> None:
            if effective is not None and effective != budget_value:
                out.append({"name": name, "budget": budget_value, "effective": effective})

        differs("device", b.device, device)
        differs("device_count", b.device_count, world_size)
        differs("precision", precision.default_precision(b.device),
                self.precision or precision.default_precision(device))
        differs("compile", b.device == "cuda", self.compile if self.compile is not None else device == "cuda")
        differs("max_steps", b.max_steps, self.max_steps)
        differs("data_dir", b.dataset, str(self.data_dir) if self.data_dir is not None else None)
        differs("tokenizer", "the dataset's own", str(self.tokenizer) if self.tokenizer is not None else None)
        differs("preflight", "on", None if self.preflight else "off")
        return out


def hashed_config(config: dict) -> dict:
    """A config's fields as run ids and leaderboard rows key them: fields added later (model options, trainer
    options, export and eval schemes) are left out at their defaults, so adding them to every family kept the
    ids and rows of runs made before them; a run on another export or eval scheme gets a row of its own."""
    from harness.model import LATER_FIELDS, GPTConfig

    defaults = GPTConfig()
    return {k: v for k, v in config.items() if not (k in LATER_FIELDS and v == getattr(defaults, k))}
