"""Recurrent refinement in training only: a chosen block is applied twice while training (its output fed back
into it) and once at inference, so training spends more compute on the same stored weights."""

from dataclasses import dataclass

from torch import nn

from harness.errors import UserError
from harness.techniques import Technique, register


@dataclass
class RefineTwiceConfig:
    refine_twice_layer: int = -1  # index into the model's blocks (negative: from the end)


class RefineTwice(Technique):
    def attach(self, model):
        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, nn.ModuleList) or not len(blocks):
            raise UserError("technique refine_twice needs the model's `blocks` list")
        i = self.config.refine_twice_layer
        if not -len(blocks) <= i < len(blocks):
            raise UserError(f"--refine-twice-layer {i} is outside the model's {len(blocks)} blocks")

        def again(module, args, output):
            if not module.training:
                return None
            return module.forward(output, *args[1:])  # forward, not __call__: the hook runs once

        blocks[i].register_forward_hook(again)


register("refine_twice", config=RefineTwiceConfig, cls=RefineTwice, doc=__doc__.split("\n\n")[0], order=20)
