"""Optimizers as in the challenge: Muon for block matrices, Adam for the tied embedding and for vectors/scalars.

Muon (Keller Jordan, via modded-nanogpt): momentum with Nesterov, then the update is orthogonalised with a
quintic Newton–Schulz iteration. Under DDP each rank orthogonalises a share of the matrices and the updates
are summed across ranks, so the work is split rather than repeated.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from harness.model import CONTROL_TENSOR_PATTERNS


def zeropower_via_newtonschulz5(G: Tensor, steps: int, eps: float = 1e-7) -> Tensor:
    a, b, c = (3.4445, -4.7750, 2.0315)
    # bf16 on GPUs (as the challenge); fp32 on CPUs, where bf16 matmuls are slower, not faster.
    X = G.bfloat16() if G.is_cuda else G.float()
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
    def __init__(self, params, lr: float, momentum: float, backend_steps: int, nesterov: bool = True):
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps, nesterov=nesterov))

    @torch.no_grad()
    def step(self, closure=None):
        distributed = dist.is_available() and dist.is_initialized()
        world_size = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        for group in self.param_groups:
            params = group["params"]
            if not params:
                continue
            dtype = torch.bfloat16 if params[0].is_cuda else torch.float32
            updates = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=dtype)
            offset = 0
            for i, p in enumerate(params):
                if i % world_size == rank and p.grad is not None:
                    g = p.grad
                    buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(g))
                    buf.mul_(group["momentum"]).add_(g)
                    if group["nesterov"]:
                        g = g.add(buf, alpha=group["momentum"])
                    g = zeropower_via_newtonschulz5(g, steps=group["backend_steps"])
                    g *= max(1, g.size(0) / g.size(1)) ** 0.5  # scale correction from the Muon reference
                    updates[offset:offset + p.numel()] = g.reshape(-1)
                offset += p.numel()
            if distributed:
                dist.all_reduce(updates)
            offset = 0
            for p in params:
                p.add_(updates[offset:offset + p.numel()].view_as(p).to(p.dtype), alpha=-group["lr"])
                offset += p.numel()


def default_param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Embedding → "embed"; 2-D non-control matrices → "matrix" (Muon); everything else → "scalar" (Adam)."""
    groups: dict[str, list[nn.Parameter]] = {"embed": [], "matrix": [], "scalar": []}
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in embeddings:
            groups["embed"].append(p)
        elif p.ndim == 2 and not any(pat in name for pat in CONTROL_TENSOR_PATTERNS):
            groups["matrix"].append(p)
        else:
            groups["scalar"].append(p)
    return groups


def build_optimizers(model: nn.Module, c, fused: bool) -> tuple[list[torch.optim.Optimizer], Muon]:
    """Muon for matrices, Adam for the embedding and for scalars, with the config's learning rates."""
    groups = default_param_groups(model)
    adam = dict(betas=(c.beta1, c.beta2), eps=c.adam_eps, fused=fused)
    muon = Muon(groups["matrix"], lr=c.matrix_lr, momentum=c.muon_momentum, backend_steps=c.muon_backend_steps)
    optimizers: list[torch.optim.Optimizer] = [muon]
    if groups["embed"]:
        optimizers.append(torch.optim.Adam([{"params": groups["embed"], "lr": c.tied_embed_lr}], **adam))
    if groups["scalar"]:
        optimizers.append(torch.optim.Adam([{"params": groups["scalar"], "lr": c.scalar_lr}], **adam))
    for opt in optimizers:
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    return optimizers, muon
