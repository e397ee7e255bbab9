"""shared — partial parameter sharing across depth: groups of layers share one MLP and/or one attention.

Cross-layer sharing as in ALBERT (Lan et al. 2019, arXiv 1909.11942), made partial as in "Lessons on Parameter
Sharing across Layers in Transformers" (Takase & Kiyono 2021, arXiv 2104.06022): `mlp_share_every k` gives
each group of k consecutive layers one MLP, `attn_share_every m` each group of m one attention (its q gain
included); 1 shares nothing, 0 (or ≥ --num-layers) shares one module across all layers. Every layer keeps its
own Block: the baseline's norms have no learned gain, so what stays per layer (the catalogue's "keep the norms
unique") is attn_scale, mlp_scale and resid_mix, enough for a shared module to act differently at each depth;
the U-Net skips are the baseline's. `share_pattern cycle` assigns modules round-robin instead (9 layers, k = 2:
modules 0..4 then 0..3 rather than 0,0,1,1,…), Takase & Kiyono's "cycle" against their consecutive "sequence".

Stored once: the first layer of a group owns its module (state-dict names as the baseline's), the others
reach it through a `SharedUse` that holds a plain reference, so the state dict, the artifact and the stored
count hold each shared tensor once; each use adds its gradient to the one parameter, which Muon steps once.

Stored at 9 × 512 (baseline 17,059,912; an MLP is 1,048,576 numbers, an attention 786,440): the default
(MLP per pair of layers, 5 MLPs) 12,865,608, 4.19M saved; `albert` (one attention and one MLP for all nine
layers) 2,379,784, 14.68M saved; `wide` (model_dim 640, one MLP per three layers) 16,655,432 spends the
saving on width. Elsewhere, it buys depth (`--num-layers 12`: 16,280,672, 1.31M a layer with the pairwise MLP),
a larger vocabulary (the tokenizer axis), or a wider MLP (`--mlp-share-every 3 --mlp-mult 6` stores exactly the
baseline's count). Compute per token equals the baseline's for the default and albert (sharing saves bytes,
not FLOPs); wide's block matmuls cost ≈1.56× the baseline's (its attention scores and head 1.25×), 12 layers
1.33×. On a GPU every use runs the same kernels as an unshared layer, so step time tracks FLOPs; Muon
orthogonalises fewer matrices, a small saving. Expected: the default close to the baseline at three quarters
of its bytes; albert clearly worse; wide better per step, and slower.
"""

from dataclasses import dataclass

from torch import nn

from harness.config import param
from harness.model import GPT, Block, GPTConfig
from harness.registry import register
from harness.tune.space import Choice


@dataclass(frozen=True)
class SharedConfig(GPTConfig):
    mlp_share_every: int = param(2, "layers sharing one MLP (1: none shared; 0 or >= --num-layers: one MLP for "
                                 "all layers)", low=0, high=256)
    attn_share_every: int = param(1, "layers sharing one attention (1: none shared; 0 or >= --num-layers: one "
                                  "for all layers)", low=0, high=256)
    share_pattern: str = param("block", "block: consecutive layers share a module; cycle: layer i uses module "
                               "i mod (number of modules)", choices=("block", "cycle"))

    def owners(self, every: int) -> list[int]:
        """For each layer, the layer that owns the module it uses: always itself or an earlier layer."""
        layers = self.num_layers
        k = every if 0 < every < layers else layers
        if self.share_pattern == "cycle":
            modules = -(-layers // k)
            return [i % modules for i in range(layers)]
        return [i - i % k for i in range(layers)]


class SharedUse(nn.Module):
    """A module used here but owned by an earlier block. The reference sits in a tuple, not as a child, so the
    state dict lists the module's tensors once, under its owner, and the artifact stores them once."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.target = (module,)

    def forward(self, *args, **kwargs):
        return self.target[0](*args, **kwargs)


class SharedGPT(GPT):
    def __init__(self, c: SharedConfig):
        attn_owner, mlp_owner = c.owners(c.attn_share_every), c.owners(c.mlp_share_every)
        blocks: list[Block] = []
        for i in range(c.num_layers):
            # An owner lets Block build its own attention / MLP, so the model options Block knows apply here too.
            attn = SharedUse(blocks[attn_owner[i]].attn) if attn_owner[i] != i else None
            mlp = SharedUse(blocks[mlp_owner[i]].mlp) if mlp_owner[i] != i else None
            blocks.append(Block(c, attn=attn, mlp=mlp))
        super().__init__(c, blocks=blocks)


register("shared", config=SharedConfig, build=SharedGPT, doc=__doc__, presets={
    "albert": {"mlp_share_every": 0, "attn_share_every": 0},  # one attention and one MLP for every layer
    "wide": {"model_dim": 640, "mlp_share_every": 3},  # 16.66M stored: the default's saving spent on width
}, space={"mlp_share_every": Choice(1, 2, 3, 0), "attn_share_every": Choice(1, 2, 3, 0),
          "share_pattern": Choice("block", "cycle")})
