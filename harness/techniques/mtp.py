"""Multi-token prediction: from the last block's output, extra heads predict tokens t+2 … t+k through the
model's own output layer (tied embedding); their losses are added in training and the heads are never exported.
The source's intent: richer gradients per token at no inference cost."""

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from harness.errors import UserError
from harness.model import CastedLinear
from harness.techniques import Technique, register
from harness.tune.space import Float, Int


@dataclass
class MTPConfig:
    mtp_heads: int = 2        # predict t+2 … t+1+mtp_heads (1: only t+2)
    mtp_weight: float = 0.3   # each head's loss weight beside the next-token loss

    def check(self) -> None:
        if not 1 <= self.mtp_heads <= 8:
            raise UserError(f"--mtp-heads must be 1 to 8, got {self.mtp_heads}")
        if not 0 <= self.mtp_weight <= 10:
            raise UserError(f"--mtp-weight must be 0 to 10, got {self.mtp_weight}")


class MTP(Technique):
    needs_hidden = True

    def __init__(self, config, model, model_config):
        super().__init__(config, model, model_config)
        if not callable(getattr(model, "logits", None)):
            raise UserError("technique mtp needs the model's logits(hidden) method (harness.model.GPT has it)")
        dim = model_config.model_dim
        self.heads = nn.ModuleList(CastedLinear(dim, dim, zero_init=True) for _ in range(config.mtp_heads))

    def modules(self):
        return {"heads": self.heads}

    def loss_terms(self, model, x, y, logits, hidden, progress):
        last = hidden[-1]
        terms = {}
        for i, head in enumerate(self.heads):
            shift = i + 1  # head i predicts token t+2+i, which is y shifted left by i+1
            if shift >= y.size(1):
                break
            out = model.logits(last[:, :-shift] + head(last[:, :-shift])).float()
            terms[f"t+{shift + 1}"] = self.config.mtp_weight * F.cross_entropy(
                out.reshape(-1, out.size(-1)), y[:, shift:].reshape(-1))
        return terms


register("mtp", config=MTPConfig, cls=MTP, doc=__doc__.split("\n\n")[0],
         presets={"k2": {"mtp_heads": 1}, "k4": {"mtp_heads": 3}},
         space={"mtp_heads": Int(1, 4), "mtp_weight": Float(0.05, 1.0, log=True)}, order=30)
