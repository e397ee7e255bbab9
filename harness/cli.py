"""Command line: `python -m harness run | list | show | check | data | results | report | sweep | status | watch |
tune | export`.

Parsing turns words into a RunSpec; every user mistake becomes one line on stderr and exit code 2. Variant
parameters are not declared here: they are derived from the variant's config dataclass, so a new field is a
new flag with no other change.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import signal
import sys
import typing
from pathlib import Path

from harness.checks import check_seed, number_arg, safe_name
from harness.errors import UserError

COUNT = number_arg(int, 1)
FRACTION = number_arg(float, 0, 1, above=True)


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)  # a misspelt flag must never match a real one

    def error(self, message: str) -> typing.NoReturn:
        command = " ".join(self.prog.split()[1:])  # "harness run" → "run"; the top level has none
        raise UserError(f"{message} (see: python -m harness {command + ' ' if command else ''}--help)")


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
    from harness.data.names import dataset_name_arg

    parser = Parser(prog="harness", description="Train, score and record small LMs the parameter-golf way.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    run = sub.add_parser("run", help="train one variant under a budget and record the result",
                         description="Any other --name value pair sets a parameter of the variant's config.")
    run.add_argument("--variant", required=True,
                     help="family name, name:preset, path to a plugin .py file, or script:PATH to run a challenge "
                          "submission's train_gpt.py unchanged (its --name value pairs become NAME=value variables)")
    run.add_argument("--preset", help="a named configuration of the variant (or of --preset-file)")
    run.add_argument("--preset-file", type=Path, help="a TOML file of [presets.NAME] tables, such as the one tune "
                                                      "writes (default preset: best)")
    run.add_argument("--budget", required=True, help="budget name (budgets/NAME.toml) or path to a .toml file")
    run.add_argument("--seed", type=int, default=1337, help="training seed: the init and the run id (default 1337)")
    run.add_argument("--run-id", help="name of the results folder (default: time, variant, budget, seed, hash)")
    run.add_argument("--results-dir", type=Path, help="where run folders go (default: results/)")
    run.add_argument("--data-root", type=Path, help="root of data/ (default: data/ or $HARNESS_DATA_ROOT)")
    run.add_argument("--data-dir", type=Path, help="an explicit dataset directory of *_train_*/*_val_* shards")
    run.add_argument("--tokenizer", type=Path, help="SentencePiece .model for --data-dir")
    run.add_argument("--dataset", type=dataset_name_arg,
                     help="another tokenization of the budget's data, e.g. builtin_sp4096 or "
                                       "fineweb_sp8192 (the vocabulary follows unless --vocab-size is given)")
    run.add_argument("--device", choices=("cpu", "cuda"), help="override the budget's device kind")
    run.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                     help="torch.compile the model (default: on for CUDA, off for CPU)")
    run.add_argument("--precision", choices=("challenge", "fp32"),
                     help="challenge: train_gpt.py's bf16 embedding and RoPE tables, fp32 matrices, bf16 autocast "
                          "(default on CUDA); fp32: fp32 master weights everywhere (default on CPU)")
    run.add_argument("--max-steps", type=COUNT, help="stop after this many steps even if the clock allows more")
    run.add_argument("--no-preflight", dest="preflight", action="store_false",
                     help="skip the conformance checks before training (debugging a plugin); the run is recorded "
                          "as unverified and never ranked")
    run.add_argument("--with", dest="with_", metavar="T1,T2",
                     help="training-only techniques to apply, in their documented order (python -m harness list "
                          "shows them and their flags); each is proven not to change the artifact or inference")
    run.add_argument("--keep-weights", action="store_true",
                     help="also save the trained full-precision weights (weights.pt) to export them again under "
                          "other schemes (bench/export_schemes.py)")
    run.add_argument("--tensorboard", type=Path, metavar="DIR",
                     help="also write the curve's scalars as TensorBoard event files in DIR/<run_id>/ "
                          "(needs: pip install tensorboard)")
    run.add_argument("--quiet", action="store_true", help="print only the final line")
    run.add_argument("--note", help="free text kept in the record and shown in reports (what this run is for)")

    sub.add_parser("list", help="every variant family with its parameters (defaults, help) and presets")

    show = sub.add_parser("show", help="a variant's resolved config, stored parameters and estimated artifact bytes",
                          description="Builds the model without training. Any other --name value pair sets a "
                                      "parameter of the variant's config, as for run.")
    show.add_argument("variant", help="family name, name:preset, or path to a plugin .py file")
    show.add_argument("--preset", help="a named configuration of the variant")
    show.add_argument("--budget", help="apply this budget's [model] sizes and artifact cap (default: none, cap 16MB)")
    show.add_argument("--seed", type=int, default=1337, help="training seed the model is initialised with, as run's")
    show.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    show.add_argument("--with", dest="with_", metavar="T1,T2",
                      help="training-only techniques: shown with their parameters and proven at this config")

    chk = sub.add_parser("check", help="every conformance check on a variant or plugin file, a line each",
                         description="Any other --name value pair sets a parameter of the variant's config, as for "
                                     "run. Exit 1 names each failed check.")
    chk.add_argument("variant", help="family name, name:preset, or path to a plugin .py file")
    chk.add_argument("--preset", help="a named configuration of the variant")
    chk.add_argument("--budget", help="check at this budget's seq_len and [model] options (default: smoke)",
                     default="smoke")
    chk.add_argument("--with", dest="with_", metavar="T1,T2",
                     help="training-only techniques: their proof is checked too")

    data = sub.add_parser("data", help="fetch or build datasets")
    data.add_argument("dataset", metavar="NAME", type=dataset_name_arg,
                      help="builtin (sp1024), builtin_sp<N>, synthetic, fineweb (fetched; --variant), "
                           "fineweb_<variant>, or <name>_bytes: the byte form of a token dataset, derived from it once")
    data.add_argument("--vocab", type=number_arg(int, 1), metavar="N",
                      help="build the builtin corpus with an N-piece tokenizer (the same as builtin_sp<N>)")
    data.add_argument("--train-shards", type=number_arg(int, 0), default=80,
                      help="FineWeb training shards to fetch (of 195)")
    data.add_argument("--variant", help="FineWeb tokenization: sp1024 (default), sp<N> or byte260")
    data.add_argument("--hf-repo", metavar="OWNER/NAME",
                      help="Hugging Face dataset repo to fetch FineWeb from (default: where the variant was published: "
                           "kevclark/parameter-golf for sp4096 and sp8192, else willdepueoai/parameter-golf)")
    data.add_argument("--data-root", type=Path, help="root of data/ (default: data/ or $HARNESS_DATA_ROOT)")

    res = sub.add_parser("results", help="table of recorded runs, best first, fitted to the terminal")
    res.add_argument("--variant", help="comma-separated variant names")
    res.add_argument("--budget", help="comma-separated budget names")
    res.add_argument("--status", help="comma-separated statuses (ok, over_cap, diverged, interrupted, failed, ...)")
    res.add_argument("--results-dir", type=Path)
    res.add_argument("--limit", type=COUNT, default=50, help="rows to print")
    res.add_argument("--columns", metavar="A,B,C",
                     help="columns to show, in order: run, label, status, val_bpb, delta, bytes, tok_s, steps, flags, "
                          "seed, budget, variant, train_s")
    res.add_argument("--sort", metavar="COL", help="sort by a column, descending with a leading - written as "
                                                   "--sort=-COL (default: best val_bpb first, failures last)")
    res.add_argument("--json", action="store_true", help="a JSON list of rows with every value whole")
    res.add_argument("--csv", action="store_true", help="CSV with every value whole")

    rep = sub.add_parser("report", help="turn run records into an HTML report (or a Markdown summary)")
    rep.add_argument("--results-dir", type=Path, help="where run folders are (default: results/)")
    rep.add_argument("--budget", help="comma-separated budget names to include (default: all)")
    rep.add_argument("--variant", help="comma-separated variant names to include (default: all)")
    rep.add_argument("--sweep", help="only the runs of this sweep (a sweep's own page)")
    rep.add_argument("--study", help="only the trials of this tuning study (a study's own page)")
    rep.add_argument("--out", type=Path, help="HTML file to write (default: reports/index.html); with --format md, "
                                              "a Markdown file (default: print it)")
    rep.add_argument("--format", choices=("html", "md"), default="html")
    rep.add_argument("--contended-below", type=FRACTION, default=0.10,
                     metavar="FRACTION",
                     help="flag (and never rank) runs whose machine probe is this fraction below their "
                          "leaderboard's median (default 0.10)")

    sw = sub.add_parser("sweep", help="run a grid of runs (a sweep file or --variant/--grid) locally or on SLURM",
                        description="Any other --name value pair fixes a parameter of --variant for every run.")
    sw.add_argument("spec", nargs="?", type=Path, help="a sweep TOML file (sweeps/*.toml); or use --variant")
    sw.add_argument("--variant", help="family (name or name:preset) for a command-line grid")
    sw.add_argument("--preset", help="comma-separated presets of --variant to sweep over")
    sw.add_argument("--grid", action="append", default=[], help="NAME=V1,V2,... (repeatable; every combination)")
    sw.add_argument("--with", dest="with_", action="append",
                    help="a combination of training-only techniques to sweep over, as run's --with takes it "
                         "(repeatable; --with '' is the plain variant): --with '' --with mtp --with mtp,mtp_heads")
    sw.add_argument("--seeds", type=COUNT, help="seeds 1..N for every run (overrides the file's seeds)")
    sw.add_argument("--max-steps", type=COUNT, help="cap every run's steps (recorded as an override of the budget)")
    sw.add_argument("--budget", help="budget for a command-line grid")
    sw.add_argument("--name", help="sweep name (default: the file's name, or VARIANT-BUDGET)")
    sw.add_argument("--executor", choices=("debug", "local", "slurm"), default="local")
    sw.add_argument("--parallel", type=COUNT, default=1, help="local executor: runs at a time")
    add_slurm_flags(sw, "SLURM: added to the budget's time limit")
    sw.add_argument("--max-concurrent", type=COUNT, help="SLURM array: jobs running at once (default 32)")
    sw.add_argument("--dry-run", action="store_true",
                    help="print the plan (and, for --executor slurm, the sbatch script) and run nothing")
    sw.add_argument("--wait", action="store_true", help="follow progress until every run ends, then build the report")
    sw.add_argument("--results-dir", type=Path, help="where run folders go (default: results/)")

    tu = sub.add_parser("tune", help="search a variant's hyperparameters with Optuna; each trial is a run",
                        description="Any other --name value pair fixes a parameter of the variant for every trial.")
    tu.add_argument("--variant", required=True, help="family name, name:preset, or path to a plugin .py file")
    tu.add_argument("--preset", help="start every trial from this preset of the variant")
    tu.add_argument("--budget", required=True, help="budget every trial trains under (one device)")
    tu.add_argument("--trials", type=COUNT, default=20, help="trials that complete, prune or fail on their own")
    tu.add_argument("--objectives", default="val_bpb",
                    help="val_bpb (TPE), or val_bpb plus artifact_bytes and/or tokens_per_second (NSGA-II)")
    tu.add_argument("--search", action="append", default=[], metavar="NAME=SPEC",
                    help="add or narrow a dimension: NAME=LOW..HIGH, NAME=LOW..HIGH:log, NAME=A,B,C, or a "
                         "trainer lever by name (muon_weight_decay, adam_weight_decay, min_lr, late_qat, "
                         "muon_momentum_warmup_start, export) (repeatable)")
    tu.add_argument("--only", help="comma-separated dimensions to keep (the rest of the space keeps defaults)")
    tu.add_argument("--with", dest="with_", metavar="T1,T2",
                    help="training-only techniques every trial uses; their search spaces join the study's")
    tu.add_argument("--search-with", metavar="T1,T2",
                    help="training-only techniques each trial turns on or off (a with_NAME dimension each; their "
                         "parameters searched while on)")
    tu.add_argument("--pruner", choices=("median", "hyperband", "none"),
                    help="median (default for one objective), hyperband, none")
    tu.add_argument("--report-at", default="0.25,0.5,0.75",
                    help="fractions of the budget at which trials report val_bpb to the pruner")
    tu.add_argument("--storage", help="sqlite (default), journal (default on SLURM), a .db/.journal file, or a "
                                      "database URL")
    tu.add_argument("--name", help="study name (default: VARIANT-BUDGET); re-running a name resumes it")
    tu.add_argument("--executor", choices=("local", "slurm"), default="local")
    tu.add_argument("--workers", type=COUNT, default=1, help="trials running at once (local processes or SLURM jobs)")
    tu.add_argument("--seed", type=int, default=1337, help="training seed of every trial")
    tu.add_argument("--sampler-seed", type=number_arg(int, 0, 2**32 - 1),
                    help="seed of the sampler (worker k uses seed + k)")
    tu.add_argument("--max-steps", type=COUNT, help="cap every trial's steps (quick studies, tests)")
    tu.add_argument("--reeval-top", type=number_arg(int, 0), default=0,
                    help="re-run the best K configurations over more seeds")
    tu.add_argument("--reeval-seeds", type=COUNT, default=3,
                    help="seeds per re-evaluated configuration, its own included")
    tu.add_argument("--heartbeat-grace", type=number_arg(float, 0, above=True), default=120.0,
                    help="seconds without a heartbeat before a trial's worker counts as lost")
    add_slurm_flags(tu, "SLURM: added to each worker's time limit")
    tu.add_argument("--time-minutes", type=COUNT, help="SLURM: each worker's time limit (default: its share of trials)")
    tu.add_argument("--wait", action="store_true", help="SLURM: follow the study until it ends, then write the outcome")
    tu.add_argument("--dry-run", action="store_true", help="print the study's settings and search space (and, for "
                                                           "--executor slurm, the sbatch script), run nothing")
    tu.add_argument("--results-dir", type=Path, help="where run folders and studies/ go (default: results/)")

    st = sub.add_parser("status", help="one run's progress, or a sweep's runs or a study's trials: done, running, "
                                       "failed (with reasons)")
    st.add_argument("sweep", metavar="NAME", help="a run id (results/RUN_ID/), a sweep or a study name "
                                                  "(results/sweeps/NAME.json, results/studies/NAME.json)")
    st.add_argument("--results-dir", type=Path)

    wa = sub.add_parser("watch", help="live progress bars of running runs, redrawn until they end")
    wa.add_argument("name", nargs="?", metavar="RUN_ID|SWEEP", help="a run or a sweep (default: every running run)")
    wa.add_argument("--interval", type=number_arg(float, 0, above=True), default=2.0,
                    help="seconds between redraws (default 2)")
    wa.add_argument("--once", action="store_true", help="print one snapshot and exit")
    wa.add_argument("--results-dir", type=Path)

    ex = sub.add_parser("export", help="a finished run as a parameter-golf record folder: README.md, "
                                       "submission.json, train.log and one self-contained train_gpt.py")
    ex.add_argument("run_id", help="a run folder's name in the results folder, or the path of a run folder")
    ex.add_argument("--out", type=Path, required=True, help="the record folder to write (new, or empty)")
    ex.add_argument("--results-dir", type=Path, help="where run folders are (default: results/)")
    ex.add_argument("--name", help="the submission's name (default: variant, preset and budget)")
    ex.add_argument("--author", help="the submission's author")
    ex.add_argument("--github-id", help="the author's GitHub id")
    return parser


def add_slurm_flags(parser: argparse.ArgumentParser, margin_help: str) -> None:
    parser.add_argument("--partition", help="SLURM partition")
    parser.add_argument("--account", help="SLURM account")
    parser.add_argument("--qos", help="SLURM QOS")
    parser.add_argument("--cpus-per-task", type=COUNT, help="SLURM CPUs per task")
    parser.add_argument("--mem-gb", type=number_arg(float, 0, above=True), help="SLURM memory per node, GB")
    parser.add_argument("--margin-minutes", type=number_arg(float, 0), help=margin_help + " (default 10)")
    parser.add_argument("--gres", help="SLURM generic resources per node, name[:type]:count (gpu:h100:8); a GPU "
                                       "count replaces the budget's --gpus-per-node and must equal its devices")
    parser.add_argument("--constraint", help="SLURM node features the jobs need (h100&ib)")
    parser.add_argument("--exclude", help="SLURM nodes never to use (node[01-03],node07)")
    parser.add_argument("--nodelist", help="SLURM nodes to use")
    parser.add_argument("--sbatch", action="append", metavar="OPTION",
                        help="an extra sbatch option, as '--mail-type=END' (repeatable)")
    parser.add_argument("--setup", action="append", metavar="LINE",
                        help="a shell line each job runs first, as 'module load cuda/12.4' (repeatable, in order)")


RAW_VALUE_FLAGS = ("--sbatch", "--setup")


def raw_values(argv: list[str]) -> list[str]:
    """`--sbatch --mail-type=END` → `--sbatch=--mail-type=END`: these flags take the next word as it is, though
    it starts with dashes (argparse would take it for a flag of its own)."""
    out: list[str] = []
    words = iter(argv)
    for word in words:
        out.append(f"{word}={next(words, '')}" if word in RAW_VALUE_FLAGS else word)
    return out


def slurm_options(args: argparse.Namespace, table: dict | None = None):
    """The SLURM options: a sweep file's [slurm] table, each replaced by the command line's where given."""
    from harness.sweep.slurm import merge

    given = {key: getattr(args, key, None) for key in (
        "partition", "account", "qos", "cpus_per_task", "mem_gb", "max_concurrent", "margin_minutes", "gres",
        "constraint", "exclude", "nodelist", "sbatch", "setup")}
    return merge(table or {}, given)


def results_folder(args: argparse.Namespace, writing: bool) -> Path:
    """--results-dir (or the default), checked: a folder to write runs into, or to read records from."""
    from harness.checks import readable_folder, writable_folder
    from harness.results import default_results_dir

    path = args.results_dir or default_results_dir()
    return writable_folder(path, "--results-dir", create=False) if writing else readable_folder(path, "--results-dir")


def check_data_paths(args: argparse.Namespace) -> None:
    from harness.checks import existing_file, writable_folder

    if args.data_root is not None:
        writable_folder(args.data_root, "--data-root", create=False)
    if args.data_dir is not None and args.data_dir.exists() and not args.data_dir.is_dir():
        raise UserError(f"--data-dir {args.data_dir} is a file; give the folder of *_train_*/*_val_* shards")
    if args.tokenizer is not None:
        existing_file(args.tokenizer, "SentencePiece .model", "--tokenizer")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def resolve_variant(variant_arg: str, preset_arg: str | None, budget, extra: list[str],
                    preset_file: Path | None = None):
    """(variant, preset, flags, config) from `--variant name[:preset]`, `--preset`, `--preset-file` and the
    remaining flags."""
    from harness.registry import get_variant

    variant, preset = get_variant(variant_arg)
    if preset_arg and preset and preset_arg != preset:
        raise UserError(f"two presets given: {variant_arg} and --preset {preset_arg}; keep one")
    preset = preset_arg or preset
    flags = parse_config_flags(variant.config_cls, extra)
    values = None
    if preset_file is not None:
        from harness.checks import existing_file

        existing_file(preset_file, "preset TOML", "--preset-file")
        preset, values = load_preset_file(preset_file, variant, preset)
    config = variant.resolve(preset, budget.model if budget else None, flags, budget.name if budget else "budget",
                             values)
    return variant, preset, flags, config


def load_preset_file(path: Path, variant, name: str | None) -> tuple[str, dict]:
    """A preset file (`tune` writes results/studies/NAME.presets.toml) → ("study/name", its values)."""
    from harness.config import read_toml
    from harness.registry import get_variant

    data = read_toml(path, "preset file")
    presets = data.get("presets")
    if not isinstance(presets, dict) or not presets or not all(isinstance(v, dict) for v in presets.values()):
        raise UserError(f"preset file {path} has no [presets.NAME] tables")
    if "variant" in data and get_variant(str(data["variant"]))[0].name != variant.name:
        raise UserError(f"preset file {path} is for variant {data['variant']!r}, not {variant.name!r}; "
                        f"pass --variant {Path(str(data['variant'])).stem}")
    name = name or ("best" if "best" in presets else next(iter(presets)) if len(presets) == 1 else None)
    if name not in presets:
        raise UserError(f"preset file {path} has no preset {name!r}; presets: {', '.join(presets)} "
                        f"(pick one with --preset)")
    return f"{data.get('study', path.stem)}/{name}", presets[name]


def technique_flags(words: list[str], specs) -> tuple[list[str], dict[str, typing.Any]]:
    """Split the free flags into the variant's and the techniques' (whose fields are named after them)."""
    from harness.config import field_type

    owner = {f.name: spec.config_cls for spec in specs for f in dataclasses.fields(spec.config_cls)}
    rest: list[str] = []
    values: dict[str, typing.Any] = {}
    i = 0
    while i < len(words):
        word = words[i]
        key = word[2:].partition("=")[0].replace("-", "_") if word.startswith("--") else None
        if key not in owner:
            rest.append(word)
            i += 1
            continue
        take = [word]
        nxt = words[i + 1] if i + 1 < len(words) else None
        if "=" not in word and nxt is not None and not (field_type(owner[key], key) is bool and nxt.startswith("--")):
            take.append(nxt)
        values.update(parse_config_flags(owner[key], take))
        i += len(take)
    return rest, values


def resolve_with_techniques(args: argparse.Namespace, budget, extra: list[str], preset_file: Path | None = None):
    """(variant, preset, config, applied techniques) from --variant, --preset, --with and the free flags, each
    flag going to the variant or to the technique whose field it names."""
    from harness import techniques

    specs = techniques.parse_with(args.with_)
    extra, flags = technique_flags(extra, specs)
    variant, preset, variant_flags, config = resolve_variant(args.variant, args.preset, budget, extra, preset_file)
    clash = sorted({f.name for f in dataclasses.fields(config)} & set(flags))
    if clash:
        raise UserError(f"--{clash[0].replace('_', '-')} is both a parameter of {variant.name} and of a technique")
    return variant, preset, config, techniques.resolve(specs, flags), variant_flags


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    if args.variant.startswith("script:"):  # a submission's train_gpt.py, run unchanged (harness/script_run.py)
        from harness.script_run import run_script_command

        signal.signal(signal.SIGTERM, _interrupt)
        return run_script_command(args, extra)
    if args.tensorboard is not None:  # refused before anything is loaded
        from harness.live import check_tensorboard

        check_tensorboard()
    from harness.budget import load_budget, with_dataset
    from harness.train import RunSpec, run

    budget = load_budget(args.budget)
    if args.dataset:
        budget = with_dataset(budget, args.dataset)
    variant, preset, config, applied, _ = resolve_with_techniques(args, budget, extra, args.preset_file)
    if args.run_id is not None:
        safe_name(args.run_id, "--run-id")
    check_seed(args.seed)
    check_data_paths(args)
    spec = RunSpec(variant=variant, config=config, budget=budget, preset=preset, seed=args.seed, run_id=args.run_id,
                   results_dir=results_folder(args, writing=True), data_root=args.data_root, data_dir=args.data_dir,
                   tokenizer=args.tokenizer, device=args.device, compile=args.compile, precision=args.precision,
                   max_steps=args.max_steps, preflight=args.preflight, techniques=applied,
                   quiet=args.quiet, note=args.note, keep_weights=args.keep_weights, tensorboard=args.tensorboard)
    # SLURM and other schedulers stop jobs with SIGTERM: record those runs as interrupted, like Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    record = run(spec)
    return 0 if record["status"] in ("ok", "over_cap", "over_eval_limit") else 1


def flag_line(f: dataclasses.Field, default) -> str:
    meta = f.metadata
    low, high = ("" if meta.get(k) is None else meta[k] for k in ("low", "high"))
    bounds = (f" [{', '.join(map(str, meta['choices']))}]" if meta.get("choices") else
              f" [{low}..{high}]" if (low, high) != ("", "") else "")
    value = ",".join(map(str, default)) if isinstance(default, tuple) else default
    return f"    --{f.name.replace('_', '-'):<28} {str(value):<10} {meta.get('help', '')}{bounds}"


def cmd_list(args: argparse.Namespace) -> int:
    from harness.model import GPTConfig
    from harness.registry import get_variant, known_variant_names

    common = {f.name for f in dataclasses.fields(GPTConfig)}
    print("Common parameters (every variant takes these; a variant may change a default):")
    for f in dataclasses.fields(GPTConfig):
        print(flag_line(f, f.default))
    from harness.model import SHARED_PRESETS

    for preset in SHARED_PRESETS:  # listed once here, with their values under baseline below
        print(f"Every variant also takes --preset {preset} (docs/LEVERS.md).")
    for name in known_variant_names():
        variant, _ = get_variant(name)
        summary = variant.doc.strip().splitlines()[0] if variant.doc.strip() else ""
        print(f"\n{summary or name}")
        defaults = variant.config_cls()
        own = [f for f in dataclasses.fields(variant.config_cls)
               if f.name not in common or getattr(defaults, f.name) != f.default]
        if own:
            print("  parameters:")
            for f in own:
                print(flag_line(f, getattr(defaults, f.name)))
        if variant.space:
            from harness.tune.space import describe

            print(f"  search space (tune; plus the optimizer's): {'; '.join(describe(variant.space))}")
        for preset, values in variant.presets.items():
            text = " ".join(f"--{k.replace('_', '-')} {','.join(map(str, v)) if isinstance(v, tuple | list) else v}"
                            for k, v in values.items())
            print(f"  preset {name}:{preset:<14} {text}")
    from harness.techniques import get_technique, known_technique_names

    print("\nTraining-only techniques (run --with NAME[,NAME...]; applied in this order; each proven per run to "
          "leave the artifact and inference unchanged):")
    for name in sorted(known_technique_names(), key=lambda n: (get_technique(n).order, n)):
        spec = get_technique(name)
        print(f"\n{spec.name} (order {spec.order}): {' '.join(spec.doc.split())}")
        defaults = spec.config_cls()
        for f in dataclasses.fields(spec.config_cls):
            print(flag_line(f, getattr(defaults, f.name)))
        if spec.space:
            from harness.tune.space import describe

            print(f"  search space (tune): {'; '.join(describe(spec.space))}")
        for preset, values in spec.presets.items():
            flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items())
            print(f"  preset {name}:{preset:<14} {flags}")
    return 0


def cmd_show(args: argparse.Namespace, extra: list[str]) -> int:
    import json

    import torch

    from harness import artifact, hooks
    from harness.budget import load_budget
    from harness.config import as_dict
    from harness.train import RunSpec, build_model, submission_script_size

    budget = load_budget(args.budget) if args.budget else None
    variant, preset, config, applied, flags = resolve_with_techniques(args, budget, extra)
    check_seed(args.seed)
    model = build_model(variant, config, args.seed, torch.device("cpu"), "fp32")
    state = hooks.exported_state(model)
    persistent = set(model.state_dict())
    code_files = artifact.model_source_files(model, variant.source_file)
    code_files += sorted({Path(spec.source_file) for spec, _ in applied} - set(code_files))  # as a run counts them
    # as a run of it would count: its export scheme (without calibration: no data here), the script of record
    script = submission_script_size(RunSpec(variant=variant, config=config, budget=budget or load_budget("10min"),
                                            preset=preset, seed=args.seed, techniques=applied), code_files)
    size = artifact.measure(artifact.compress(state, config.export), code_files,
                            budget.code_bytes if budget else "submission", script)
    cap = budget.artifact_cap_bytes if budget else 16_000_000
    preset_values = variant.all_presets().get(preset, {}) if preset else {}
    sources = {k: ("flag" if k in flags else "preset" if k in preset_values else
                   "budget" if budget and k in budget.model else "default") for k in as_dict(config)}
    info = {"variant": variant.name, "preset": preset, "budget": budget.name if budget else None,
            "config": as_dict(config), "sources": sources,
            "param_count": sum(p.numel() for p in model.parameters()),
            "stored_param_count": artifact.stored_numel(state),
            "regenerated_numel": sum(b.numel() for n, b in model.named_buffers() if n not in persistent
                                     and b.is_floating_point()),
            "artifact_model_bytes_at_init": size.model_bytes, "artifact_code_bytes": size.code_bytes,
            "artifact_code_counted": size.code_counted, "artifact_model_code_bytes": size.model_code_bytes,
            "artifact_submission_code_bytes": size.submission_code_bytes,
            "artifact_total_bytes_at_init": size.total_bytes, "artifact_cap_bytes": cap}
    if applied:  # what the techniques add in training, and their proof at this config
        from harness.techniques import TechniqueStack
        from harness.techniques.proof import proof_tables, prove

        # on the model already measured above: the stack's hooks change nothing that was counted
        stack = TechniqueStack(applied, model, config, {"tables": proof_tables(config.vocab_size)})
        info["techniques"] = [{"name": s.name, **({"preset": s.preset} if s.preset else {}), "config": as_dict(c)}
                              for s, c in applied]
        info["technique_parameters"] = sum(p.numel() for p in stack.trainable())
        info["technique_proof"] = prove(variant, config, applied)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{variant.name}{':' + preset if preset else ''}" + (f" under budget {budget.name}" if budget else ""))
    for k, v in info["config"].items():
        print(f"  {k:<30} {','.join(map(str, v)) if isinstance(v, list) else v!s:<14} {sources[k]}")
    print(f"trainable parameters  {info['param_count']:>13,}")
    print(f"stored numbers        {info['stored_param_count']:>13,}   (floats in the artifact)")
    if info["regenerated_numel"]:
        print(f"regenerated numbers   {info['regenerated_numel']:>13,}   (rebuilt from the config or a stored seed)")
    fits = "fits" if size.total_bytes <= cap else "OVER"
    print(f"artifact at init      {size.total_bytes:>13,} bytes = model {size.model_bytes:,} + {size.code_counted} "
          f"code {size.code_bytes:,}; cap {cap:,} ({fits}; trained weights usually compress less well)")
    print(f"code bytes            model files {size.model_code_bytes:,}; with the harness's trainer (as a "
          f"submission counts its script) {size.submission_code_bytes:,}")
    for t in info.get("techniques", []):
        print(f"technique {t['name']:<20} " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in t["config"].items()))
    if applied:
        proof = info["technique_proof"]
        print(f"training only         {info['technique_parameters']:>13,}   (parameters the techniques train, never "
              f"stored)")
        print(f"proof                 training-only: {proof['state']}, eval FLOPs {proof['eval_flops']:,} at seq_len "
              f"{proof['seq_len']} as without them, logits {proof['logits']} ({proof['seconds']:.1f}s)")
    return 0


def cmd_check(args: argparse.Namespace, extra: list[str]) -> int:
    from harness import conformance
    from harness.budget import load_budget

    budget = load_budget(args.budget)
    variant, preset, config, applied, _ = resolve_with_techniques(args, budget, extra)
    findings, summary = conformance.preflight(variant, config, budget.seq_len, full=True,
                                              build_seconds_limit=budget.build_seconds_limit)
    if applied:  # the techniques' proof is one more check: refused, it is a finding like the others
        from harness.techniques.proof import prove

        summary["checks"].append("techniques training-only")
        try:
            prove(variant, config, applied)
        except UserError as exc:
            findings.append(conformance.Finding("techniques training-only", str(exc)))
    first = {f.check: f.problem for f in reversed(findings)}
    failed = {check: first[check] for check in summary["checks"] if check in first}
    for check in summary["checks"]:
        print(f"{'FAIL' if check in failed else 'ok  '}  {check}" + (f": {failed[check]}" if check in failed else ""))
    where = f"{variant.name}{':' + preset if preset else ''} at seq_len {budget.seq_len} (and {summary['lengths']})"
    print(f"{len(summary['checks']) - len(failed)}/{len(summary['checks'])} checks passed for {where} in "
          f"{summary['seconds']:.1f}s")
    if failed:
        print(f"error: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from harness.data.datasets import default_data_root

    root = args.data_root or default_data_root()
    from harness.checks import writable_folder

    writable_folder(root, "--data-root", create=False)
    name, form = args.dataset.removesuffix("_bytes"), "_bytes" if args.dataset.endswith("_bytes") else ""
    if args.vocab is not None:
        if name != "builtin":
            raise UserError(f"--vocab sets the builtin corpus's vocabulary, not {args.dataset}'s; FineWeb's are "
                            f"--variant sp<N>")
        name = f"builtin_sp{args.vocab}"
    variant = args.variant
    if name.startswith("fineweb_"):  # fineweb_sp4096 is fineweb --variant sp4096
        named = name.removeprefix("fineweb_")
        if variant and variant != named:
            raise UserError(f"{args.dataset} names variant {named}, but --variant says {variant}; give one of them")
        name, variant = "fineweb", named
    if (args.hf_repo or variant) and name != "fineweb":
        raise UserError(f"--variant and --hf-repo choose a FineWeb export; {args.dataset} is built here")
    variant = variant or "sp1024"
    if name == "fineweb" and not form:
        from harness.data.fineweb import fetch_fineweb

        fetch_fineweb(root, args.train_shards, variant, repo_id=args.hf_repo)
    else:
        from harness.data.datasets import resolve_dataset, validation_counts

        ds = resolve_dataset(f"fineweb_{variant}{form}" if name == "fineweb" else name + form, root)
        val_tokens, val_bytes = validation_counts(ds)
        print(f"{ds.name}: {ds.directory} ({len(ds.train_files)} train / {len(ds.val_files)} val shards, "
              f"vocab {ds.tokenizer.vocab_size}, hash {ds.content_hash[:12]}, text "
              f"{ds.text_hash[:12] if ds.text_hash else 'unknown'}); validation: {val_tokens:,} tokens for "
              f"{val_bytes:,} bytes, {val_tokens / max(val_bytes, 1):.3f} tokens per byte")
        if ds.source is not None:
            print(f"byte form of {ds.source.name} (hash {ds.source.content_hash[:12]}): {ds.meta['val_bytes']:,} "
                  f"validation bytes, the challenge's count of its {ds.meta['val_source_tokens']:,} tokens")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from harness.views import results_command

    return results_command(args, results_folder(args, writing=False))


def cmd_report(args: argparse.Namespace) -> int:
    import time

    from harness import REPO_ROOT
    from harness.report import build_markdown, build_report

    results_dir = results_folder(args, writing=False)
    if not 0 < args.contended_below < 1:
        raise UserError(f"--contended-below {args.contended_below} must be a fraction between 0 and 1 (e.g. 0.1)")
    if args.format == "md":
        text = build_markdown(results_dir, args.budget, args.variant, args.contended_below, args.sweep, args.study)
        if args.out:
            from harness.report import claim_outputs, remember_outputs, write_text

            manifest = claim_outputs(args.out, results_dir)
            write_text(args.out, text)
            remember_outputs(args.out.parent, manifest, [args.out])
            print(f"wrote {args.out}")
        else:
            print(text)
        return 0
    out = args.out or REPO_ROOT / "reports" / "index.html"
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {out / 'index.html'}")
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out {out} should end in .html (use --format md for Markdown)")
    t0 = time.perf_counter()
    from harness.report import Progress

    built = build_report(results_dir, out, args.budget, args.variant, args.contended_below, args.sweep, args.study,
                         progress=Progress())
    print(f"wrote {built.index} ({built.runs:,} runs, {built.run_pages:,} run pages, "
          f"{', '.join(p.name for p in built.exports)}) in {time.perf_counter() - t0:.1f}s")
    return 0


def cmd_sweep(args: argparse.Namespace, extra: list[str]) -> int:
    from harness import sweep as sw
    from harness.sweep.spec import expand, load_spec_file, parse_grid

    slurm_options(args)  # a bad SLURM flag is refused before the plan is made (the plan may take a while)
    if args.spec is not None:
        if args.variant or args.grid or extra or args.with_:
            raise UserError("give either a sweep file or --variant/--grid/--with/parameters, not both")
        plan = load_spec_file(args.spec, args.seeds, args.name, args.max_steps)
    else:
        if not args.variant or not args.budget:
            raise UserError("a command-line sweep needs --variant and --budget (or give a sweep file)")
        from harness import techniques
        from harness.registry import get_variant

        variant, preset = get_variant(args.variant)
        specs = [s for w in args.with_ or [] for s in techniques.parse_with(w)]
        extra, tech_fixed = technique_flags(extra, list({s.name: s for s in specs}.values()))
        fixed = {**parse_config_flags(variant.config_cls, extra), **tech_fixed}
        entry = {"variant": args.variant.split(":")[0] if preset else args.variant, "grid": parse_grid(args.grid),
                 "params": fixed}
        if args.with_:
            entry["with"] = args.with_
        if args.preset or preset:
            entry["presets"] = (args.preset or preset).split(",")
        name = args.name or f"{variant.name}-{Path(args.budget).stem}"
        plan = expand(name, [entry], args.budget, list(range(1, (args.seeds or 1) + 1)), "command line",
                      args.max_steps)
    results_dir = results_folder(args, writing=True)
    options = slurm_options(args, plan.slurm)
    if args.executor == "slurm" and not args.dry_run:
        import shutil

        if shutil.which("sbatch") is None:
            raise UserError("--executor slurm needs SLURM's sbatch on PATH; use --executor local on this machine")
    sw.submit(plan, results_dir, args.executor, args.parallel, options, args.dry_run)
    if args.dry_run:
        return 0
    if args.wait:
        return sw.follow(plan.name, results_dir)
    if args.executor == "slurm":
        return 0
    return 1 if sw.failures(plan.name, results_dir) else 0  # local runs have ended: any that failed is said


def cmd_tune(args: argparse.Namespace, extra: list[str]) -> int:
    from harness import techniques
    from harness.budget import load_budget
    from harness.tune import launch
    from harness.tune import study as st

    budget = load_budget(args.budget)
    specs = [*sum(launch.technique_choice(args), [])]
    extra, technique_values = technique_flags(extra, specs)
    techniques.resolve(specs, technique_values)  # fixed technique flags are checked before anything is saved
    variant, preset, fixed, _ = resolve_variant(args.variant, args.preset, budget, extra)
    fixed = {**fixed, **technique_values}
    check_seed(args.seed)
    results_dir = results_folder(args, writing=True)
    settings = launch.plan_study(args, fixed, variant, preset, budget, results_dir)
    slurm = slurm_options(args)
    if args.dry_run:
        print(launch.describe(settings, st.Tally()))
        if args.executor == "slurm":
            print(launch.sbatch_preview(settings, args.workers, slurm, args.time_minutes))
        return 0
    if args.executor == "slurm":
        import shutil

        if shutil.which("sbatch") is None:
            raise UserError("--executor slurm needs SLURM's sbatch on PATH; use --executor local on this machine")
    print(f"tune: opening the study's storage ({settings.storage}) …", flush=True)
    study = st.open_study(settings)  # a storage that cannot be opened is refused before anything is saved
    path = st.save_settings(settings)
    print(launch.describe(settings, st.tally(study)), flush=True)
    if args.executor == "local":
        launch.run_local(path, settings, args.workers)
    else:
        launch.run_slurm(path, settings, args.workers, slurm, args.time_minutes)
        if not args.wait and not launch.is_done(settings):
            import shlex

            print(f"follow with: python -m harness {shlex.join(sys.argv[1:])} --wait")
            return 0
        launch.follow(path, settings, args.workers, slurm, args.time_minutes)
    return launch.finish(st.load_settings(path), args.reeval_top, args.reeval_seeds, args.executor, args.workers,
                         slurm)


def cmd_status(args: argparse.Namespace) -> int:
    from harness.views import status_command

    return status_command(args.sweep, results_folder(args, writing=False))


def cmd_watch(args: argparse.Namespace) -> int:
    from harness.views import watch_command

    return watch_command(results_folder(args, writing=False), args.name, args.interval, args.once)


def cmd_export(args: argparse.Namespace) -> int:
    from harness.submission import export_run, find_run

    run_dir = find_run(args.run_id, results_folder(args, writing=False))
    done = export_run(run_dir, args.out, args.name, args.author, args.github_id)
    for warning in done.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {done.folder}: README.md, submission.json, train.log, train_gpt.py ({done.script_bytes:,} bytes)")
    return 0


DEBUG_FLAG = "--debug"
DEBUG_HINT = f"add {DEBUG_FLAG} (or set HARNESS_DEBUG=1) to see the traceback"


def failure_line(exc: BaseException) -> str:
    """A failure that is not the user's input, in one line: what failed, and where when it is a file."""
    from harness.guard import refused_path

    if refused_path(exc):
        return f"the model opened {refused_path(exc)}"
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    import os

    debug = DEBUG_FLAG in argv or os.environ.get("HARNESS_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != DEBUG_FLAG]
    if debug:
        os.environ["HARNESS_DEBUG"] = "1"  # for the worker processes of sweep and tune too
    from harness.results import reset_warnings

    reset_warnings()
    try:
        args, extra = build_parser().parse_known_args(raw_values(argv))
        if args.command in ("run", "show", "sweep", "tune", "check"):
            code = {"run": cmd_run, "show": cmd_show, "sweep": cmd_sweep, "tune": cmd_tune,
                    "check": cmd_check}[args.command](args, extra)
        elif extra:
            raise UserError(f"unrecognized arguments: {' '.join(extra)}")
        else:
            code = {"list": cmd_list, "data": cmd_data, "results": cmd_results,
                    "report": cmd_report, "status": cmd_status, "watch": cmd_watch,
                    "export": cmd_export}[args.command](args)
        sys.stdout.flush()  # here, so that a closed pipe is met below and not at exit
        return code
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `list | head` closed the pipe: stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail again
        return 1
    except Exception as exc:  # not the user's input (a full disk, a dying worker, a bug): one line, exit 1
        if debug:
            raise
        explained = getattr(exc, "explained", False)  # a run that failed says so itself, with its record
        print(f"error: {exc if explained or hasattr(exc, 'explained') else failure_line(exc)}"
              + ("" if explained else f" ({DEBUG_HINT})"), file=sys.stderr)
        return 1
