"""pause_tokens — learned pause vectors inserted after every few real tokens give the model extra computation slots.

After every `pause_interval` real tokens the model inserts `num_pauses` learned vectors (Goyal et al. 2023,
"Think before you speak: training language models with pause tokens"). They are inserted after the embedding,
so the vocabulary is unchanged, and they take real positions: RoPE and attention see the extended sequence.
The GPT runs on the extended sequence and returns logits only at the real positions, so pauses are never
scored and val_bpb counts the same tokens and bytes as the baseline. With `delay_readout`, a real token
followed by a pause group is predicted from the group's last pause instead of from itself. Stored: the
baseline's weights plus num_pauses × model_dim pause vectors; the gather indices are rebuilt from the config
(once, for sequences up to 65,536 tokens, outside any compiled graph). Costs num_pauses / pause_interval more
positions (p4i64: +6%, p8i32: +25%); expected effect: a small gain per token, to be weighed against the extra
compute under a wallclock budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from harness.config import param
from harness.model import GPT, GPTConfig, rms_norm
from harness.optim import ParamGroup, default_param_groups
from harness.registry import register


@dataclass(frozen=True)
class PauseConfig(GPTConfig):
    num_pauses: int = param(4, "learned pause vectors inserted per group", low=1, high=256)
    pause_interval: int = param(64, "a pause group follows every this many real tokens", low=1, high=65536)
    delay_readout: bool = param(False, "predict the token after a pause group from the group's last pause")


# The gather indices are built once, eagerly, for sequences up to this long and sliced per call: computed inside
# a compiled graph they come out wrong (torch 2.13's inductor miscompiles `arange(32) // 12` on the CPU).
MAX_SEQ_LEN = 65536


def pause_layout(seq_len: int, num_pauses: int, interval: int, delay_readout: bool) -> tuple[Tensor, Tensor]:
    """(source, readout) for seq_len real tokens. source[p] says what sits at extended position p: pause j as j,
    real token t as num_pauses + t (indices into [pauses; tokens]); readout[t] is the extended position whose
    state predicts token t + 1. The layout of a shorter sequence is a prefix of a longer one's."""
    t = torch.arange(seq_len)
    real_pos = t + num_pauses * (t // interval)
    # Without delayed readout, a group after the last real token would never be read, so it is left out.
    groups = (seq_len if delay_readout else seq_len - 1) // interval
    source = torch.zeros(seq_len + groups * num_pauses, dtype=torch.long)
    source[real_pos] = num_pauses + t
    g, j = torch.arange(groups), torch.arange(num_pauses)
    pause_pos = ((g + 1) * interval + g * num_pauses)[:, None] + j  # group g follows real token (g+1)·interval − 1
    source[pause_pos.reshape(-1)] = j.repeat(groups)
    readout = real_pos
    if delay_readout:
        readout = torch.where((t + 1) % interval == 0, real_pos + num_pauses, real_pos)
    return source, readout


class PauseGPT(GPT):
    def __init__(self, c: PauseConfig):
        super().__init__(c)
        self.pause = nn.Parameter(torch.randn(c.num_pauses, c.model_dim) * c.tied_embed_init_std)
        source, readout = pause_layout(MAX_SEQ_LEN, c.num_pauses, c.pause_interval, c.delay_readout)
        self.register_buffer("layout_source", source, persistent=False)
        self.register_buffer("layout_readout", readout, persistent=False)

    def forward(self, input_ids: Tensor) -> Tensor:
        bsz, seq_len = input_ids.shape
        c = self.config
        if seq_len > MAX_SEQ_LEN:
            raise ValueError(f"pause_tokens takes sequences of at most {MAX_SEQ_LEN} tokens, got {seq_len}")
        extended = seq_len + ((seq_len if c.delay_readout else seq_len - 1) // c.pause_interval) * c.num_pauses
        tokens = self.tok_emb(input_ids)
        pauses = self.pause.to(tokens.dtype).expand(bsz, -1, -1)
        x = rms_norm(torch.cat((pauses, tokens), dim=1).index_select(1, self.layout_source[:extended]))
        return self.logits(self.run_blocks(x).index_select(1, self.layout_readout[:seq_len]))

    def param_groups(self, c: PauseConfig) -> list[ParamGroup]:
        """The baseline's split, except that the pause vectors (embedding-like rows) train with the embedding's
        Adam rather than Muon."""
        return default_param_groups(self, c, ParamGroup("pause", [self.pause], "adam", c.tied_embed_lr))


register("pause_tokens", config=PauseConfig, build=PauseGPT, doc=__doc__,
         presets={"p4i64": {"num_pauses": 4, "pause_interval": 64},
                  "p8i32": {"num_pauses": 8, "pause_interval": 32}})
