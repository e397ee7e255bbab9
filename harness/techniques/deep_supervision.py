"""Layer-wise deep supervision: every block's output but the last is also scored through the model's own output
layer (the tied embedding: no new weights), with a weight that fades linearly to zero over training."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.errors import UserError
from harness.techniques import Technique, register
from harness.tune.space import Float


@dataclass
class DeepSupervisionConfig:
    deep_supervision_weight: float = 0.3  # at the start of training, spread over the intermediate outputs

    def check(self) -> None:
        if not 0 <= self.deep_supervision_weight <= 10:
            raise UserError(f"--deep-supervision-weight must be 0 to 10, got {self.deep_supervision_weight}")


class DeepSupervision(Technique):
    needs_hidden = True

    def __init__(self, config, model, model_config):
        super().__init__(config, model, model_config)
        if not callable(getattr(model, "logits", None)):
            raise UserError("technique deep_supervision needs the model's logits(hidden) method")

    def loss_terms(self, model, x, y, logits, hidden, progress):
        inner = hidden[:-1]
        if not inner:
            return {}
        weight = self.config.deep_supervision_weight * (1.0 - progress) / len(inner)
        total = torch.zeros((), device=y.device)
        for h in inner:
            out = model.logits(h).float()
            total = total + F.cross_entropy(out.reshape(-1, out.size(-1)), y.reshape(-1))
        return {"layers": weight * total}


register("deep_supervision", config=DeepSupervisionConfig, cls=DeepSupervision, doc=__doc__.split("\n\n")[0],
         space={"deep_supervision_weight": Float(0.05, 1.0, log=True)}, order=40)
