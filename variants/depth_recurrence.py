"""depth_recurrence — chosen layers repeated in place, sharing weights: more depth for no more bytes.

The unique blocks are the baseline's; `--repeat-layers 3,4 --repeat-times 2` runs 0,1,2,3,3,4,4,5,…,8, and the
U-Net skips are rebuilt on that effective depth. Stored parameters stay at the baseline's count (plus the skip
weights of the deeper U-Net); compute per token grows with the effective depth. Option `per_pass`: give every
effective depth its own learned residual scale (`scale`) or an added input embedding (`embed`), so a repeated
block can behave differently on each pass (as in looped/recurrent-depth transformers). Expected: a small
val_bpb gain per step at equal bytes, paid for in step time.
"""

from dataclasses import dataclass

from torch import Tensor

from harness import recurrence
from harness.config import param
from harness.model import GPT, RecurrentGPTConfig
from harness.recurrence import StepVectors
from harness.registry import register


@dataclass(frozen=True)
class DepthRecurrenceConfig(RecurrentGPTConfig):
    repeat_layers: tuple[int, ...] = param((), "layer indices to repeat in place, e.g. 3,4 (empty: the two "
                                           "middle layers, 3,4 of 9)", low=0)
    repeat_times: int = param(2, "how many times each repeated layer runs", low=1, high=16)
    per_pass: str = param("none", "per-effective-depth parameters: none, a learned residual scale, or an "
                          "added input embedding", choices=("none", "scale", "embed"))

    def layer_order(self) -> list[int]:
        middle = (max(self.num_layers // 2 - 1, 0), self.num_layers // 2) if self.num_layers > 1 else (0,)
        chosen = self.repeat_layers or middle
        return [i for i in range(self.num_layers) for _ in range(self.repeat_times if i in chosen else 1)]


class DepthRecurrentGPT(GPT):
    def __init__(self, c: DepthRecurrenceConfig):
        super().__init__(c)
        self.per_pass = c.per_pass
        # One vector per effective depth (Adam trains them, see param_groups); a scale starts at 1, an embedding at 0.
        if c.per_pass != "none":
            self.pass_vectors = StepVectors(len(self.order), c.model_dim, init=1.0 if c.per_pass == "scale" else 0.0)

    def apply_block(self, depth: int, index: int, x: Tensor, x0: Tensor) -> Tensor:
        if self.per_pass == "embed":
            return self.blocks[index](self.pass_vectors(x, depth), x0)
        if self.per_pass == "scale":
            return x + self.pass_vectors.at(depth, x.dtype) * (self.blocks[index](x, x0) - x)
        return self.blocks[index](x, x0)

    param_groups = recurrence.param_groups


register("depth_recurrence", config=DepthRecurrenceConfig, build=DepthRecurrentGPT, doc=__doc__, presets={
    "r34x2": {"num_layers": 9, "repeat_layers": (3, 4), "repeat_times": 2},
    "r345x2": {"num_layers": 9, "repeat_layers": (3, 4, 5), "repeat_times": 2},
    "r34x3": {"num_layers": 9, "repeat_layers": (3, 4), "repeat_times": 3},
})
