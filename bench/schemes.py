"""Benchmark: one trained run under every export scheme (harness/artifact.py: bytes, seconds, the round-tripped
model's val_bpb) and every evaluation scheme (harness/evaluation.py: standard, sliding windows at the given
strides, score-first test-time training), with the seconds each took here.

    python -m harness run --variant baseline --budget smoke --keep-weights --results-dir /tmp/levers --quiet
    python bench/schemes.py /tmp/levers/<run_id>
    python bench/schemes.py /tmp/levers/<run_id> --strides 256,128,64,32 --ttt-chunk-tokens 32768,4096

Exports start from the run's full-precision weights (RUN/weights.pt, written by `run --keep-weights`; without it
that table is skipped); the Hessian-aware scheme calibrates on the first training batches, as a run does. Each
round trip is scored with the standard scheme. The eval schemes score the run's own artifact (RUN/model.int8.ptz,
rebuilt alone as the round trip does); the standard row should repeat the record's val_bpb_post_quant. The
model has the record's variant and config and is scored on the validation split of its dataset and budget.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run folder holding run.json, model.int8.ptz (and weights.pt)")
    parser.add_argument("--strides", type=int_list, default=[64], help="sliding strides, comma-separated")
    parser.add_argument("--ttt-chunk-tokens", type=int_list, default=None,
                        help="TTT chunk sizes, comma-separated (default: the scheme's, 32768)")
    parser.add_argument("--ttt-stride", type=int, default=None, help="the TTT scorer's stride (default: 64)")
    parser.add_argument("--ttt-epochs", type=int, default=None)
    parser.add_argument("--ttt-lr", type=float, default=None)
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the run's)")
    args = parser.parse_args()

    import torch

    from harness import artifact, precision, registry
    from harness.config import replace
    from harness.data.datasets import resolve_dataset
    from harness.evaluation import EvalScheme, evaluate_scheme
    from harness.metric import ScoredModel, load_validation

    record = json.loads((args.run_dir / "run.json").read_text())
    blob = (args.run_dir / "model.int8.ptz").read_bytes()
    budget = record["budget"]
    variant, _ = registry.get_variant(record["variant"])
    config = replace(variant.config_cls(), record["config"], "the run's config")
    dataset = resolve_dataset(record["dataset"], args.data_root, form=variant.data, log=lambda *a, **k: None)
    val = load_validation(dataset.val_files, budget["seq_len"], budget["val_tokens_cap"], dataset.tokenizer.tables)
    torch.set_num_threads(args.threads or record["environment"]["torch_threads"])
    device = torch.device("cpu")  # a CPU benchmark: a CUDA run's artifact is scored here too, in fp32
    autocast_dtype = precision.compute_dtype(device.type, "fp32")
    batch_tokens = budget["tokens_per_step"] // (record["world_size"] * record["grad_accumulation"])

    print(f"run {record['run_id']} ({record['variant']}, {record['budget_name']}): {val.target_tokens:,} target "
          f"tokens, {val.target_bytes:,} bytes, seq_len {val.seq_len}; the record's val_bpb_post_quant "
          f"{record.get('val_bpb_post_quant')}")

    def score(model, scheme):
        precision.apply(model, "fp32")
        started = time.perf_counter()
        result = evaluate_scheme(ScoredModel(model.to(device)), val, scheme, batch_tokens, 0, 1, device,
                                 autocast_dtype)
        assert result[2]["targets_scored"] == val.target_tokens, result[2]
        return (*result, time.perf_counter() - started)

    weights = args.run_dir / "weights.pt"
    if weights.is_file():
        from harness.data.loader import DistributedTokenLoader
        from harness.hooks import exported_state

        trained = variant.construct(config)
        trained.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        state = exported_state(trained)
        loader = DistributedTokenLoader(dataset.train_files, 0, 1, device, config.vocab_size)
        batches = [loader.next_batch(budget["tokens_per_step"], budget["seq_len"], 1)[0]
                   for _ in range(config.export_calibration_batches)]
        print("\n| export | model bytes | compress s | val_bpb after the round trip |\n|---|---:|---:|---:|")
        for name in artifact.EXPORT_SCHEMES:
            started = time.perf_counter()
            hessians = (artifact.collect_hessians(trained, batches, set(state)) if artifact.needs_hessians(name)
                        else None)
            blob_of = artifact.compress(state, name, hessians)
            seconds = time.perf_counter() - started
            model = variant.construct(config)
            model.load_state_dict(artifact.decompress(blob_of), strict=False)
            print(f"| {name} | {len(blob_of):,} | {seconds:.1f} | {score(model, EvalScheme())[1]:.6f} |", flush=True)
    else:
        print(f"\n(no {weights.name}: run with --keep-weights to compare export schemes)")

    ttt = {k: v for k, v in {"ttt_epochs": args.ttt_epochs, "ttt_lr": args.ttt_lr}.items() if v is not None}
    if args.ttt_stride is not None:
        ttt["stride"] = args.ttt_stride
    schemes = [EvalScheme("standard")] + [EvalScheme("sliding", stride=s) for s in args.strides]
    schemes += [EvalScheme("ttt", **ttt, **({"ttt_chunk_tokens": c} if c else {}))
                for c in (args.ttt_chunk_tokens or [None])]
    print("\n| eval | settings | val_loss | val_bpb | seconds | windows | notes |")
    print("|---|---|---:|---:|---:|---:|---|")
    for scheme in schemes:
        val_loss, val_bpb, info, seconds = score(artifact.restore(variant.construct, config, blob), scheme)
        settings, notes = "", ""
        if scheme.name == "sliding":
            settings = f"stride {scheme.stride}"
        elif scheme.name == "ttt":
            settings = (f"stride {scheme.stride}, chunk {scheme.ttt_chunk_tokens}, {scheme.ttt_epochs} ep, "
                        f"lr {scheme.ttt_lr}, mom {scheme.ttt_momentum}")
            notes = f"{info['chunks']} chunks, {info['ttt_steps']} SGD steps"
            notes += ", stopped early" if info["ttt_stopped_early"] else ""
        print(f"| {scheme.name} | {settings} | {val_loss:.6f} | {val_bpb:.6f} | {seconds:.1f} | "
              f"{info['windows']:,} | {notes} |", flush=True)


if __name__ == "__main__":
    main()
