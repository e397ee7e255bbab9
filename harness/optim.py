"""Optimizers as in the challenge: Muon for block matrices, Adam for the tied embedding and for vectors/scalars.

Weight decay, as the later records use it, is decoupled on both (Muon: weights × (1 − lr·wd) before each
update; Adam becomes AdamW); at 0, the default, the optimizers are the baseline's.

Muon (Keller Jordan, via modded-nanogpt): momentum with Nesterov, then the update is orthogonalised with a
quintic Newton–Schulz iteration. Under DDP each rank orthogonalises a share of the matrices and the updates
are summed across ranks, so the work is split rather than repeated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from harness.model import CONTROL_TENSOR_PATTERNS


def zeropower_via_newtonschulz5(G: Tensor, steps: int, dtype: torch.dtype = torch.bfloat16,
                                eps: float = 1e-7) -> Tensor:
    """The quintic Newton–Schulz iteration in `dtype`: bf16 as the challenge, fp32 for CPU runs in fp32, where bf16
    matmuls are slower, not faster. The trainer compiles it (as train_gpt.py) when it compiles the model."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.to(dtype)
    X = X / (X.norm() + eps)
    transposed = G.size(0) > G.size(1)
    if transposed:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.T if transposed else X


class Muon(torch.optim.Optimizer):
    """`orthogonalize` is the Newton–Schulz function (compiled or not) and `dtype` its dtype and the updates'."""

    def __init__(self, params, lr: float, momentum: float, backend_steps: int, nesterov: bool = True,
                 dtype: torch.dtype = torch.bfloat16, orthogonalize=zeropower_via_newtonschulz5,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps, nesterov=nesterov,
                                      weight_decay=weight_decay))
        self.dtype, self.orthogonalize = dtype, orthogonalize

    @torch.no_grad()
    def step(self, closure=None):
        distributed = dist.is_available() and dist.is_initialized()
        world_size = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        for group in self.param_groups:
            params = group["params"]
            if not params:
                continue
            updates = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=self.dtype)
            offset = 0
            for i, p in enumerate(params):
                if i % world_size == rank and p.grad is not None:
                    g = p.grad
                    buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(g))
                    buf.mul_(group["momentum"]).add_(g)
                    if group["nesterov"]:
                        g = g.add(buf, alpha=group["momentum"])
                    g = self.orthogonalize(g, group["backend_steps"], self.dtype)
                    g *= max(1, g.size(0) / g.size(1)) ** 0.5  # scale correction from the Muon reference
                    updates[offset:offset + p.numel()] = g.reshape(-1)
                offset += p.numel()
            if distributed:
                dist.all_reduce(updates)
            offset = 0
            decay = 1.0 - group["lr"] * group["weight_decay"]  # decoupled, as the records' Muon WD
            for p in params:
                if decay != 1.0:
                    p.mul_(decay)
                p.add_(updates[offset:offset + p.numel()].view_as(p).to(p.dtype), alpha=-group["lr"])
                offset += p.numel()


@dataclass
class ParamGroup:
    """Parameters that share an optimizer ("muon" for 2-D matrices, "adam" for anything) and a learning rate."""
    name: str
    params: list[nn.Parameter]
    optimizer: str
    lr: float


def default_param_groups(model: nn.Module, c, *special: ParamGroup) -> list[ParamGroup]:
    """The challenge's split: the embedding and vectors/scalars on Adam, 2-D non-control matrices on Muon;
    parameters in a `special` group are taken out of that split and trained as their group says."""
    embed, matrix, scalar = [], [], []
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    taken = {id(p) for group in special for p in group.params}
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in taken:
            continue
        if id(p) in embeddings:
            embed.append(p)
        elif p.ndim == 2 and not any(pat in name for pat in CONTROL_TENSOR_PATTERNS):
            matrix.append(p)
        else:
            scalar.append(p)
    return [ParamGroup("embed", embed, "adam", c.tied_embed_lr), ParamGroup("matrix", matrix, "muon", c.matrix_lr),
            ParamGroup("scalar", scalar, "adam", c.scalar_lr), *special]


def check_groups(model: nn.Module, groups: list[ParamGroup]) -> None:
    """Every trainable parameter in exactly one group, Muon only on matrices: a variant's hook cannot drop one."""
    names = {id(p): n for n, p in model.named_parameters()}
    seen: dict[int, str] = {}
    for group in groups:
        if group.optimizer not in ("muon", "adam"):
            raise ValueError(f"param group {group.name!r}: optimizer must be 'muon' or 'adam', not {group.optimizer!r}")
        for p in group.params:
            if id(p) in seen:
                raise ValueError(f"parameter {names.get(id(p))} is in param groups {seen[id(p)]!r} and {group.name!r}")
            if group.optimizer == "muon" and p.ndim != 2:
                raise ValueError(f"param group {group.name!r}: Muon needs 2-D matrices, {names.get(id(p))} is "
                                 f"{p.ndim}-D")
            seen[id(p)] = group.name
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise ValueError(f"parameters in no param group (they would never train): {', '.join(missing[:5])}")


def build_optimizers(model: nn.Module, c, fused: bool, muon_dtype: torch.dtype = torch.float32,
                     orthogonalize=zeropower_via_newtonschulz5) -> tuple[list[torch.optim.Optimizer], Muon]:
    """One Muon and one Adam over the model's param groups (its `param_groups(c)` hook, or the default split).
    `muon_dtype` and `orthogonalize`: Muon's Newton–Schulz dtype and function (harness.precision, compiled)."""
    groups = model.param_groups(c) if hasattr(model, "param_groups") else default_param_groups(model, c)
    check_groups(model, groups)
    muon_groups = [{"params": g.params, "lr": g.lr} for g in groups if g.optimizer == "muon" and g.params]
    adam_groups = [{"params": g.params, "lr": g.lr} for g in groups if g.optimizer == "adam" and g.params]
    muon = Muon(muon_groups or [{"params": [], "lr": 0.0}], lr=c.matrix_lr, momentum=c.muon_momentum,
                backend_steps=c.muon_backend_steps, dtype=muon_dtype, orthogonalize=orthogonalize,
                weight_decay=c.muon_weight_decay)
    optimizers: list[torch.optim.Optimizer] = [muon]
    if adam_groups:  # AdamW only when asked: at 0 the baseline's Adam, step for step
        adam = (torch.optim.AdamW(adam_groups, betas=(c.beta1, c.beta2), eps=c.adam_eps,
                                  weight_decay=c.adam_weight_decay, fused=fused) if c.adam_weight_decay > 0 else
                torch.optim.Adam(adam_groups, betas=(c.beta1, c.beta2), eps=c.adam_eps, fused=fused))
        optimizers.append(adam)
    for opt in optimizers:
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    return optimizers, muon
