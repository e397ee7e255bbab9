"""Token-level loss reweighting: the focal loss, (1 − p)^γ on each token's cross-entropy with p the model's
probability of the right token, so easy tokens count less; weights are normalised to a mean of 1 per batch.
Training only: val_loss and val_bpb are the plain cross-entropy, as always."""

from dataclasses import dataclass

import torch

from harness.errors import UserError
from harness.techniques import Technique, register
from harness.tune.space import Float


@dataclass
class FocalConfig:
    focal_gamma: float = 1.0

    def check(self) -> None:
        if not 0 <= self.focal_gamma <= 5:
            raise UserError(f"--focal-gamma must be 0 to 5, got {self.focal_gamma}")


class Focal(Technique):
    def token_weights(self, logits, y, progress):
        with torch.no_grad():
            p = torch.softmax(logits.float(), dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
            w = (1.0 - p).clamp_min(0).pow(self.config.focal_gamma)
            return w / w.mean().clamp_min(1e-8)


register("focal", config=FocalConfig, cls=Focal, doc=__doc__.split("\n\n")[0],
         space={"focal_gamma": Float(0.25, 3.0)}, order=60)
