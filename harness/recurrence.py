"""Pieces shared by models that apply weight-shared blocks repeatedly (ut_act, looped, depth_recurrence): a learned
vector per step or pass, and adaptive computation time — the halting unit, the halting-weighted sum of the states,
the steps each token took and their mean over an evaluation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.model import rms_norm
from harness.optim import ParamGroup, default_param_groups


class StepVectors(nn.Module):
    """One learned vector per step (or pass) of a repeated computation, so that the applications of one shared
    block can differ. Called, it adds step n's vector to the state entering step n: the timestep embedding of
    universal transformers (Dehghani et al. 2019), the loop embedding of looped transformers. `at(n)` reads
    the vector for other uses (a per-pass scale or gate, initialised to ones)."""

    def __init__(self, steps: int, dim: int, init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.full((steps, dim), init))

    def at(self, step: int, dtype: torch.dtype) -> Tensor:
        return self.weight[step].to(dtype)

    def forward(self, x: Tensor, step: int) -> Tensor:
        return x + self.weight[step].to(x.dtype)


class Halting(nn.Module):
    """ACT's halting unit (Graves 2016): p = sigmoid(w·rms_norm(h) + b) per token, w zero at init. The bias starts
    at p₀ = 1 / (2·(max_steps − 1)): every token runs all steps and the last state carries about half the output
    weight, so training starts from the deepest computation and the ponder cost trims it."""

    def __init__(self, dim: int, max_steps: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, dim))
        p0 = 1.0 / (2.0 * max(max_steps - 1, 1))
        self.bias = nn.Parameter(torch.tensor(math.log(p0 / (1.0 - p0))))

    def forward(self, h: Tensor) -> Tensor:
        return torch.sigmoid(F.linear(rms_norm(h), self.weight.to(h.dtype)).squeeze(-1).float() + self.bias)


class ACT:
    """Adaptive computation time over one forward pass of states (B, T, d), every step run densely under masks
    (no data-dependent exit, so it compiles). A token halts at the first step where its summed p would reach
    1 − epsilon, or at the last step; that step gets the remainder R = 1 − (earlier p), and the token's output is
    the halting-weighted sum of its states. A halted token keeps its state (`keep`); later tokens still attend
    to it. The ponder cost is mean(N + R), N the steps a token ran."""

    def __init__(self, like: Tensor, max_steps: int, epsilon: float):
        self.max_steps, self.epsilon = max_steps, epsilon
        self.running = torch.ones(like.shape[:2], dtype=torch.bool, device=like.device)
        self.summed_p = torch.zeros(like.shape[:2], device=like.device)
        self.steps, self.remainder = torch.zeros_like(self.summed_p), torch.zeros_like(self.summed_p)
        self.out = torch.zeros_like(like)

    def keep(self, old: Tensor, new: Tensor) -> Tensor:
        """The state after a step: `new` where the token still runs, `old` where it has halted."""
        return torch.where(self.running[..., None], new, old)

    def update(self, h: Tensor, p: Tensor, step: int) -> None:
        """Account step `step` (from 0), whose kept state is h and halting probability p."""
        running = self.running
        halts = running & ((self.summed_p + p >= 1.0 - self.epsilon) | (step == self.max_steps - 1))
        weight = torch.where(halts, 1.0 - self.summed_p, torch.where(running, p, 0.0))
        self.out = self.out + weight[..., None].to(h.dtype) * h
        self.remainder = torch.where(halts, 1.0 - self.summed_p, self.remainder)
        self.steps = self.steps + running.float()
        self.summed_p = self.summed_p + torch.where(running & ~halts, p, 0.0)
        self.running = running & ~halts

    def ponder_cost(self) -> Tensor:
        return (self.steps + self.remainder).mean()


class StepCount(nn.Module):
    """The mean steps per token over one evaluation: summed by `add` in eval-mode forwards, reset when eval mode
    begins (each evaluation starts by switching to it). Non-persistent: never in the artifact."""

    def __init__(self):
        super().__init__()
        self.register_buffer("steps", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("tokens", torch.zeros((), dtype=torch.float64), persistent=False)

    @torch.no_grad()
    def add(self, steps: Tensor) -> None:
        self.steps += steps.sum().double()
        self.tokens += steps.numel()

    def train(self, mode: bool = True):
        if not mode:
            self.steps.zero_()
            self.tokens.zero_()
        return super().train(mode)

    def mean(self) -> float | None:
        tokens = self.tokens.item()
        return self.steps.item() / tokens if tokens else None


def param_groups(model: nn.Module, c) -> list[ParamGroup]:
    """The baseline's split, except that step-vector tables and halting rows (2-D, but vectors in spirit) train
    with Adam at the scalar learning rate rather than with Muon."""
    vectors = [m.weight for m in model.modules() if isinstance(m, StepVectors | Halting)]
    return default_param_groups(model, c, ParamGroup("step_vectors", vectors, "adam", c.scalar_lr))
