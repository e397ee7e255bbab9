"""torch.compile for one run: a clean compile state, the model (fullgraph unless its family says why not) and
Muon's Newton–Schulz compiled as train_gpt.py compiles them, and what compiling cost, for the record.

Dynamo caches compiled code per Python function, not per model, and every run compiles the same
ScoredModel.forward: without a reset, a process that trains several configurations (a tune worker, a debug
sweep) reaches Dynamo's recompile limit from the third on and trains the rest uncompiled, with only a log line
to say so. Here each run starts from an empty cache, and reaching the limit fails the run with its reason.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from harness.optim import zeropower_via_newtonschulz5

_raised_by = 0  # what start() last added to torch.compile's recompile limit


def start(enabled: bool, allowance: int = 0) -> None:
    """A clean compile state for the run about to start (Dynamo's caches, counters and metrics emptied). A run
    that does not compile leaves Dynamo unimported (1.5 s of imports) unless an earlier run loaded it.
    `allowance`: recompiles the run's training-only techniques announce (a curriculum's lengths), on top of
    the limit."""
    if not enabled and "torch._dynamo" not in sys.modules:
        return
    import torch._dynamo

    global _raised_by
    # relative to the limit as configured (torch's default, 8, or a caller's), the previous run's raise undone
    torch._dynamo.config.recompile_limit += allowance - _raised_by
    _raised_by = allowance
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch._dynamo.utils.clear_compilation_metrics()
    torch._dynamo.config.fail_on_recompile_limit_hit = enabled


def compile_model(scored: nn.Module, fullgraph: bool, backend: str = "inductor") -> nn.Module:
    return torch.compile(scored, dynamic=False, fullgraph=fullgraph, backend=backend)


def compile_newton_schulz():
    return torch.compile(zeropower_via_newtonschulz5)


def explain(exc: BaseException) -> str | None:
    """One line for a compile failure that is not a bug in the run's code (the recompile limit, a graph break
    under fullgraph=True), else None."""
    name = type(exc).__name__
    first_line = (str(exc).strip().splitlines() or [""])[0][:200]
    if name in ("FailOnRecompileLimitHit", "FailOnCacheLimitHit") or "recompile_limit" in str(exc):
        import torch._dynamo

        limit = torch._dynamo.config.recompile_limit
        return (f"torch.compile reached its recompile limit ({limit}) and would have trained on uncompiled; "
                f"a shape or guard changes on every call: {first_line}")
    if name in ("Unsupported", "UserError") and type(exc).__module__.startswith("torch._dynamo"):
        return (f"the model does not compile as one graph ({first_line}); make it traceable, or declare why "
                f"not with register(..., graph_breaks=\"...\") so it compiles with graph breaks, or run "
                f"--no-compile")
    return None


def stats(enabled: bool, fullgraph: bool) -> dict:
    """Graphs, recompiles, graph breaks and compile seconds since start(), from Dynamo's own metrics."""
    if not enabled:
        return {"enabled": False}
    import torch._dynamo

    metrics = torch._dynamo.utils.get_compilation_metrics()
    frames = [m for m in metrics if not m.is_runtime]
    recompiles = [m for m in frames if m.recompile_reason]
    breaks = torch._dynamo.utils.counters["graph_break"]
    seconds = sum((m.entire_frame_compile_time_s or 0.0) for m in frames)
    seconds += sum((m.duration_us or 0) for m in metrics if m.is_runtime) / 1e6  # backward graphs compiled lazily
    return {"enabled": True, "fullgraph": fullgraph,
            "graphs": int(torch._dynamo.utils.counters["stats"]["unique_graphs"]),
            "frames": sorted({m.co_name for m in frames if m.co_name}),
            "recompiles": len(recompiles),
            "recompile_reasons": sorted({str(m.recompile_reason).splitlines()[0][:160] for m in recompiles})[:5],
            "graph_breaks": int(sum(breaks.values())),
            "graph_break_reasons": [str(reason)[:160] for reason in list(breaks)[:5]],
            "compile_seconds": round(seconds, 3)}
