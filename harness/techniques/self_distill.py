"""Self-distillation with the same model. `ema`: a teacher that is an exponential moving average of the model
itself (frozen, in evaluation mode, never exported) gives soft targets on the same batch, and the model is also
trained to match them (KL at a temperature, from `--self-distill-start` of training on). `layers`: the final
layer teaches the earlier ones: each block's output but the last, through the model's own output layer, is
trained toward the final layer's detached distribution. The teacher costs a forward pass per step; the clock
charges it."""

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import UserError
from harness.techniques import Technique, forget_generated, register
from harness.tune.space import Choice, Float


@dataclass
class SelfDistillConfig:
    self_distill_mode: str = "ema"         # ema (an EMA teacher) or layers (the last layer teaches the others)
    self_distill_weight: float = 0.5
    self_distill_temperature: float = 2.0
    self_distill_decay: float = 0.99       # ema: the teacher keeps this much of itself per step
    self_distill_start: float = 0.1        # ema: the fraction of training before the teacher is listened to

    def check(self) -> None:
        if self.self_distill_mode not in ("ema", "layers"):
            raise UserError(f"--self-distill-mode must be ema or layers, got {self.self_distill_mode!r}")
        if not 0 <= self.self_distill_weight <= 10:
            raise UserError(f"--self-distill-weight must be 0 to 10, got {self.self_distill_weight}")
        if not 0.1 <= self.self_distill_temperature <= 10:
            raise UserError(f"--self-distill-temperature must be 0.1 to 10, got {self.self_distill_temperature}")
        if not 0 < self.self_distill_decay < 1:
            raise UserError(f"--self-distill-decay must be between 0 and 1, got {self.self_distill_decay}")
        if not 0 <= self.self_distill_start < 1:
            raise UserError(f"--self-distill-start must be in [0, 1), got {self.self_distill_start}")


class Frozen(nn.Module):
    """Holds the teacher: no gradients, always in evaluation mode (train() on the stack leaves it there)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True):
        return super().train(False)


def kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) at a temperature, times T² so the gradient's scale does not depend on it."""
    s = F.log_softmax(student.float() / temperature, dim=-1).reshape(-1, student.size(-1))
    t = F.log_softmax(teacher.float() / temperature, dim=-1).reshape(-1, teacher.size(-1))
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2


class SelfDistill(Technique):
    def __init__(self, config, model, model_config):
        super().__init__(config, model, model_config)
        self.needs_hidden = config.self_distill_mode == "layers"
        self.teacher = None
        if config.self_distill_mode == "ema":
            self.teacher = Frozen(copy.deepcopy(model))  # before any technique's hooks are attached
            # the average in fp32 (a bf16 weight would drop updates smaller than its rounding step)
            for i, p in enumerate(self.teacher.model.parameters()):
                self.teacher.register_buffer(f"average{i}", p.detach().float().clone())
        elif not callable(getattr(model, "logits", None)):
            raise UserError("technique self_distill (layers) needs the model's logits(hidden) method")
        self.listening = False

    def modules(self):
        return {"teacher": self.teacher} if self.teacher is not None else {}

    def begin_step(self, model, step, progress):
        self.listening = progress >= self.config.self_distill_start

    def recompiles(self):
        return 1 if self.teacher is not None else 0  # the teacher is listened to from its start on

    @torch.no_grad()
    def after_step(self, model, step):
        if self.teacher is None:
            return
        for i, (t, s) in enumerate(zip(self.teacher.model.parameters(), model.parameters())):
            average = getattr(self.teacher, f"average{i}")
            average.lerp_(s.detach().float(), 1.0 - self.config.self_distill_decay)
            t.copy_(average.to(t.dtype))
        forget_generated(self.teacher.model)

    def loss_terms(self, model, x, y, logits, hidden, progress):
        c = self.config
        if self.teacher is not None:
            if not self.listening:
                return {}
            with torch.no_grad():
                out = self.teacher.model(x)
                target = out[0] if isinstance(out, tuple) else out
            return {"ema": c.self_distill_weight * kl(logits, target, c.self_distill_temperature)}
        inner = hidden[:-1]
        if not inner:
            return {}
        target = logits.detach()
        total = sum(kl(model.logits(h), target, c.self_distill_temperature) for h in inner)
        return {"layers": c.self_distill_weight * total / len(inner)}


register("self_distill", config=SelfDistillConfig, cls=SelfDistill, doc=__doc__.split("\n\n")[0],
         presets={"ema": {"self_distill_mode": "ema"}, "layers": {"self_distill_mode": "layers"}},
         space={"self_distill_mode": Choice("ema", "layers"), "self_distill_weight": Float(0.05, 2.0, log=True),
                "self_distill_temperature": Float(1.0, 4.0)}, order=70)
