"""Representation sparsity: an L1 penalty on the MLPs' hidden activations (the input of each MLP's output
projection) in training, pushing most of them to zero; nothing changes at inference."""

from dataclasses import dataclass

import torch

from harness.errors import UserError
from harness.model import MLP
from harness.techniques import Technique, register
from harness.tune.space import Float


@dataclass
class ActivationL1Config:
    activation_l1_weight: float = 1e-3  # times the mean absolute activation, summed over the MLPs

    def check(self) -> None:
        if not 0 <= self.activation_l1_weight <= 1:
            raise UserError(f"--activation-l1-weight must be 0 to 1, got {self.activation_l1_weight}")


class ActivationL1(Technique):
    def __init__(self, config, model, model_config):
        super().__init__(config, model, model_config)
        self.seen: list[torch.Tensor] = []

    def attach(self, model):
        mlps = [m for m in model.modules() if isinstance(m, MLP)]
        if not mlps:
            raise UserError("technique activation_l1 needs the model's MLPs (harness.model.MLP)")

        def record(module, args):
            if module.training and torch.is_grad_enabled():
                self.seen.append(args[0].float().abs().mean())

        for mlp in mlps:
            mlp.proj.register_forward_pre_hook(record)
        self.layers = len(mlps)

    def inputs(self, x, y, progress):
        self.seen = []  # only this step's forward counts (a forward outside the scorer leaves nothing behind)
        return x, y

    def loss_terms(self, model, x, y, logits, hidden, progress):
        seen, self.seen = self.seen, []
        if not seen:
            return {}
        # summed over the MLPs, averaged over the step's forward passes (a curriculum may make several)
        return {"l1": self.config.activation_l1_weight * torch.stack(seen).sum() * (self.layers / len(seen))}


register("activation_l1", config=ActivationL1Config, cls=ActivationL1, doc=__doc__.split("\n\n")[0],
         space={"activation_l1_weight": Float(1e-5, 1e-2, log=True)},
         order=50)
