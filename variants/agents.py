"""agents — a speaker transformer sends a small message; the listener predicts the next token from it and recent tokens.

Two communicating networks with a narrow channel between them, in the spirit of emergent-communication
referential games (Lazaridou et al. 2017; Havrylov & Titov 2017) applied to language modelling. The speaker
is the baseline's causal U-Net of blocks over the token embeddings; its states are projected to
`message_dim` channels, each pooled causally by a learned exponential moving average (per-channel decay,
timescales from ~1 to ~256 tokens at init, computed in chunks with no loop over positions). The listener sees
only the message at t and the embeddings of tokens t−listen_window+1..t (zero-padded at the start): a relu²
MLP maps them into the tied embedding's space, and the soft-capped tied head gives the logits. Stored: the
baseline's blocks (seven by default, to stay under the cap once trained) plus the message
projection, the decays and the listener MLP; nothing is regenerated.
Expected: worse than the baseline (the bottleneck is the point), the gap measuring how much of next-token
prediction a 64-number summary of the context can carry beyond the last few tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import param
from harness.model import GPT, CastedLinear, GPTConfig, rms_norm
from harness.registry import register

EMA_CHUNK = 64  # positions per chunk of the EMA scan: (d, C, C) and (d, T/C, T/C) decay matrices stay small


@dataclass(frozen=True)
class AgentsConfig(GPTConfig):
    # Seven speaker blocks, not nine: the listener adds ~2.7M numbers and nine blocks would end over the cap.
    num_layers: int = param(7, "speaker transformer blocks", low=1, high=256)
    message_dim: int = param(64, "width of the message from speaker to listener", low=1, high=16384)
    listen_window: int = param(4, "real tokens the listener sees directly: t−window+1..t", low=1, high=64)
    listener_hidden: int = param(0, "listener MLP width (0: 2 × model_dim)", low=0, high=65536)


def causal_ema(u: Tensor, log_decay: Tensor) -> Tensor:
    """m_t = a·m_{t−1} + (1 − a)·u_t per channel (m_{−1} = 0) for u (B, T, d) and log a (d,), without a loop over
    T: exact within each chunk through a (d, C, C) decay matrix, then each chunk adds the decayed end state of
    the chunks before it through a (d, n, n) one. Zero padding at the end never reaches earlier positions."""
    bsz, seq_len, d = u.shape
    chunk = min(EMA_CHUNK, seq_len)
    n = -(-seq_len // chunk)
    u = F.pad(u, (0, 0, 0, n * chunk - seq_len)).view(bsz, n, chunk, d)
    log_decay = log_decay.float()

    def decays(lag: Tensor, scale: int) -> Tensor:  # a^(scale·lag) where lag >= 0, else 0; (d, *lag.shape)
        return torch.exp(lag.clamp(min=0) * scale * log_decay[:, None, None]) * (lag >= 0)

    i = torch.arange(chunk, device=u.device)
    c = torch.arange(n, device=u.device)
    gain = -torch.expm1(log_decay).to(u.dtype)  # 1 − a
    local = torch.einsum("dij,bcjd->bcid", decays(i[:, None] - i[None, :], 1).to(u.dtype), u * gain)
    ends = torch.einsum("dce,bed->bcd", decays(c[:, None] - c[None, :] - 1, chunk).to(u.dtype), local[:, :, -1])
    carry = torch.exp((i[:, None] + 1) * log_decay).to(u.dtype)  # (C, d): a^(i+1) of the previous chunk's end
    return (local + carry * ends[:, :, None]).reshape(bsz, n * chunk, d)[:, :seq_len]


class SpeakerListener(GPT):
    def __init__(self, c: AgentsConfig):
        super().__init__(c)
        hidden = c.listener_hidden or 2 * c.model_dim
        self.message = CastedLinear(c.model_dim, c.message_dim)
        # Decay logits: a = sigmoid(θ) = 1 − 1/τ, timescales τ from 1.25 to 257 tokens spread over the channels.
        self.decay_logit = nn.Parameter(torch.linspace(math.log(0.25), math.log(256.0), c.message_dim))
        self.listener_fc = CastedLinear(c.message_dim + c.listen_window * c.model_dim, hidden)
        self.listener_proj = CastedLinear(hidden, c.model_dim)

    def forward(self, input_ids: Tensor) -> Tensor:
        x = self.embed(input_ids)
        speaker = self.run_blocks(x)
        msg = rms_norm(causal_ema(self.message(rms_norm(speaker)), F.logsigmoid(self.decay_logit)))
        recent = [F.pad(x, (0, 0, k, 0))[:, :x.size(1)] for k in range(self.config.listen_window)]  # x_{t−k}
        heard = torch.cat([msg.to(x.dtype), *recent], dim=-1)
        return self.logits(self.listener_proj(torch.relu(self.listener_fc(heard)).square()))


register("agents", config=AgentsConfig, build=SpeakerListener, doc=__doc__, presets={"msg64": {"message_dim": 64}})
