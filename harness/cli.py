"""Command line: `python -m harness run | data | results`.

Parsing turns words into a RunSpec; every user mistake becomes one line on stderr and exit code 2. Variant
parameters are not declared here: they are derived from the variant's config dataclass, so a new field is a
new flag with no other change.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import signal
import sys
import typing
from pathlib import Path

from harness.errors import UserError


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)  # a misspelt flag must never match a real one

    def error(self, message: str) -> typing.NoReturn:
        raise UserError(f"{message} (see: python -m harness {self.prog.split()[-1]} --help)")


def parse_config_flags(config_cls: type, words: list[str]) -> dict[str, typing.Any]:
    """`--rank 128 --tie-x=false --flag` → {"rank": 128, ...}, typed and checked against the config's fields."""
    from harness.config import field_type, parse_value

    names = {f.name for f in dataclasses.fields(config_cls)}
    values: dict[str, typing.Any] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--"):
            raise UserError(f"unexpected argument {word!r}; parameters are given as --name value")
        key, has_eq, raw = word[2:].partition("=")
        name = key.replace("-", "_")
        if name not in names:
            flags = ["--" + n.replace("_", "-") for n in sorted(names)]
            close = difflib.get_close_matches("--" + key, flags, n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else f"; parameters: {' '.join(flags)}"
            raise UserError(f"unknown parameter --{key} for {config_cls.__name__}{hint}")
        if not has_eq:
            nxt = words[i + 1] if i + 1 < len(words) else None
            if field_type(config_cls, name) is bool and (nxt is None or nxt.startswith("--")):
                raw = "true"
            elif nxt is None:
                raise UserError(f"--{key} needs a value")
            else:
                raw, i = nxt, i + 1
        values[name] = parse_value(config_cls, name, raw)
        i += 1
    return values


def build_parser() -> Parser:
    parser = Parser(prog="harness", description="Train, score and record small LMs the parameter-golf way.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    run = sub.add_parser("run", help="train one variant under a budget and record the result",
                         description="Any other --name value pair sets a parameter of the variant's config.")
    run.add_argument("--variant", required=True, help="family name, name:preset, or path to a plugin .py file")
    run.add_argument("--preset", help="a named configuration of the variant")
    run.add_argument("--budget", required=True, help="budget name (budgets/NAME.toml) or path to a .toml file")
    run.add_argument("--seed", type=int, default=1337)
    run.add_argument("--run-id", help="name of the results folder (default: time, variant, budget, seed, hash)")
    run.add_argument("--results-dir", type=Path, help="where run folders go (default: results/)")
    run.add_argument("--data-root", type=Path, help="root of data/ (default: data/ or $HARNESS_DATA_ROOT)")
    run.add_argument("--data-dir", type=Path, help="an explicit dataset directory of *_train_*/*_val_* shards")
    run.add_argument("--tokenizer", type=Path, help="SentencePiece .model for --data-dir")
    run.add_argument("--device", choices=("cpu", "cuda"), help="override the budget's device kind")
    run.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                     help="torch.compile the model (default: on for CUDA, off for CPU)")
    run.add_argument("--max-steps", type=int, help="stop after this many steps even if the clock allows more")
    run.add_argument("--quiet", action="store_true", help="print only the final line")

    data = sub.add_parser("data", help="fetch or build datasets")
    data.add_argument("dataset", choices=("fineweb", "builtin", "synthetic"))
    data.add_argument("--train-shards", type=int, default=80, help="FineWeb training shards to fetch (of 195)")
    data.add_argument("--variant", default="sp1024", help="FineWeb tokenization: sp1024, sp<N> or byte260")
    data.add_argument("--data-root", type=Path, help="root of data/ (default: data/ or $HARNESS_DATA_ROOT)")

    res = sub.add_parser("results", help="table of recorded runs, best first")
    res.add_argument("--variant", help="comma-separated variant names")
    res.add_argument("--budget", help="comma-separated budget names")
    res.add_argument("--status", help="comma-separated statuses (ok, over_cap, diverged, interrupted, failed, ...)")
    res.add_argument("--results-dir", type=Path)
    res.add_argument("--limit", type=int, default=50, help="rows to print")
    return parser


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    from harness.budget import load_budget
    from harness.registry import get_variant
    from harness.train import RunSpec, run

    budget = load_budget(args.budget)
    variant, preset = get_variant(args.variant)
    if args.preset and preset and args.preset != preset:
        raise UserError(f"two presets given: {args.variant} and --preset {args.preset}; keep one")
    preset = args.preset or preset
    flags = parse_config_flags(variant.config_cls, extra)
    config = variant.resolve(preset, budget.model, flags, budget.name)
    if args.run_id is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.run_id):
        raise UserError(f"--run-id {args.run_id!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
    if args.max_steps is not None and args.max_steps < 1:
        raise UserError(f"--max-steps must be at least 1, got {args.max_steps}")
    spec = RunSpec(variant=variant, config=config, budget=budget, preset=preset, seed=args.seed, run_id=args.run_id,
                   results_dir=args.results_dir, data_root=args.data_root, data_dir=args.data_dir,
                   tokenizer=args.tokenizer, device=args.device, compile=args.compile, max_steps=args.max_steps,
                   quiet=args.quiet)
    # SLURM and other schedulers stop jobs with SIGTERM: record those runs as interrupted, like Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    record = run(spec)
    return 0 if record["status"] in ("ok", "over_cap", "over_eval_limit") else 1


def cmd_data(args: argparse.Namespace) -> int:
    from harness.data.datasets import default_data_root

    root = args.data_root or default_data_root()
    if args.dataset == "fineweb":
        from harness.data.fineweb import fetch_fineweb

        fetch_fineweb(root, args.train_shards, args.variant)
    else:
        from harness.data.datasets import resolve_dataset

        ds = resolve_dataset(args.dataset, root)
        print(f"{ds.name}: {ds.directory} ({len(ds.train_files)} train / {len(ds.val_files)} val shards, "
              f"vocab {ds.tokenizer.vocab_size}, hash {ds.content_hash[:12]})")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    import polars as pl

    from harness.results import STATUSES, default_results_dir, results_table

    unknown = sorted(set(args.status.split(",")) - set(STATUSES)) if args.status else []
    if unknown:
        raise UserError(f"--status {unknown[0]!r} is not a run status; use one of: {', '.join(STATUSES)}")
    df = results_table(args.results_dir or default_results_dir(), args.variant, args.budget, args.status)
    if df.is_empty():
        print("no runs recorded yet (python -m harness run --variant baseline --budget smoke makes one)")
        return 0
    with pl.Config(tbl_rows=args.limit, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=60):
        print(df.head(args.limit))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, extra = build_parser().parse_known_args(argv)
        if args.command == "run":
            return cmd_run(args, extra)
        if extra:
            raise UserError(f"unrecognized arguments: {' '.join(extra)}")
        return {"data": cmd_data, "results": cmd_results}[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
