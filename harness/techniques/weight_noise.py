"""Noise in training only, on the weights: before each step's forward passes every weight matrix gets Gaussian
noise (relative to its own RMS), the gradients are taken there, and the clean weights are put back before the
optimizer step, so the model learns weights that tolerate perturbation (as the int8 export perturbs them).
Every rank restores exactly its clean weights, so data-parallel replicas stay identical whatever noise each drew."""

from dataclasses import dataclass

import torch

from harness.errors import UserError
from harness.techniques import Technique, forget_generated, register
from harness.tune.space import Float


@dataclass
class WeightNoiseConfig:
    weight_noise_std: float = 0.01  # noise std as a fraction of each matrix's RMS

    def check(self) -> None:
        if not 0 <= self.weight_noise_std <= 1:
            raise UserError(f"--weight-noise-std must be 0 to 1, got {self.weight_noise_std}")


class WeightNoise(Technique):
    def __init__(self, config, model, model_config):
        super().__init__(config, model, model_config)
        self.clean: list[tuple[torch.Tensor, torch.Tensor]] = []

    @torch.no_grad()
    def begin_step(self, model, step, progress):
        self.after_backward(model)  # a step that never reached its backward leaves no noise behind
        std = self.config.weight_noise_std
        if std == 0:
            return
        for p in model.parameters():
            if p.ndim >= 2 and p.requires_grad and p.is_floating_point():
                self.clean.append((p, p.detach().clone()))
                p.add_(torch.randn_like(p) * (std * p.float().pow(2).mean().sqrt().to(p.dtype)))

    @torch.no_grad()
    def after_backward(self, model):
        for p, clean in reversed(self.clean):
            p.copy_(clean)
        if self.clean:
            forget_generated(model)
        self.clean = []


register("weight_noise", config=WeightNoiseConfig, cls=WeightNoise, doc=__doc__.split("\n\n")[0],
         space={"weight_noise_std": Float(1e-3, 0.1, log=True)}, order=15)
