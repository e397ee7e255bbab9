"""Attention-head diversity regularisation: in training, the heads of each attention layer are pushed to differ
by penalising the squared cosine similarity between their outputs at each position (the input of the layer's
output projection, head by head), averaged over pairs of heads. The outputs stand for the attention patterns:
with fused attention kernels (SDPA, flash) the patterns themselves are never materialised, and computing them
for a penalty would cost the quadratic memory those kernels avoid."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.errors import UserError
from harness.techniques import Technique, register
from harness.tune.space import Float


@dataclass
class HeadDiversityConfig:
    head_diversity_weight: float = 0.01  # times the mean squared cosine similarity, summed over layers

    def check(self) -> None:
        if not 0 <= self.head_diversity_weight <= 10:
            raise UserError(f"--head-diversity-weight must be 0 to 10, got {self.head_diversity_weight}")


class HeadDiversity(Technique):
    def __init__(self, config, model, model_config):
        super().__init__(config, model, model_config)
        self.seen: list[torch.Tensor] = []

    def attach(self, model):
        layers = [m for m in model.modules() if isinstance(getattr(m, "num_heads", None), int)
                  and isinstance(getattr(m, "proj", None), torch.nn.Module) and m.num_heads > 1]
        if not layers:
            raise UserError("technique head_diversity needs attention modules with `num_heads` (more than one) and "
                            "an output projection `proj`, as harness.model.CausalSelfAttention has")

        def record(heads):
            def hook(module, args):
                if module.training and torch.is_grad_enabled():
                    out = args[0]
                    per_head = F.normalize(out.reshape(*out.shape[:-1], heads, -1).float(), dim=-1)
                    gram = per_head @ per_head.transpose(-1, -2)  # (..., heads, heads)
                    off = 1.0 - torch.eye(heads, device=out.device)  # a product: no data-dependent shape
                    self.seen.append((gram.square() * off).sum() / (off.sum() * gram[..., 0, 0].numel()))
            return hook

        for layer in layers:
            layer.proj.register_forward_pre_hook(record(layer.num_heads))
        self.layers = len(layers)

    def inputs(self, x, y, progress):
        self.seen = []
        return x, y

    def loss_terms(self, model, x, y, logits, hidden, progress):
        seen, self.seen = self.seen, []
        if not seen:
            return {}
        # summed over layers, averaged over the step's forward passes (a curriculum may make several)
        return {"cosine": self.config.head_diversity_weight * torch.stack(seen).sum() * (self.layers / len(seen))}


register("head_diversity", config=HeadDiversityConfig, cls=HeadDiversity, doc=__doc__.split("\n\n")[0],
         space={"head_diversity_weight": Float(1e-3, 0.3, log=True)}, order=55)
