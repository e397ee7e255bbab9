"""Span reconstruction early in training, fading out: spans of input tokens are replaced by random tokens, and
besides predicting the next token everywhere (its targets are never changed), the model is trained to
reconstruct each replaced token at its own position from the context around it that it may see, through a
training-only head and the model's own output layer. The corruption rate and the loss weight fade linearly to
zero at `--span-reconstruction-until` of training; after that the step is the plain one."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.errors import UserError
from harness.model import CastedLinear
from harness.techniques import Technique, register
from harness.tune.space import Float, Int


@dataclass
class SpanReconstructionConfig:
    span_reconstruction_rate: float = 0.15   # fraction of input tokens replaced at the start
    span_reconstruction_span: int = 3        # tokens per replaced span
    span_reconstruction_weight: float = 0.5  # the reconstruction loss's weight at the start
    span_reconstruction_until: float = 0.3   # the fraction of training after which it is off

    def check(self) -> None:
        if not 0 < self.span_reconstruction_rate < 1:
            raise UserError(f"--span-reconstruction-rate must be between 0 and 1, got {self.span_reconstruction_rate}")
        if not 1 <= self.span_reconstruction_span <= 64:
            raise UserError(f"--span-reconstruction-span must be 1 to 64, got {self.span_reconstruction_span}")
        if not 0 <= self.span_reconstruction_weight <= 10:
            raise UserError(f"--span-reconstruction-weight must be 0 to 10, got {self.span_reconstruction_weight}")
        if not 0 < self.span_reconstruction_until <= 1:
            raise UserError(f"--span-reconstruction-until must be in (0, 1], got {self.span_reconstruction_until}")


class SpanReconstruction(Technique):
    needs_hidden = True

    def __init__(self, config, model, model_config):
        super().__init__(config, model, model_config)
        if not callable(getattr(model, "logits", None)):
            raise UserError("technique span_reconstruction needs the model's logits(hidden) method")
        self.head = CastedLinear(model_config.model_dim, model_config.model_dim, zero_init=True)
        self.active = True  # python state, set between steps: a compiled graph recompiles once when it turns off
        self.original = self.replaced = None

    def modules(self):
        return {"head": self.head}

    def begin_step(self, model, step, progress):
        self.active = progress < self.config.span_reconstruction_until

    def recompiles(self):
        return 1  # off from `until` on

    def fade(self, progress):
        return (1.0 - progress / self.config.span_reconstruction_until).clamp_min(0.0)

    def inputs(self, x, y, progress):
        self.original = self.replaced = None
        if not self.active:
            return x, y
        c = self.config
        starts = torch.rand(x.shape, device=x.device) < c.span_reconstruction_rate * self.fade(progress) / \
            c.span_reconstruction_span
        replaced = starts.clone()
        for shift in range(1, c.span_reconstruction_span):  # each start covers the next span - 1 tokens too
            replaced[:, shift:] |= starts[:, :-shift]
        self.original, self.replaced = x, replaced
        return torch.where(replaced, torch.randint_like(x, self.model_config.vocab_size), x), y

    def loss_terms(self, model, x, y, logits, hidden, progress):
        if self.original is None:  # off: the head still gets a (zero) gradient, as data-parallel training needs
            return {"spans": 0.0 * self.head.weight.sum()}
        h = hidden[-1]
        out = model.logits(h + self.head(h)).float()
        per_token = F.cross_entropy(out.reshape(-1, out.size(-1)), self.original.reshape(-1), reduction="none")
        mask = self.replaced.reshape(-1).float()
        loss = (per_token * mask).sum() / mask.sum().clamp_min(1.0)
        return {"spans": self.config.span_reconstruction_weight * self.fade(progress) * loss}


register("span_reconstruction", config=SpanReconstructionConfig, cls=SpanReconstruction,
         doc=__doc__.split("\n\n")[0],
         space={"span_reconstruction_rate": Float(0.05, 0.3), "span_reconstruction_span": Int(1, 8),
                "span_reconstruction_until": Float(0.1, 0.6)}, order=9)  # before token replacement: clean targets
