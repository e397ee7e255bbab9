"""A contrastive loss on hidden states (SimCTG's token-level form, Su et al. 2022): the last block's outputs of
different positions in a sequence are pushed apart, max(0, margin − 1 + cos(h_i, h_j)) averaged over pairs, so
the representations stay discriminative instead of collapsing together. Only a strided sample of positions is
compared (the cost grows with its square); nothing is added to the model."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.errors import UserError
from harness.techniques import Technique, register
from harness.tune.space import Float


@dataclass
class ContrastiveConfig:
    contrastive_weight: float = 0.1
    contrastive_margin: float = 0.5
    contrastive_positions: int = 256  # at most this many positions per sequence, evenly strided

    def check(self) -> None:
        if not 0 <= self.contrastive_weight <= 10:
            raise UserError(f"--contrastive-weight must be 0 to 10, got {self.contrastive_weight}")
        if not 0 <= self.contrastive_margin <= 2:
            raise UserError(f"--contrastive-margin must be 0 to 2, got {self.contrastive_margin}")
        if not 2 <= self.contrastive_positions <= 4096:
            raise UserError(f"--contrastive-positions must be 2 to 4096, got {self.contrastive_positions}")


class Contrastive(Technique):
    needs_hidden = True

    def loss_terms(self, model, x, y, logits, hidden, progress):
        h = hidden[-1]
        stride = -(-h.size(1) // self.config.contrastive_positions)  # ceil: at most that many positions
        h = F.normalize(h[:, ::stride].float(), dim=-1)
        n = h.size(1)
        if n < 2:
            return {}
        sim = h @ h.transpose(1, 2)  # (batch, n, n) cosine similarities
        off = 1.0 - torch.eye(n, device=h.device)  # a product, not a boolean index: no data-dependent shape
        loss = (F.relu(self.config.contrastive_margin - 1.0 + sim) * off).sum() / (off.sum() * h.size(0))
        return {"pairs": self.config.contrastive_weight * loss}


register("contrastive", config=ContrastiveConfig, cls=Contrastive, doc=__doc__.split("\n\n")[0],
         space={"contrastive_weight": Float(0.01, 1.0, log=True), "contrastive_margin": Float(0.1, 1.0)}, order=34)
