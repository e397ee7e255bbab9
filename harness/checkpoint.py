"""Mid-run checkpoints: what a stopped run needs to continue exactly where it was, clock included.

Written only when a run is asked to stop (SLURM's time-limit or preemption warning, scancel, requeue) at a step
boundary, and removed once the resumed run has finished, so a budget's training time is charged once: the
resumed run continues with the wallclock it had left, the same data position and the same optimizer state.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from harness.data.shards import read_shard


def save(path: Path, model: torch.nn.Module, optimizers: list, loader, progress: dict) -> None:
    stream = loader.stream
    state = {"model": model.state_dict(), "optimizers": [opt.state_dict() for opt in optimizers],
             "loader": {"file_index": stream.file_index, "pos": stream.pos}, "progress": progress,
             "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path, model: torch.nn.Module, optimizers: list, loader) -> dict:
    """Restore model, optimizers, data position and RNGs in place; return the saved progress counters."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    for opt, saved in zip(optimizers, state["optimizers"]):
        opt.load_state_dict(saved)
    stream = loader.stream
    stream.file_index = state["loader"]["file_index"]
    stream.tokens, stream.pos = read_shard(stream.files[stream.file_index]), state["loader"]["pos"]
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return state["progress"]
