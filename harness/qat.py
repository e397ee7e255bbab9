"""Late quantisation-aware training: the last stretch of training runs on the weights as the export stores them.

Once the learning-rate scale falls below `late_qat` (the records' LATE_QAT_THRESHOLD, e.g. 0.15), every step
swaps each weight the export scheme quantises for its round-tripped value (artifact.fake_quantize, the same code
path as the export), runs forward and backward there, and swaps the full-precision weight back before the
optimizer steps. The gradient taken at the quantised weight updates the full-precision one: the straight-through
estimator, for any family and without touching its code (the records put `w + (q(w) − w).detach()` in their
linear layers; this is the same update). Weights the scheme keeps in float (small and control tensors) are left
alone; a variant whose export hook stores a tensor by its own codec keeps that tensor as it is.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from harness import artifact, hooks


class LateQAT:
    def __init__(self, model: nn.Module, scheme: str, threshold: float):
        self.scheme, self.threshold = scheme, threshold
        params = dict(model.named_parameters())
        state = hooks.exported_state(model)
        coded = set(getattr(state, "codecs", {}))
        quantised = artifact.fake_quantize({k: v for k, v in state.items() if k not in coded}, scheme)
        self.params = {k: params[k] for k in quantised if k in params}  # tied or generated tensors: no parameter
        self.saved: dict[str, Tensor] = {}
        self.steps = 0

    def active(self, lr_scale: float) -> bool:
        return self.threshold > 0 and lr_scale < self.threshold and bool(self.params)

    @torch.no_grad()
    def quantise(self) -> None:
        """Put the export's round-tripped values in place of the weights (before forward)."""
        current = {k: p.detach() for k, p in self.params.items()}
        rounded = artifact.fake_quantize(current, self.scheme)
        for k, p in self.params.items():
            self.saved[k] = p.detach().clone()
            p.copy_(rounded[k].to(p.dtype))
        self.steps += 1

    @torch.no_grad()
    def restore(self) -> None:
        """The full-precision weights back (after backward, before the optimizer steps)."""
        for k, p in self.params.items():
            p.copy_(self.saved.pop(k))
