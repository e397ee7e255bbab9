"""Benchmark: every variant family beside the baseline — sizes at default (full) size, and a smoke run each.

    python bench/variants.py                      # every family at its defaults, one smoke run each
    python bench/variants.py --configs mla:gqa_latent64 eigenweight:r128 --seeds 2
    python bench/variants.py --presets --max-steps 1   # every preset of every family, one step each
    python bench/variants.py --configs baseline baseline+mlp_activation=swiglu+norm=layer   # model options

For each configuration: `show --json` gives the stored parameter count and the int8+zlib artifact bytes of
the default-size model at initialisation (no budget); torch's FlopCounterMode counts the FLOPs of one
evaluation forward per token at that size on a 1,024-token sequence, attention over the full T×T scores as the
record's MFU counts it, and also as a multiple of the baseline's: what a dense implementation computes, so
masked-out experts, heads and skipped tokens are included (the families report the fraction a sparse kernel
would run in their metrics). Then `run --budget smoke` trains it for the smoke budget's minute on this machine
and the record gives val_bpb (after the int8 round trip) and tokens/s.
Prints a Markdown table (medians over seeds). Run it alone: other load on the machine changes tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def harness(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def median(records: list[dict], key: str):
    values = [r[key] for r in records if r.get(key) is not None]
    return statistics.median(values) if values else None


def split_config(config: str) -> tuple[str, dict[str, str]]:
    """"name[:preset][+field=value…]" → ("name[:preset]", {field: value}): config fields set as flags would."""
    name, *settings = config.split("+")
    return name, dict(setting.split("=", 1) for setting in settings)


def as_flags(fields: dict[str, str]) -> list[str]:
    return [part for k, v in fields.items() for part in ("--" + k.replace("_", "-"), v)]


def eval_flops_per_token(config: str, seq_len: int = 1024) -> int:
    """FLOPs of one evaluation forward per token, at the family's default (full) size."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from harness.config import parse_value
    from harness.hardware import _cpu_flash_fwd
    from harness.registry import get_variant

    name, fields = split_config(config)
    variant, preset = get_variant(name)
    torch.manual_seed(0)
    flags = {k: parse_value(variant.config_cls, k, v) for k, v in fields.items()}
    model = variant.build(variant.resolve(preset, None, flags)).eval()
    x = torch.randint(0, model.config.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping={
            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_fwd}) as counter:
        model(x)
    return counter.get_total_flops() // seq_len


def main() -> None:
    from harness.registry import known_variant_names

    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", nargs="*", help="name, name:preset, each optionally +field=value… "
                        "(default: every family's defaults)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--budget", default="smoke")
    parser.add_argument("--presets", action="store_true", help="each family's presets too (or those of --configs)")
    parser.add_argument("--max-steps", type=int, help="cap each run at this many steps (the record says so)")
    args = parser.parse_args()
    configs = args.configs or ["baseline"] + [n for n in known_variant_names() if n != "baseline"]
    if args.presets:
        from harness.registry import get_variant

        configs = [c for name in configs for c in [name] + [f"{name}:{p}" for p in get_variant(name)[0].presets]]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in configs:
            name, fields = split_config(config)
            shown = harness("show", name, *as_flags(fields), "--json")
            if shown.returncode:
                rows.append((config, None, None, None, None, None, None, shown.stderr.strip()))
                continue
            info = json.loads(shown.stdout)
            flops = eval_flops_per_token(config)
            records = []
            for seed in range(args.seeds):
                out = Path(tmp) / f"{config.replace(':', '_').replace('+', '_')}-{seed}"
                cap = ["--max-steps", str(args.max_steps)] if args.max_steps else []
                done = harness("run", "--variant", name, *as_flags(fields), "--budget", args.budget, "--seed",
                               str(seed), "--quiet", *cap, env={"HARNESS_RESULTS_DIR": str(out)})
                found = list(out.glob("*/run.json"))
                if found:
                    records.append(json.loads(found[0].read_text()))
                elif done.returncode:
                    print(f"{config}: {done.stderr.strip()[-300:]}", file=sys.stderr)

            status = ",".join(sorted({r["status"] for r in records})) or "no record"
            rows.append((config, info["stored_param_count"], info["artifact_total_bytes_at_init"], flops,
                         median(records, "val_bpb_post_quant"), median(records, "tokens_per_second"),
                         median(records, "steps"), status))
            print(f"done {config}: {rows[-1]}", file=sys.stderr, flush=True)
    base = next((row[3] for row in rows if row[0] == "baseline" and row[3]), None)
    print(f"| configuration | stored numbers (default size) | artifact bytes at init | eval FLOPs/token "
          f"(× baseline) | {args.budget} val_bpb | {args.budget} tokens/s | steps | status |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for config, stored, size, flops, bpb, tps, steps, status in rows:
        ratio = f" (×{flops / base:.2f})" if flops and base else ""
        cells = [f"{stored:,}" if stored else "–", f"{size:,}" if size else "–",
                 f"{flops / 1e6:,.1f}M{ratio}" if flops else "–",
                 f"{bpb:.4f}" if bpb else "–", f"{tps:,.0f}" if tps else "–", f"{steps:.0f}" if steps else "–"]
        print(f"| `{config}` | {' | '.join(cells)} | {status} |")


if __name__ == "__main__":
    main()
