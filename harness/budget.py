"""Budgets: the fixed, fair contract a run is scored under (a TOML file in budgets/).

A budget fixes the clock, the hardware it is meant for, the batch, the evaluation rules, the artifact cap and
the dataset, so two runs under the same budget are comparable whatever variant they train.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import REPO_ROOT
from harness.checks import SAFE_NAME, SAFE_NAME_RULE
from harness.config import read_toml
from harness.errors import UserError

BUDGETS_DIR = REPO_ROOT / "budgets"


@dataclass(frozen=True)
class Budget:
    name: str
    description: str
    # The clock: only training steps are charged against it.
    train_wallclock_seconds: float
    # Hardware the numbers are meant for: "cuda" or "cpu", and how many devices (ranks).
    device: str
    device_count: int
    # Tokens per optimizer step across all ranks; constant whatever the rank count.
    tokens_per_step: int
    # Tokens one rank feeds per forward pass: sets gradient accumulation, never the step's content.
    micro_batch_tokens: int
    seq_len: int
    dataset: str
    # Validation: the whole split (0) or the first N tokens, and a limit on each full evaluation pass.
    val_tokens_cap: int
    eval_seconds_limit: float
    val_every_seconds: float
    log_every_seconds: float
    artifact_cap_bytes: int
    # A hard cap on optimizer steps (the clock usually binds first) and untimed warm-up steps.
    max_steps: int = 20000
    warmup_steps: int = 20
    # Which code bytes count towards the cap: "submission" (the model's files and the harness modules that train
    # and score it, as the challenge counts its whole script) or "model" (the model's files only).
    code_bytes: str = "submission"
    # How long a variant's build() may take: it gets its config and the seed, never data, and work that improves
    # the model belongs in training, where the clock charges it.
    build_seconds_limit: float = 60.0
    # Config overrides for tiny budgets, e.g. a smaller model (applied before presets and CLI flags).
    model: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def budget_names() -> list[str]:
    return sorted(p.stem for p in BUDGETS_DIR.glob("*.toml"))


def load_budget(name_or_path: str) -> Budget:
    """Load a budget by name (budgets/NAME.toml) or by path; every problem is a one-line UserError."""
    path = Path(name_or_path)
    if not (name_or_path.endswith(".toml") or path.is_file()):
        path = BUDGETS_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise UserError(f"unknown budget {name_or_path!r}; known budgets: {', '.join(budget_names())} "
                            f"(or give a path to a .toml file)")
    raw = read_toml(path, "budget file")
    raw.setdefault("name", path.stem)
    known = {f.name for f in dataclasses.fields(Budget)} - {"source"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(f"budget file {path}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    missing = sorted(f.name for f in dataclasses.fields(Budget)
                     if f.name in known and f.name not in raw
                     and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if missing:
        raise UserError(f"budget file {path} is missing {', '.join(missing)}")
    try:
        budget = Budget(**raw, source=str(path))
    except TypeError as exc:
        raise UserError(f"budget file {path}: {exc}") from None
    check_budget(budget, path)
    return budget


def check_budget(b: Budget, path: Path) -> None:
    def bad(msg: str) -> UserError:
        return UserError(f"budget file {path}: {msg}")

    # name → (kinds, lowest allowed, whether the lowest itself is allowed, highest)
    numbers = {"train_wallclock_seconds": ((float, int), 0, False, 366 * 86400),
               "device_count": ((int,), 1, True, 4096), "tokens_per_step": ((int,), 1, True, 2**40),
               "micro_batch_tokens": ((int,), 1, True, 2**40), "seq_len": ((int,), 1, True, 1 << 20),
               "val_tokens_cap": ((int,), 0, True, 2**48), "eval_seconds_limit": ((float, int), 0, False, 366 * 86400),
               "val_every_seconds": ((float, int), 0, True, 366 * 86400),
               "log_every_seconds": ((float, int), 0, False, 366 * 86400),
               "artifact_cap_bytes": ((int,), 1, True, 2**48), "max_steps": ((int,), 1, True, 2**40),
               "warmup_steps": ((int,), 0, True, 1_000_000),
               "build_seconds_limit": ((float, int), 0, False, 86400)}
    for name, (kinds, low, inclusive, high) in numbers.items():
        value = getattr(b, name)
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
            raise bad(f"{name} must be a finite {'integer' if kinds == (int,) else 'number'}, got {value!r}")
        if (value < low if inclusive else value <= low) or value > high:
            bound = f"at least {low}" if inclusive else f"above {low}"
            raise bad(f"{name} = {value!r} is out of range; it must be {bound} and at most {high:,}")
    for name in ("name", "description", "dataset", "device", "code_bytes"):
        if not isinstance(getattr(b, name), str):
            raise bad(f"{name} must be a string, got {getattr(b, name)!r}")
    if not SAFE_NAME.fullmatch(b.name) or b.name.endswith("."):
        raise bad(f"name {b.name!r} must be {SAFE_NAME_RULE} (it is part of every run's folder name); set "
                  f"name = \"...\" in the file or rename it")
    if b.code_bytes not in ("submission", "model"):
        raise bad(f"code_bytes must be 'submission' or 'model', got {b.code_bytes!r}")
    if b.device not in ("cuda", "cpu"):
        raise bad(f"device must be 'cuda' or 'cpu', got {b.device!r}")
    if b.micro_batch_tokens % b.seq_len:
        raise bad(f"micro_batch_tokens ({b.micro_batch_tokens}) must be a positive multiple of seq_len ({b.seq_len})")
    if b.tokens_per_step % b.seq_len:
        raise bad(f"tokens_per_step ({b.tokens_per_step}) must be a multiple of seq_len ({b.seq_len})")
    if not isinstance(b.model, dict):
        raise bad("[model] must be a table of parameter overrides")


def with_dataset(budget: Budget, dataset: str) -> Budget:
    """The budget on another tokenization of its data (the tokenizer-size axis: `run --dataset fineweb_sp8192`):
    the same contract otherwise, and a vocabulary that follows the dataset's name unless a flag sets it. Scores
    stay comparable across tokenizers of the same text, since val_bpb counts bytes, not tokens."""
    from harness.data.names import builtin_name, builtin_vocab

    if not re.fullmatch(r"[A-Za-z0-9_]+", dataset):
        raise UserError(f"--dataset {dataset!r}: a dataset name such as builtin_sp4096 or fineweb_sp8192")
    vocab = builtin_vocab(dataset)
    if vocab is not None:
        dataset = builtin_name(vocab)  # builtin_sp1024 is builtin: the same runs, the same ids
    else:
        sized = re.fullmatch(r"fineweb(?:_sp(\d+))?", dataset)
        vocab = int(sized.group(1) or 1024) if sized else None
    model = {**budget.model, "vocab_size": vocab} if vocab else dict(budget.model)
    return dataclasses.replace(budget, dataset=dataset, model=model)
