"""Gradient checkpointing, memory for compute: in training, each block's activations are not kept for the
backward pass but recomputed there (torch.utils.checkpoint, non-reentrant, which torch.compile traces). The
numbers are the same; each step costs about one more forward of the blocks, and the clock charges it. For a
model or batch that does not fit otherwise."""

from dataclasses import dataclass

from torch import nn
from torch.utils.checkpoint import checkpoint

from harness.errors import UserError
from harness.techniques import Technique, register


@dataclass
class GradCheckpointConfig:
    grad_checkpoint_every: int = 1  # checkpoint every n-th block (1: all)

    def check(self) -> None:
        if not 1 <= self.grad_checkpoint_every <= 64:
            raise UserError(f"--grad-checkpoint-every must be 1 to 64, got {self.grad_checkpoint_every}")


class GradCheckpoint(Technique):
    def attach(self, model):
        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, nn.ModuleList) or not len(blocks):
            raise UserError("technique grad_checkpoint needs the model's `blocks` list")
        for i, block in enumerate(blocks):
            if i % self.config.grad_checkpoint_every == 0:
                block.forward = _checkpointed(block, block.forward)  # an instance attribute: the state is unchanged


def _checkpointed(block: nn.Module, forward):
    def run(*args, **kwargs):
        if block.training:
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)
    return run


INSIDE_BLOCKS = ("records activations inside the blocks: checkpointing recomputes them in the backward pass, "
                 "and torch.compile cannot trace that side effect inside a checkpointed region")
register("grad_checkpoint", config=GradCheckpointConfig, cls=GradCheckpoint, doc=__doc__.split("\n\n")[0],
         order=95, incompatible={"activation_l1": f"activation_l1 {INSIDE_BLOCKS}",
                                 "head_diversity": f"head_diversity {INSIDE_BLOCKS}"})
