"""The baseline side by side with the challenge's own train_gpt.py, on this machine's device.

    python bench/vs_reference.py --reference PATH/TO/train_gpt.py                     # CPU: a small batch
    python bench/vs_reference.py --reference PATH/TO/train_gpt.py --device cuda        # the 10min batch
    python bench/vs_reference.py --reference PATH/TO/train_gpt.py --write-fingerprints tests/fixtures/...json

The reference is imported from the file you give (it is never part of this repository): its GPT, Muon,
restore_low_dim_params_to_fp32 and token loader. Three checks, both under the challenge's precision scheme:
1. step-0 state dicts for one seed: the harness's `build_model` against the reference built and cast as its
   main() does (same names, shapes, dtypes, values);
2. N optimizer steps of both on the same batches (the reference's loader and the harness's read the same shard
   files) at a constant learning rate: the largest difference between their training losses;
3. the time per step of both loops after the same warm-up: the harness's is its real trainer (`train.run`),
   the reference's is its main() loop body re-run here with its own classes.
--write-fingerprints stores per-tensor (shape, dtype, sum, sum of squares) of the reference's step-0 state
dict, which tests/test_reference_parity.py holds the harness to without needing the reference file.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import train  # noqa: E402
from harness.budget import Budget  # noqa: E402
from harness.data.datasets import resolve_dataset  # noqa: E402
from harness.metric import autocast  # noqa: E402
from harness.model import GPTConfig  # noqa: E402
from harness.registry import get_variant  # noqa: E402


def load_reference(path: Path):
    if not path.is_file():
        sys.exit(f"error: --reference {path} does not exist (give the path to parameter-golf's train_gpt.py)")
    spec = importlib.util.spec_from_file_location("reference_train_gpt", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("GPT", "Muon", "CastedLinear", "restore_low_dim_params_to_fp32", "DistributedTokenLoader",
                 "CONTROL_TENSOR_NAME_PATTERNS", "zeropower_via_newtonschulz5"):
        if not hasattr(module, name):
            sys.exit(f"error: {path} has no {name}; is it parameter-golf's train_gpt.py?")
    return module


def reference_model(ref, c: GPTConfig, seed: int, device: torch.device):
    """Built, seeded and cast as the reference's main() does."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = ref.GPT(vocab_size=c.vocab_size, num_layers=c.num_layers, model_dim=c.model_dim, num_heads=c.num_heads,
                    num_kv_heads=c.num_kv_heads, mlp_mult=c.mlp_mult, tie_embeddings=True,
                    tied_embed_init_std=c.tied_embed_init_std, logit_softcap=c.logit_softcap,
                    rope_base=c.rope_base, qk_gain_init=c.qk_gain_init).to(device).bfloat16()
    for module in model.modules():
        if isinstance(module, ref.CastedLinear):
            module.float()
    ref.restore_low_dim_params_to_fp32(model)
    return model


def fingerprints(state: dict) -> dict:
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."),
                "sum": v.double().sum().item(), "sum_sq": v.double().square().sum().item()}
            for k, v in state.items()}


def compare_state(harness_state: dict, reference_state: dict) -> list[str]:
    problems = []
    if set(harness_state) != set(reference_state):
        problems.append(f"names differ: only harness {sorted(set(harness_state) - set(reference_state))[:4]}, "
                        f"only reference {sorted(set(reference_state) - set(harness_state))[:4]}")
    for k in sorted(set(harness_state) & set(reference_state)):
        a, b = harness_state[k], reference_state[k]
        if a.shape != b.shape or a.dtype != b.dtype:
            problems.append(f"{k}: harness {tuple(a.shape)} {a.dtype}, reference {tuple(b.shape)} {b.dtype}")
        elif not torch.equal(a.cpu(), b.cpu()):
            problems.append(f"{k}: values differ by up to {(a.double() - b.double()).abs().max().item():.3g}")
    return problems


def reference_loop(ref, c: GPTConfig, b: Budget, files: str, seed: int, device: torch.device, use_compile: bool,
                   steps: int) -> tuple[list[float], float]:
    """The reference's main() training loop (its classes, its optimizer split and momentum warm-up) at a
    constant learning rate, with its warm-up steps undone: (per-step training losses, ms per step)."""
    model = reference_model(ref, c, seed, device)
    if use_compile:
        ref.zeropower_via_newtonschulz5 = torch.compile(ref.zeropower_via_newtonschulz5)
    runner = torch.compile(model, dynamic=False, fullgraph=True) if use_compile else model
    named = list(model.blocks.named_parameters())
    control = ref.CONTROL_TENSOR_NAME_PATTERNS
    matrix = [p for n, p in named if p.ndim == 2 and not any(pat in n for pat in control)]
    scalar = [p for n, p in named if p.ndim < 2 or any(pat in n for pat in control)] + [model.skip_weights]
    fused = device.type == "cuda"  # as the harness; the reference always asks for fused (a CUDA-only script)
    optimizers = [
        torch.optim.Adam([{"params": [model.tok_emb.weight], "lr": c.tied_embed_lr}], betas=(c.beta1, c.beta2),
                         eps=c.adam_eps, fused=fused),
        ref.Muon(matrix, lr=c.matrix_lr, momentum=c.muon_momentum, backend_steps=c.muon_backend_steps),
        torch.optim.Adam([{"params": scalar, "lr": c.scalar_lr}], betas=(c.beta1, c.beta2), eps=c.adam_eps,
                         fused=fused)]
    accumulation = b.tokens_per_step // b.micro_batch_tokens

    def step(loader, n: int) -> torch.Tensor:
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=device)
        for _ in range(accumulation):
            x, y = loader.next_batch(b.tokens_per_step, b.seq_len, accumulation)
            with autocast(device, torch.bfloat16):
                loss = runner(x, y)
            loss_sum += loss.detach()
            (loss / accumulation).backward()
        frac = min(n / c.muon_momentum_warmup_steps, 1.0) if c.muon_momentum_warmup_steps > 0 else 1.0
        for group in optimizers[1].param_groups:
            group["momentum"] = (1 - frac) * c.muon_momentum_warmup_start + frac * c.muon_momentum
        for opt in optimizers:
            opt.step()
        return loss_sum / accumulation

    if b.warmup_steps:
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        initial_opts = [copy.deepcopy(opt.state_dict()) for opt in optimizers]
        loader = ref.DistributedTokenLoader(files, 0, 1, device)
        for n in range(b.warmup_steps):
            step(loader, n)
        model.load_state_dict(initial)
        for opt, state in zip(optimizers, initial_opts):
            opt.load_state_dict(state)
    loader = ref.DistributedTokenLoader(files, 0, 1, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    losses = [step(loader, n) for n in range(steps)]
    sync()
    ms = 1000 * (time.perf_counter() - t0) / steps
    return [x.item() for x in losses], ms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", type=Path, required=True, help="parameter-golf's train_gpt.py")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on CUDA, 6 on CPU; 0: only the "
                                                            "state-dict check)")
    ap.add_argument("--warmup-steps", type=int, default=None, help="untimed steps, undone (default: 5 / 1)")
    ap.add_argument("--tokens-per-step", type=int, default=None, help="default: 524,288 on CUDA, 4,096 on CPU")
    ap.add_argument("--seq-len", type=int, default=None, help="default: 1024 on CUDA, 512 on CPU")
    ap.add_argument("--dataset", default="builtin", help="builtin, fineweb (fetched), or a directory of shards")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="compile both (default: on CUDA)")
    ap.add_argument("--write-fingerprints", type=Path, help="write the reference's step-0 fingerprints here")
    args = ap.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA device is available")
    device = torch.device(args.device)
    ref = load_reference(args.reference)
    c = GPTConfig(warmdown_steps=0)  # a constant learning rate for both: the comparison is of the math per step
    variant, _ = get_variant("baseline")

    # ---- 1. step-0 state dicts
    harness_state = train.build_model(variant, c, args.seed, device, "challenge").state_dict()
    reference_state = reference_model(ref, c, args.seed, device).state_dict()
    problems = compare_state(harness_state, reference_state)
    print(f"step-0 state dict, seed {args.seed}: {len(reference_state)} tensors, "
          f"{sum(v.numel() for v in reference_state.values()):,} numbers — "
          + ("identical (names, shapes, dtypes, values)" if not problems else f"{len(problems)} differences"))
    for p in problems[:10]:
        print(f"  {p}")
    if args.write_fingerprints:
        prints = fingerprints({k: v.cpu() for k, v in reference_state.items()})
        lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(prints.items())]
        head = {"source": "parameter-golf's train_gpt.py: GPT built, seeded and cast as its main() does; written "
                          "by bench/vs_reference.py --write-fingerprints", "seed": args.seed}
        args.write_fingerprints.write_text(json.dumps(head)[:-1] + ', "tensors": {\n' + ",\n".join(lines)
                                           + "\n}}\n")
        print(f"wrote {args.write_fingerprints}")

    if args.steps == 0:
        return 1 if problems else 0

    # ---- 2 and 3. N steps of both on the same batches, timed
    tokens = args.tokens_per_step or (524_288 if cuda else 4096)
    seq_len = args.seq_len or (1024 if cuda else 512)
    steps = args.steps or (20 if cuda else 6)
    warmup = args.warmup_steps if args.warmup_steps is not None else (5 if cuda else 1)
    use_compile = args.compile if args.compile is not None else cuda
    dataset_dir = Path(args.dataset) if Path(args.dataset).is_dir() else None
    budget = Budget(name="vs-reference", description="side by side with train_gpt.py", train_wallclock_seconds=1e6,
                    device=args.device, device_count=1, tokens_per_step=tokens, micro_batch_tokens=tokens // 8,
                    seq_len=seq_len, dataset="builtin" if dataset_dir else args.dataset, val_tokens_cap=seq_len,
                    eval_seconds_limit=1e6, val_every_seconds=0, log_every_seconds=1e6,
                    artifact_cap_bytes=16_000_000, max_steps=steps, warmup_steps=warmup)
    dataset = resolve_dataset(budget.dataset, data_dir=dataset_dir)
    files = str(Path(dataset.train_files[0]).parent / "*_train_*.bin")
    with tempfile.TemporaryDirectory() as results:
        record = train.run(train.RunSpec(variant=variant, config=c, budget=budget, seed=args.seed,
                                         results_dir=Path(results), data_dir=dataset_dir, compile=use_compile,
                                         precision="challenge", device=args.device, quiet=True,
                                         command=sys.argv))
    harness_losses = [point["train_loss"] for point in record["curve"]]
    reference_losses, reference_ms = reference_loop(ref, c, budget, files, args.seed, device, use_compile, steps)
    diffs = [abs(a - b) for a, b in zip(harness_losses, reference_losses)]
    print(f"{steps} steps of {tokens:,} tokens (seq {seq_len}, 8 micro-batches, warm-up {warmup} undone, "
          f"compile {use_compile}, {args.device}, dataset {dataset.name}):")
    print(f"  train loss, harness:   {' '.join(f'{x:.5f}' for x in harness_losses)}")
    print(f"  train loss, reference: {' '.join(f'{x:.5f}' for x in reference_losses)}")
    print(f"  largest difference: {max(diffs):.2e} (step {diffs.index(max(diffs)) + 1})")
    harness_ms = record["ms_per_step"]
    print(f"  ms/step: harness {harness_ms:.1f}, reference {reference_ms:.1f}; tokens/s ratio harness/reference "
          f"{reference_ms / harness_ms:.3f}")
    if record.get("mfu") is not None:
        print(f"  harness MFU {100 * record['mfu']:.1f}% ({record['model_flops_per_token']:,} FLOPs/token)")
    return 1 if problems or not math.isfinite(max(diffs)) else 0


if __name__ == "__main__":
    sys.exit(main())
