"""Learning-rate schedules beside the trainer's flat-then-warmdown: cosine, warmup-stable-decay and cyclic
cosine with restarts, each after an optional warm-up (linear, or exponential from 1/1000), with a floor. The
schedule runs on training progress (the larger of the clock's and the step cap's fractions), so under a
wallclock budget it ends when the clock does, whatever the machine's speed."""

import math
from dataclasses import dataclass

from harness.errors import UserError
from harness.techniques import Technique, register
from harness.tune.space import Choice, Float

SHAPES = ("warmdown", "cosine", "wsd", "cyclic")


@dataclass
class LRScheduleConfig:
    lr_schedule_shape: str = "cosine"     # warmdown (the trainer's), cosine, wsd, cyclic
    lr_schedule_warmup: float = 0.0       # fraction of training spent warming up
    lr_schedule_warmup_shape: str = "linear"  # linear or exp (from 1/1000 of the rate)
    lr_schedule_decay: float = 0.2        # wsd: the final fraction of training that decays
    lr_schedule_cycles: int = 3           # cyclic: cosine cycles, each restarting at the full rate
    lr_schedule_floor: float = 0.0        # the lowest multiplier, as a fraction of the rate

    def check(self) -> None:
        if self.lr_schedule_shape not in SHAPES:
            raise UserError(f"--lr-schedule-shape must be one of {', '.join(SHAPES)}, got {self.lr_schedule_shape!r}")
        if self.lr_schedule_warmup_shape not in ("linear", "exp"):
            raise UserError(f"--lr-schedule-warmup-shape must be linear or exp, got {self.lr_schedule_warmup_shape!r}")
        for name, value, high in (("warmup", self.lr_schedule_warmup, 0.5), ("decay", self.lr_schedule_decay, 1.0),
                                  ("floor", self.lr_schedule_floor, 1.0)):
            if not 0 <= value <= high:
                raise UserError(f"--lr-schedule-{name} must be 0 to {high}, got {value}")
        if not 1 <= self.lr_schedule_cycles <= 100:
            raise UserError(f"--lr-schedule-cycles must be 1 to 100, got {self.lr_schedule_cycles}")


def multiplier(c: LRScheduleConfig, progress: float, trainer_scale: float) -> float:
    """The learning-rate multiplier at `progress` (0 → 1) of training."""
    p = min(max(progress, 0.0), 1.0)
    if c.lr_schedule_shape == "warmdown":
        shape = trainer_scale
    elif c.lr_schedule_shape == "cosine":
        shape = 0.5 * (1 + math.cos(math.pi * p))
    elif c.lr_schedule_shape == "wsd":
        start = 1.0 - c.lr_schedule_decay
        shape = 1.0 if p < start else max(0.0, (1.0 - p) / max(c.lr_schedule_decay, 1e-9))
    else:  # cyclic: cosine within each cycle, restarting at the full rate
        within = (p * c.lr_schedule_cycles) % 1.0 if p < 1.0 else 1.0
        shape = 0.5 * (1 + math.cos(math.pi * within))
    scale = c.lr_schedule_floor + (1.0 - c.lr_schedule_floor) * shape
    if c.lr_schedule_warmup > 0 and p < c.lr_schedule_warmup:
        ramp = p / c.lr_schedule_warmup
        scale *= ramp if c.lr_schedule_warmup_shape == "linear" else 1e-3 ** (1.0 - ramp)
    return scale


class LRSchedule(Technique):
    def lr_scale(self, scale, step, progress):
        return multiplier(self.config, progress, scale)


register("lr_schedule", config=LRScheduleConfig, cls=LRSchedule, doc=__doc__.split("\n\n")[0],
         presets={"cosine": {"lr_schedule_shape": "cosine"}, "wsd": {"lr_schedule_shape": "wsd"},
                  "cyclic": {"lr_schedule_shape": "cyclic"},
                  "warmup": {"lr_schedule_shape": "warmdown", "lr_schedule_warmup": 0.05}},
         space={"lr_schedule_shape": Choice(*SHAPES), "lr_schedule_warmup": Float(0.0, 0.2),
                "lr_schedule_floor": Float(0.0, 0.2)}, order=1)
