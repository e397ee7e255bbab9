"""Weight averaging for the exported weights: the run exports (and scores) an average of the weights it passed
through instead of the last ones. `ema`: an exponential moving average updated after every step from
`--weight-average-start` of training on; `swa`: the plain mean of the weights every `--weight-average-every`
steps from the start on (stochastic weight averaging, as late in training as the start says). The artifact holds
the same tensors, so its size and its computation are unchanged; evaluations during training score the live
weights, the final one the average."""

from dataclasses import dataclass

import torch
from torch import nn

from harness.errors import UserError
from harness.techniques import Technique, forget_generated, register
from harness.tune.space import Choice, Float


@dataclass
class WeightAverageConfig:
    weight_average_mode: str = "ema"     # ema or swa
    weight_average_decay: float = 0.99   # ema: the average keeps this much of itself per step
    weight_average_start: float = 0.5    # the fraction of training after which weights are averaged
    weight_average_every: int = 1        # swa: average every n-th step

    def check(self) -> None:
        if self.weight_average_mode not in ("ema", "swa"):
            raise UserError(f"--weight-average-mode must be ema or swa, got {self.weight_average_mode!r}")
        if not 0 < self.weight_average_decay < 1:
            raise UserError(f"--weight-average-decay must be between 0 and 1, got {self.weight_average_decay}")
        if not 0 <= self.weight_average_start < 1:
            raise UserError(f"--weight-average-start must be in [0, 1), got {self.weight_average_start}")
        if not 1 <= self.weight_average_every <= 10_000:
            raise UserError(f"--weight-average-every must be 1 to 10000, got {self.weight_average_every}")


class WeightAverage(Technique):
    def __init__(self, config, model, model_config):
        super().__init__(config, model, model_config)
        self.params = [p for p in model.parameters() if p.is_floating_point()]
        # The average lives in buffers (fp32, moved with the stack, restored with it after the warm-up, kept in a
        # resumable checkpoint) and is never exported: the model's own tensors are, once `finish` loads it.
        self.average = nn.Module()
        for i, p in enumerate(self.params):
            self.average.register_buffer(f"p{i}", p.detach().float().clone())
        self.average.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.active = False

    def modules(self):
        return {"average": self.average}

    def begin_step(self, model, step, progress):
        self.active = progress >= self.config.weight_average_start

    @torch.no_grad()
    def after_step(self, model, step):
        c = self.config
        if not self.active or (c.weight_average_mode == "swa" and step % c.weight_average_every):
            return
        n = int(self.average.count)
        # the first averaged step starts the average; then EMA or the running mean
        weight = 1.0 if n == 0 else (1.0 - c.weight_average_decay if c.weight_average_mode == "ema" else 1 / (n + 1))
        for i, p in enumerate(self.params):
            getattr(self.average, f"p{i}").lerp_(p.detach().float(), weight)
        self.average.count += 1

    @torch.no_grad()
    def finish(self, model):
        if int(self.average.count) == 0:  # training ended before the average started: the last weights stay
            return
        for i, p in enumerate(self.params):
            p.copy_(getattr(self.average, f"p{i}").to(p.dtype))
        self.average.count.zero_()
        forget_generated(model)


register("weight_average", config=WeightAverageConfig, cls=WeightAverage, doc=__doc__.split("\n\n")[0],
         presets={"ema": {"weight_average_mode": "ema"},
                  "swa": {"weight_average_mode": "swa", "weight_average_start": 0.7, "weight_average_every": 5}},
         space={"weight_average_mode": Choice("ema", "swa"), "weight_average_decay": Float(0.9, 0.999, log=True),
                "weight_average_start": Float(0.0, 0.9)}, order=90)
