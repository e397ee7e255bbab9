"""The proof, per run, that training-only techniques are training-only, at the run's own config on the CPU.

Two models are built from the same seed: the base variant, and the variant with the run's techniques applied.
The techniques' model is trained for two steps, one as at the start of training and one as at its middle (so
hooks, curricula and extra heads have done whatever they do), exported, and the artifact loaded into a fresh
base model. Then:
  - state: the exported state dicts hold the same keys, shapes and dtypes;
  - FLOPs: one evaluation forward costs the same (torch.utils.flop_counter) with and without the techniques;
  - logits: in evaluation mode, the techniques' model (hooks still installed, the artifact's weights loaded)
    and the base model loaded from the same artifact give identical fp32 logits.
A technique that fails is refused as training-only, with the difference named.
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from harness import artifact, hooks
from harness.errors import UserError
from harness.metric import ScoredModel, split_output
from harness.techniques import TechniqueStack, label, train_steps

PROOF_SEQ_LEN = 64


def _signature(model) -> dict:
    return {k: (tuple(v.shape), str(v.dtype)) for k, v in hooks.exported_state(model).items()}


def _eval_flops(model, x) -> int:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def proof_tables(vocab_size: int):
    """Byte tables for a proof made before a dataset is at hand (a sweep's plan): lengths 1 … 8 and every other
    token word-initial. What the tables say does not decide whether a technique is training-only; a run proves
    again with its tokenizer's own."""
    import numpy as np

    from harness.data.tokenizers import ByteTables

    ids = np.arange(vocab_size)
    return ByteTables(base_bytes=(1 + ids % 8).astype(np.int16), has_leading_space=ids % 2 == 1,
                      is_boundary=ids == 0)


def prove(variant, config, applied, context: dict | None = None, seed: int = 0) -> dict:
    """The verdict for the run's record; raises UserError naming the difference when there is one."""
    t0 = time.perf_counter()
    context = dict(context or {})
    if context.get("tables") is None:
        context["tables"] = proof_tables(config.vocab_size)
    names = label(applied).lstrip("+").replace("+", ", ")
    torch.manual_seed(seed)
    base = variant.construct(config)
    torch.manual_seed(seed)
    model = variant.construct(config)
    stack = TechniqueStack(applied, model, config, context)
    problem = None
    if _signature(base) != _signature(model):
        extra = sorted(set(_signature(model)) ^ set(_signature(base)))
        problem = f"the exported state dict differs ({', '.join(extra[:3]) or 'shapes or dtypes'})"
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, config.vocab_size, (2, PROOF_SEQ_LEN + 1), generator=g)
    if problem is None:
        scored = ScoredModel(model, stack)
        trainable = [p for p in scored.parameters() if p.requires_grad]
        try:
            # one step at the start of training (curricula, corruption on) and one at its middle
            train_steps(scored, stack, torch.optim.Adam(trainable, lr=1e-3), x, steps=2, progress=(0.0, 0.5))
        except UserError:
            raise
        except Exception as exc:  # a technique that cannot train this variant says so in one line
            raise UserError(f"technique {names} cannot train {variant.name}: {type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
        blob = artifact.compress(hooks.exported_state(model))
        restored = artifact.restore(variant.construct, config, blob)
        artifact.copy_tensors(model, restored)
        probe = x[:, :-1]
        flops = (_eval_flops(restored, probe), _eval_flops(model, probe))
        with torch.no_grad():
            a = split_output(model(probe))[0].float()
            b = split_output(restored(probe))[0].float()
        diff = float((a - b).abs().max()) if a.shape == b.shape else float("inf")
        if flops[0] != flops[1]:
            problem = f"an evaluation forward costs {flops[1]:,} FLOPs with it and {flops[0]:,} without"
        elif not diff == 0.0:
            problem = f"evaluation logits differ by {diff:.3g} from the base model loaded from the same artifact"
    model.train()
    if problem:
        raise UserError(f"technique {names} is not training-only: {problem}; it cannot be used as a training-only "
                        f"technique")
    return {"training_only": True, "state": "same keys, shapes and dtypes", "eval_flops": flops[0],
            "logits": "identical", "seq_len": PROOF_SEQ_LEN, "seconds": time.perf_counter() - t0}
