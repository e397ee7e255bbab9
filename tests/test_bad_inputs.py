"""Bad input, table-driven, across every subcommand and every kind of file the harness reads: each case exits 2
with one line on stderr that names the problem, never a traceback, and leaves the results folder byte-for-byte
as it was (every file hashed before and after).

The folder holds one real finished run from a real one-run sweep, so cases can aim at an existing run id, a
run's own folder and a sweep's state. Paths in the table are templates: {results} (that folder), {run} (the
run's folder), {files} (a folder of broken inputs written once), {tiny} (a tiny valid budget).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from test_cli_errors import assert_one_line_error

from conftest import harness_cli, harness_main, write_budget
from harness.checks import SAFE_NAME
from harness.data.shards import write_shard

RUN = ["run", "--variant", "baseline", "--budget", "{tiny}"]
SHOW = ["show", "baseline"]
SWEEP = ["sweep", "--variant", "baseline", "--budget", "{tiny}", "--dry-run"]
TUNE = ["tune", "--variant", "baseline", "--budget", "{tiny}", "--dry-run"]

# budget file name → lines that replace or add to the tiny budget's
BAD_BUDGETS = {
    "nan_clock": {"train_wallclock_seconds": "nan"}, "inf_clock": {"train_wallclock_seconds": "inf"},
    "zero_clock": {"train_wallclock_seconds": "0"}, "zero_steps": {"max_steps": "0"},
    "negative_seq": {"seq_len": "-4"}, "bool_seq": {"seq_len": "true"}, "float_seq": {"seq_len": "64.5"},
    "string_batch": {"tokens_per_step": '"lots"'}, "zero_devices": {"device_count": "0"},
    "tpu": {"device": '"tpu"'}, "climbing_name": {"name": '"x/../../escape"'}, "number_name": {"name": "42"},
    "empty_name": {"name": '""'}, "dot_name": {"name": '".."'}, "ragged_batch": {"tokens_per_step": "1000"},
    "ragged_micro": {"micro_batch_tokens": "100"}, "zero_log": {"log_every_seconds": "0"},
    "nan_val_every": {"val_every_seconds": "nan"}, "negative_eval": {"eval_seconds_limit": "-1"},
    "zero_cap": {"artifact_cap_bytes": "0"}, "negative_warmup": {"warmup_steps": "-1"},
    "code_all": {"code_bytes": '"all"'}, "numeric_description": {"description": "5"},
    "unknown_dataset": {"dataset": '"nosuch"'}, "list_dataset": {"dataset": "[1]"},
    "huge_seq": {"seq_len": "10000000"},
}
BUDGET_FRAGMENTS = {"unknown_dataset": "unknown dataset 'nosuch'"}  # refused where the dataset is looked up
BAD_MODEL_TABLES = {"model_nan": "matrix_lr = nan", "model_unknown": "rnak = 3", "model_string": 'num_layers = "2"',
                    "model_zero": "num_layers = 0"}

CASES: dict[str, tuple[list[str], list[str]]] = {
    # the command line itself
    "no command": ([], ["required: command", "python -m harness --help"]),
    "unknown command": (["nosuch"], ["invalid choice"]),
    "unknown top-level flag": (["--bogus"], ["required: command"]),
    "run without its flags": (["run"], ["--variant", "--budget"]),
    # run: the variant and its presets
    "unknown variant": (["run", "--variant", "nosuch", "--budget", "{tiny}"], ["unknown variant 'nosuch'"]),
    "variant name that climbs": (["run", "--variant", "../harness/cli", "--budget", "{tiny}"],
                                 ["neither a variant name"]),
    "missing plugin file": (["run", "--variant", "{files}/none.py", "--budget", "{tiny}"], ["does not exist"]),
    "plugin with a syntax error": (["run", "--variant", "{files}/syntax.py", "--budget", "{tiny}"],
                                   ["failed to load (line 2)", "SyntaxError"]),
    "plugin that raises on import": (["run", "--variant", "{files}/raises.py", "--budget", "{tiny}"],
                                     ["failed to load (line 1)", "ZeroDivisionError"]),
    "plugin that registers nothing": (["run", "--variant", "{files}/silent.py", "--budget", "{tiny}"],
                                      ["does not call harness.registry.register"]),
    "unknown preset": (["run", "--variant", "baseline:huge", "--budget", "{tiny}"], ["no preset 'huge'"]),
    "two presets": (["run", "--variant", "eigenweight:r64", "--preset", "r128", "--budget", "{tiny}"],
                    ["two presets given"]),
    "missing preset file": ([*RUN, "--preset-file", "{files}/none.toml"], ["--preset-file", "does not exist"]),
    "preset file that is a folder": ([*RUN, "--preset-file", "{files}"], ["is a folder"]),
    "preset file that is not TOML": ([*RUN, "--preset-file", "{files}/garbage.toml"], ["not valid TOML"]),
    "preset file without presets": ([*RUN, "--preset-file", "{files}/no_presets.toml"], ["no [presets.NAME]"]),
    "preset file with NaN": ([*RUN, "--preset-file", "{files}/nan_preset.toml"], ["--matrix-lr", "finite"]),
    "preset file with unknown parameter": ([*RUN, "--preset-file", "{files}/unknown_preset.toml"], ["'rnak'"]),
    "preset file with a wrong type": ([*RUN, "--preset-file", "{files}/typed_preset.toml"],
                                      ["--num-layers expects an integer"]),
    "preset file for another variant": ([*RUN, "--preset-file", "{files}/other_preset.toml"],
                                        ["is for variant 'eigenweight'"]),
    "preset missing from the file": ([*RUN, "--preset-file", "{files}/two_presets.toml"], ["no preset None"]),
    # run: budgets
    "unknown budget": (["run", "--variant", "baseline", "--budget", "nosuch"], ["unknown budget 'nosuch'"]),
    "missing budget file": (["run", "--variant", "baseline", "--budget", "{files}/none.toml"], ["does not exist"]),
    "budget that is not TOML": (["run", "--variant", "baseline", "--budget", "{files}/garbage.toml"],
                                ["not valid TOML"]),
    "budget missing keys": (["run", "--variant", "baseline", "--budget", "{files}/sparse_budget.toml"],
                            ["is missing"]),
    "budget with an unknown key": (["run", "--variant", "baseline", "--budget", "{files}/wallclock_budget.toml"],
                                   ["unknown key 'wallclock'"]),
    **{f"budget: {name.replace('_', ' ')}": (["run", "--variant", "baseline", "--budget", f"{{files}}/{name}.toml"],
                                            [BUDGET_FRAGMENTS.get(name, f"{name}.toml")]) for name in BAD_BUDGETS},
    **{f"budget [model]: {name.replace('_', ' ')}": (
        ["run", "--variant", "baseline", "--budget", f"{{files}}/{name}.toml"], []) for name in BAD_MODEL_TABLES},
    "budget [model] that is not a table": (["run", "--variant", "baseline", "--budget", "{files}/model_scalar.toml"],
                                           ["[model] must be a table"]),
    "cuda budget without cuda": (["run", "--variant", "baseline", "--budget", "10min"], ["no CUDA", "--device cpu"]),
    # run: seeds, ids, folders
    "negative seed": ([*RUN, "--seed", "-1"], ["--seed -1 is out of range"]),
    "seed past 2**63": ([*RUN, "--seed", str(2**64)], ["out of range"]),
    "seed that is a word": ([*RUN, "--seed", "one"], ["--seed", "invalid int"]),
    "seed that is NaN": ([*RUN, "--seed", "nan"], ["--seed"]),
    "zero steps": ([*RUN, "--max-steps", "0"], ["--max-steps", "at least 1"]),
    "negative steps": ([*RUN, "--max-steps", "-5"], ["--max-steps"]),
    "fractional steps": ([*RUN, "--max-steps", "1.5"], ["--max-steps", "integer"]),
    "run id that climbs": ([*RUN, "--run-id", "../x"], ["--run-id '../x' must be"]),
    "run id with a slash": ([*RUN, "--run-id", "a/b"], ["--run-id 'a/b'"]),
    "empty run id": ([*RUN, "--run-id", ""], ["--run-id ''"]),
    "run id '.'": ([*RUN, "--run-id", "."], ["--run-id '.'"]),
    "run id of an existing run": ([*RUN, "--run-id", "{run_id}", "--results-dir", "{results}"], ["already exists"]),
    "results dir that is a file": ([*RUN, "--results-dir", "{files}/garbage.toml"], ["--results-dir", "is a file"]),
    "results dir under a file": ([*RUN, "--results-dir", "{files}/garbage.toml/sub"], ["is a file"]),
    "missing data dir": ([*RUN, "--data-dir", "{files}/nodata"], ["does not exist"]),
    "data dir that is a file": ([*RUN, "--data-dir", "{files}/garbage.toml"], ["--data-dir", "is a file"]),
    "data dir without shards": ([*RUN, "--data-dir", "{files}/empty_dir"], ["needs *_train_*.bin"]),
    "truncated shard": ([*RUN, "--data-dir", "{files}/truncated"], ["c_train_000000.bin", "truncated"]),
    "shard with a bad magic number": ([*RUN, "--data-dir", "{files}/bad_magic"], ["bad magic"]),
    "shard with a bad version": ([*RUN, "--data-dir", "{files}/bad_version"], ["unsupported version"]),
    "training shard of 0 tokens": ([*RUN, "--data-dir", "{files}/empty_train", "--vocab-size", "260"],
                                   ["e_train_000000.bin", "0 tokens"]),
    "validation shard shorter than a sequence": ([*RUN, "--data-dir", "{files}/short_val", "--vocab-size", "260"],
                                                 ["s_val_000000.bin", "too few for one sequence"]),
    "validation token past the vocabulary": ([*RUN, "--data-dir", "{files}/big_val_ids", "--vocab-size", "260"],
                                             ["token id 448", "260-token vocabulary"]),
    "training token past the vocabulary": ([*RUN, "--data-dir", "{files}/big_train_ids", "--vocab-size", "260"],
                                           ["b_train_000000.bin", "token id 300"]),
    "dataset meta.json that is damaged": ([*RUN, "--data-dir", "{files}/bad_meta"], ["meta.json", "not valid JSON"]),
    "dataset meta.json that is a list": ([*RUN, "--data-dir", "{files}/list_meta"], ["meta.json", "holds a list"]),
    "missing tokenizer": ([*RUN, "--data-dir", "{files}/no_tokenizer"], ["has no tokenizer"]),
    "tokenizer path that is missing": ([*RUN, "--tokenizer", "{files}/none.model"], ["--tokenizer", "does not exist"]),
    "tokenizer path that is a folder": ([*RUN, "--tokenizer", "{files}"], ["--tokenizer", "is a folder"]),
    "tokenizer that is not a model": ([*RUN, "--data-dir", "{files}/garbage_tokenizer"],
                                      ["not a SentencePiece model"]),
    "data root that is a file": ([*RUN, "--data-root", "{files}/garbage.toml"], ["--data-root", "is a file"]),
    "unknown device": ([*RUN, "--device", "tpu"], ["invalid choice"]),
    "unknown precision": ([*RUN, "--precision", "fp16"], ["invalid choice"]),
    "compile given a value": ([*RUN, "--compile=yes"], ["--compile"]),
    # run: model parameters
    "zero layers": ([*RUN, "--num-layers", "0"], ["--num-layers=0 is below its minimum"]),
    "layers as a word": ([*RUN, "--num-layers", "four"], ["--num-layers expects an integer"]),
    "fractional layers": ([*RUN, "--num-layers", "1.5"], ["--num-layers expects an integer"]),
    "NaN learning rate": ([*RUN, "--matrix-lr", "nan"], ["--matrix-lr expects a finite number"]),
    "infinite learning rate": ([*RUN, "--matrix-lr", "inf"], ["--matrix-lr expects a finite number"]),
    "negative learning rate": ([*RUN, "--matrix-lr", "-1"], ["--matrix-lr=-1.0 is below its minimum"]),
    "width past the maximum": ([*RUN, "--model-dim", "65537"], ["--model-dim=65537 is above its maximum"]),
    "heads that do not divide": ([*RUN, "--num-heads", "3"], ["must be divisible by --num-heads 3"]),
    "vocabulary of another tokenizer": ([*RUN, "--vocab-size", "512"], ["tokenizer/vocab mismatch"]),
    "misspelt parameter": ([*RUN, "--model-dimm", "64"], ["unknown parameter --model-dimm", "--model-dim"]),
    "stray word": ([*RUN, "extra"], ["unexpected argument 'extra'"]),
    "parameter of another family": ([*RUN, "--rank", "8"], ["unknown parameter --rank"]),
    "flag without a value": ([*RUN, "--model-dim"], ["--model-dim needs a value"]),
    "true/false that is neither": (["run", "--variant", "mla", "--budget", "{tiny}", "--latent-norm", "maybe"],
                                   ["--latent-norm expects true/false"]),
    "list with a word in it": (["run", "--variant", "depth_recurrence", "--budget", "{tiny}", "--repeat-layers",
                                "1,x"], ["--repeat-layers expects a comma-separated list of int"]),
    "choice that is not one": (["show", "depth_recurrence", "--per-pass", "twice"], ["--per-pass=twice"]),
    "layer beyond the model": (["show", "depth_recurrence", "--repeat-layers", "3,12"], ["not a layer"]),
    # show and list
    "show an unknown variant": (["show", "nosuch"], ["unknown variant"]),
    "show with a negative seed": ([*SHOW, "--seed", "-1"], ["--seed -1"]),
    "show under an unknown budget": ([*SHOW, "--budget", "nosuch"], ["unknown budget"]),
    "show a zero rank": (["show", "eigenweight", "--rank", "0"], ["--rank=0 is below its minimum"]),
    "show with a stray word": ([*SHOW, "extra"], ["unexpected argument 'extra'"]),
    "list with a stray word": (["list", "extra"], ["unrecognized arguments: extra"]),
    "list with a flag": (["list", "--bogus"], ["unrecognized arguments: --bogus"]),
    # data
    "unknown dataset": (["data", "nosuch"], ["invalid choice"]),
    "negative shard count": (["data", "fineweb", "--train-shards", "-1"], ["--train-shards", "at least 0"]),
    "shard count as a word": (["data", "fineweb", "--train-shards", "x"], ["--train-shards"]),
    "unknown FineWeb tokenization": (["data", "fineweb", "--variant", "sp", "--data-root", "{files}/root"],
                                     ["unknown FineWeb tokenization 'sp'"]),
    "data root that is a file for data": (["data", "builtin", "--data-root", "{files}/garbage.toml"], ["is a file"]),
    "FineWeb without the network": (["data", "fineweb", "--train-shards", "1", "--data-root", "{files}/root"],
                                    ["cannot reach"]),
    # results
    "results with an unknown status": (["results", "--status", "okk"], ["--status 'okk' is not a run status"]),
    "results with no rows": (["results", "--limit", "0"], ["--limit", "at least 1"]),
    "results with a word for a count": (["results", "--limit", "x"], ["--limit"]),
    "results from a file": (["results", "--results-dir", "{files}/garbage.toml"], ["is a file"]),
    "results with a flag it lacks": (["results", "--bogus"], ["unrecognized arguments: --bogus"]),
    # report
    "report in an unknown format": (["report", "--format", "pdf"], ["invalid choice"]),
    "report to a text file": (["report", "--out", "{files}/out/x.txt"], ["should end in .html"]),
    "report to a folder": (["report", "--out", "{files}/empty_dir"], ["is a folder"]),
    "report over a run record": (["report", "--format", "md", "--out", "{run}/run.json"], ["inside the run folder"]),
    "report into a run folder": (["report", "--out", "{run}/index.html"], ["inside the run folder"]),
    "report over a file it did not write": (["report", "--out", "{files}/foreign.html"], ["no report wrote it"]),
    "markdown over a file it did not write": (["report", "--format", "md", "--out", "{files}/foreign.md"],
                                              ["no report wrote it"]),
    "report into the results folder": (["report", "--out", "{results}/index.html"], ["in the results folder"]),
    "report under a file": (["report", "--out", "{files}/garbage.toml/x.html"], ["is a file"]),
    "contended fraction of 0": (["report", "--contended-below", "0"], ["--contended-below", "above 0"]),
    "contended fraction NaN": (["report", "--contended-below", "nan"], ["--contended-below", "finite"]),
    "contended fraction above 1": (["report", "--contended-below", "1.5"], ["--contended-below", "at most 1"]),
    "report for an unknown budget": (["report", "--budget", "nosuch", "--out", "{files}/out/r.html"],
                                     ["--budget 'nosuch' matches no run record"]),
    "report for an unknown variant": (["report", "--variant", "nosuch", "--out", "{files}/out/r.html"],
                                      ["--variant 'nosuch' matches no run record"]),
    "report from a missing folder": (["report", "--results-dir", "{files}/nothing", "--out", "{files}/out/r.html"],
                                     ["does not exist"]),
    "report from a file": (["report", "--results-dir", "{files}/garbage.toml"], ["is a file"]),
    # sweep
    "sweep with nothing to sweep": (["sweep"], ["needs --variant and --budget"]),
    "missing sweep file": (["sweep", "{files}/none.toml", "--dry-run"], ["does not exist"]),
    "sweep file that is not TOML": (["sweep", "{files}/garbage.toml", "--dry-run"], ["not valid TOML"]),
    "sweep file without runs": (["sweep", "{files}/sweep_empty.toml", "--dry-run"], ["no [[runs]] entries"]),
    "sweep file with an unknown key": (["sweep", "{files}/sweep_unknown.toml", "--dry-run"], ["unknown key 'sedes'"]),
    "sweep entry with an unknown key": (["sweep", "{files}/sweep_entry.toml", "--dry-run"], ["unknown key 'seed'"]),
    "sweep entry without a variant": (["sweep", "{files}/sweep_novariant.toml", "--dry-run"], ["needs variant"]),
    "sweep of zero seeds": (["sweep", "{files}/sweep_seeds0.toml", "--dry-run"], ["seeds = 0 runs nothing"]),
    "sweep of a negative seed": (["sweep", "{files}/sweep_seedneg.toml", "--dry-run"], ["seed -3 is out of range"]),
    "sweep file that is a folder": (["sweep", "{files}/empty_dir", "--dry-run"], ["is a folder"]),
    "sweep seeds as a word": (["sweep", "{files}/sweep_seedsword.toml", "--dry-run"], ["seeds must be"]),
    "sweep of zero steps": (["sweep", "{files}/sweep_steps0.toml", "--dry-run"], ["max_steps must be"]),
    "sweep grid with NaN": (["sweep", "{files}/sweep_nan.toml", "--dry-run"], ["--matrix-lr expects a finite"]),
    "sweep grid that is not a list": (["sweep", "{files}/sweep_gridscalar.toml", "--dry-run"], ["grid must map"]),
    "sweep name that climbs": (["sweep", "{files}/sweep_name.toml", "--dry-run"], ["sweep name '../x'"]),
    "sweep grid without values": ([*SWEEP, "--grid", "matrix_lr="], ["--grid 'matrix_lr='"]),
    "sweep grid of NaN": ([*SWEEP, "--grid", "matrix_lr=nan"], ["--matrix-lr expects a finite number"]),
    "sweep grid of an unknown parameter": ([*SWEEP, "--grid", "nosuch=1,2"], ["no parameter 'nosuch'"]),
    "sweep of zero seeds on the command line": ([*SWEEP, "--seeds", "0"], ["--seeds", "at least 1"]),
    "sweep with no parallelism": ([*SWEEP, "--parallel", "0"], ["--parallel", "at least 1"]),
    "sweep with no concurrency": ([*SWEEP, "--max-concurrent", "0"], ["--max-concurrent"]),
    "sweep named to climb": ([*SWEEP, "--name", "../x"], ["sweep name '../x'"]),
    "sweep file and grid together": (["sweep", "{files}/sweep_empty.toml", "--variant", "baseline"],
                                     ["not both"]),
    "sweep memory of NaN": ([*SWEEP, "--mem-gb", "nan"], ["--mem-gb"]),
    "sweep negative margin": ([*SWEEP, "--margin-minutes", "-1"], ["--margin-minutes"]),
    "sweep of zero CPUs": ([*SWEEP, "--cpus-per-task", "0"], ["--cpus-per-task"]),
    "sweep of an unknown variant": (["sweep", "--variant", "nosuch", "--budget", "{tiny}"], ["unknown variant"]),
    "sweep under an unknown budget": (["sweep", "--variant", "baseline", "--budget", "nosuch"], ["unknown budget"]),
    "sweep over a damaged state": (["sweep", "--variant", "baseline", "--budget", "{tiny}", "--name", "damaged",
                                    "--results-dir", "{files}/broken_results"], ["sweep state", "damaged"]),
    "sweep into a file": ([*SWEEP, "--results-dir", "{files}/garbage.toml"], ["is a file"]),
    # tune
    "tune zero trials": ([*TUNE, "--trials", "0"], ["--trials", "at least 1"]),
    "tune zero workers": ([*TUNE, "--workers", "0"], ["--workers", "at least 1"]),
    "tune a NaN bound": ([*TUNE, "--search", "matrix_lr=nan..1"], ["--matrix-lr expects a finite number"]),
    "tune an empty range": ([*TUNE, "--search", "matrix_lr=1..0.5"], ["is empty"]),
    "tune an unknown dimension": ([*TUNE, "--search", "nosuch=1..2"], ["'nosuch' is not a parameter"]),
    "tune a search without a range": ([*TUNE, "--search", "matrix_lr"], ["write NAME=LOW..HIGH"]),
    "tune an unknown scale": ([*TUNE, "--search", "matrix_lr=0.01..1:sqrt"], ["the only scale is ':log'"]),
    "tune an unknown objective": ([*TUNE, "--objectives", "speed"], ["--objectives 'speed'"]),
    "tune report past the end": ([*TUNE, "--report-at", "1.5"], ["strictly between 0 and 1"]),
    "tune report at NaN": ([*TUNE, "--report-at", "nan"], ["strictly between 0 and 1"]),
    "tune report at a word": ([*TUNE, "--report-at", "half"], ["give fractions"]),
    "tune pruning two objectives": ([*TUNE, "--objectives", "val_bpb,artifact_bytes", "--pruner", "median"],
                                    ["works with one objective"]),
    "tune no heartbeat grace": ([*TUNE, "--heartbeat-grace", "0"], ["--heartbeat-grace", "above 0"]),
    "tune NaN heartbeat grace": ([*TUNE, "--heartbeat-grace", "nan"], ["--heartbeat-grace", "finite"]),
    "tune negative sampler seed": ([*TUNE, "--sampler-seed", "-1"], ["--sampler-seed"]),
    "tune negative seed": ([*TUNE, "--seed", "-1"], ["--seed -1 is out of range"]),
    "tune name that climbs": ([*TUNE, "--name", "../x"], ["study name '../x'"]),
    "tune unknown storage": ([*TUNE, "--storage", "somewhere"], ["--storage 'somewhere'"]),
    "tune storage without its driver": (["tune", "--variant", "baseline", "--budget", "{tiny}", "--storage",
                                         "postgresql://user@localhost/db"], ["cannot open the study storage"]),
    "tune a fixed parameter": ([*TUNE, "--matrix-lr", "0.1", "--search", "matrix_lr=0.01..0.2"],
                               ["also fixed (--matrix-lr 0.1)"]),
    "tune only an unknown dimension": ([*TUNE, "--only", "nosuch"], ["--only 'nosuch'"]),
    "tune negative re-evaluation": ([*TUNE, "--reeval-top", "-1"], ["--reeval-top"]),
    "tune zero re-evaluation seeds": ([*TUNE, "--reeval-seeds", "0"], ["--reeval-seeds"]),
    "tune zero minutes": ([*TUNE, "--time-minutes", "0"], ["--time-minutes"]),
    "tune on eight devices": (["tune", "--variant", "baseline", "--budget", "10min-8xh100", "--dry-run"],
                              ["tune runs each trial on one device"]),
    "tune over damaged settings": ([*TUNE, "--name", "broken", "--results-dir", "{files}/broken_results"],
                                   ["study settings", "damaged"]),
    # status
    "status of an unknown sweep": (["status", "nosuch"], ["no sweep or study 'nosuch'"]),
    "status of a name that climbs": (["status", "../x"], ["sweep or study name '../x'"]),
    "status of a damaged sweep state": (["status", "damaged", "--results-dir", "{files}/broken_results"],
                                        ["sweep state", "damaged"]),
    "status of a sweep state with a bad plan": (["status", "badplan", "--results-dir", "{files}/broken_results"],
                                                ["planned run 1 is not a valid plan"]),
    "status of damaged study settings": (["status", "damaged", "--results-dir", "{files}/broken_study"],
                                         ["study settings", "damaged"]),
    "status from a file": (["status", "x", "--results-dir", "{files}/garbage.toml"], ["is a file"]),
}


def write_broken_inputs(files: Path) -> None:
    """Every broken file the table points at."""
    files.mkdir()
    (files / "garbage.toml").write_text("this is = = not toml\n")
    (files / "syntax.py").write_text("x = 1\ndef (:\n")
    (files / "raises.py").write_text("1 / 0\n")
    (files / "silent.py").write_text("x = 1\n")
    (files / "foreign.html").write_text("<html>someone's page</html>\n")
    (files / "foreign.md").write_text("# my notes\n")
    (files / "empty_dir").mkdir()
    (files / "no_presets.toml").write_text('variant = "baseline"\n')
    (files / "nan_preset.toml").write_text("[presets.best]\nmatrix_lr = nan\n")
    (files / "unknown_preset.toml").write_text("[presets.best]\nrnak = 3\n")
    (files / "typed_preset.toml").write_text('[presets.best]\nnum_layers = "two"\n')
    (files / "other_preset.toml").write_text('variant = "eigenweight"\n[presets.best]\nrank = 8\n')
    (files / "two_presets.toml").write_text("[presets.a]\nnum_layers = 2\n[presets.b]\nnum_layers = 3\n")
    (files / "sparse_budget.toml").write_text('description = "x"\n')
    write_budget(files / "wallclock_budget.toml", wallclock=5)
    for name, changes in BAD_BUDGETS.items():
        path = write_budget(files / f"{name}.toml")
        lines = [ln for ln in path.read_text().splitlines() if ln.split(" = ")[0] not in changes]
        head = [f"{k} = {v}" for k, v in changes.items()]
        path.write_text("\n".join(head + lines) + "\n")
    for name, line in BAD_MODEL_TABLES.items():
        path = write_budget(files / f"{name}.toml")
        path.write_text(path.read_text() + line + "\n")
    path = write_budget(files / "model_scalar.toml")
    path.write_text("model = 5\n" + path.read_text().split("[model]")[0])

    def dataset(name: str, val=None, train=None, prefix="c") -> Path:
        d = files / name
        d.mkdir()
        write_shard(d / f"{prefix}_val_000000.bin", np.arange(500) % 250 if val is None else val)
        write_shard(d / f"{prefix}_train_000000.bin", np.arange(5000) % 250 if train is None else train)
        return d

    d = dataset("truncated")
    (d / "c_train_000000.bin").write_bytes((d / "c_train_000000.bin").read_bytes()[:-10])
    d = dataset("bad_magic")
    raw = bytearray((d / "c_val_000000.bin").read_bytes())
    raw[0:4] = (7).to_bytes(4, "little")
    (d / "c_val_000000.bin").write_bytes(bytes(raw))
    d = dataset("bad_version")
    raw = bytearray((d / "c_val_000000.bin").read_bytes())
    raw[4:8] = (9).to_bytes(4, "little")
    (d / "c_val_000000.bin").write_bytes(bytes(raw))
    for d in (dataset("empty_train", train=np.zeros(0, dtype=np.int64), prefix="e"),
              dataset("short_val", val=np.arange(10), prefix="s")):
        (d / "meta.json").write_text('{"tokenizer": "byte260"}')  # token ids below 260: the byte tokenizer's
    for d in (dataset("big_val_ids", val=np.arange(500), prefix="v"),  # the split is cut to whole sequences: 448
              dataset("big_train_ids", train=np.full(5000, 300), prefix="b")):
        (d / "meta.json").write_text('{"tokenizer": "byte260"}')
    (dataset("bad_meta") / "meta.json").write_text("{ not json")
    (dataset("list_meta") / "meta.json").write_text("[1, 2]")
    dataset("no_tokenizer")
    (dataset("garbage_tokenizer") / "tok.model").write_bytes(b"\x00not a sentencepiece model")
    for name, text in (("sweep_empty", 'budget = "smoke"\n'),
                       ("sweep_unknown", 'budget = "smoke"\nsedes = 2\n[[runs]]\nvariant = "baseline"\n'),
                       ("sweep_entry", 'budget = "smoke"\n[[runs]]\nvariant = "baseline"\nseed = 3\n'),
                       ("sweep_novariant", 'budget = "smoke"\n[[runs]]\npresets = ["x"]\n'),
                       ("sweep_seeds0", 'budget = "smoke"\nseeds = 0\n[[runs]]\nvariant = "baseline"\n'),
                       ("sweep_seedneg", 'budget = "smoke"\nseeds = [1, -3]\n[[runs]]\nvariant = "baseline"\n'),
                       ("sweep_seedsword", 'budget = "smoke"\nseeds = "two"\n[[runs]]\nvariant = "baseline"\n'),
                       ("sweep_steps0", 'budget = "smoke"\nmax_steps = 0\n[[runs]]\nvariant = "baseline"\n'),
                       ("sweep_nan", 'budget = "smoke"\n[[runs]]\nvariant = "baseline"\ngrid = { matrix_lr = '
                                     '[0.02, nan] }\n'),
                       ("sweep_gridscalar", 'budget = "smoke"\n[[runs]]\nvariant = "baseline"\ngrid = { matrix_lr '
                                            '= 0.02 }\n'),
                       ("sweep_name", 'name = "../x"\nbudget = "smoke"\n[[runs]]\nvariant = "baseline"\n')):
        (files / f"{name}.toml").write_text(text)
    broken = files / "broken_results"
    (broken / "sweeps").mkdir(parents=True)
    (broken / "sweeps" / "damaged.json").write_text('{"name": "damaged", "runs": [')
    (broken / "sweeps" / "badplan.json").write_text('{"name": "badplan", "results_dir": "/tmp", "runs": [{"run_id": '
                                                    '"../../x"}], "submissions": []}')
    (broken / "studies").mkdir()
    (broken / "studies" / "broken.json").write_text('{"name": "broken", "trials": "many"}')
    (files / "broken_study" / "studies").mkdir(parents=True)
    (files / "broken_study" / "studies" / "damaged.json").write_text("not json at all")


def folder_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    tiny = write_budget(root / "tiny.toml")
    results = root / "results"
    done = harness_cli("sweep", "--variant", "baseline", "--budget", str(tiny), "--max-steps", "2", "--name", "one",
                       "--results-dir", str(results))
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = next(results.glob("*/run.json")).parent
    write_broken_inputs(root / "files")
    return {"root": root, "tiny": str(tiny), "results": str(results), "run": str(run_dir),
            "run_id": run_dir.name, "files": str(root / "files")}


def test_the_table_covers_every_subcommand_with_at_least_a_hundred_cases():
    commands = {args[0] for args, _ in CASES.values() if args}
    assert commands == {"run", "show", "list", "data", "results", "report", "sweep", "tune", "status", "nosuch",
                        "--bogus"}
    assert len(CASES) >= 100


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_in_one_line_and_nothing_changes(world, name):
    template, fragments = CASES[name]
    args = [a.format(**world) for a in template]
    results = Path(world["results"])
    before = folder_hashes(results)
    done = harness_main(*args, env={"HARNESS_RESULTS_DIR": world["results"]})
    assert_one_line_error(done, *[f.format(**world) for f in fragments])
    assert folder_hashes(results) == before, "the results folder changed"


# ---------------------------------------------------------------------------------------------- damaged records

DAMAGED_RECORDS = {  # run folder → (what its run.json holds, given the real record r; the warning's words)
    "seed-as-word": (lambda r: {**r, "seed": "one"}, "field 'seed' should be an integer, got 'one'"),
    "environment-as-text": (lambda r: {**r, "environment": "cpu box"}, "field 'environment' should be a table"),
    "budget-clock-as-text": (lambda r: {**r, "budget": {**r["budget"], "train_wallclock_seconds": "long"}},
                             "field 'budget.train_wallclock_seconds' should be a number"),
    "curve-of-words": (lambda r: {**r, "curve": [{"step": "x"}]}, "field 'curve.step' should be an integer"),
    "unknown-status": (lambda r: {**r, "status": "great"}, "field 'status' is 'great', not a run status"),
    "climbing-run-id": (lambda r: {**r, "run_id": "../../x"}, "field 'run_id' '../../x' cannot name a folder"),
    "future-schema": (lambda r: {**r, "schema_version": 99}, "schema_version 99 is newer"),
    "no-variant": (lambda r: {k: v for k, v in r.items() if k != "variant"}, "field 'variant' is missing"),
    "a-list": (lambda r: [r], "it holds a list, not a run record"),
    "not-json": (lambda r: "{ torn", "not valid JSON"),
    "nan-score": (lambda r: '{"val_bpb": NaN}', "not valid JSON"),
}


@pytest.fixture(scope="module")
def damaged_results(world, tmp_path_factory):
    """The real run beside a copy of it per kind of damage."""
    import json
    import shutil

    results = tmp_path_factory.mktemp("damaged") / "results"
    shutil.copytree(world["results"], results)
    real = json.loads((Path(world["run"]) / "run.json").read_text())
    for name, (damage, _) in DAMAGED_RECORDS.items():
        (results / name).mkdir()
        content = damage(real)
        (results / name / "run.json").write_text(content if isinstance(content, str) else json.dumps(content))
    return results


@pytest.mark.parametrize("args", [["results"], ["report", "--out", "{out}/r.html"], ["report", "--format", "md"],
                                  ["status", "one"], ["sweep", "--variant", "baseline", "--budget", "{tiny}",
                                                      "--max-steps", "2", "--name", "one", "--dry-run"]],
                         ids=["results", "report", "markdown", "status", "sweep"])
def test_damaged_records_are_skipped_with_one_warning_each_and_never_stop_a_command(world, damaged_results,
                                                                                    tmp_path, args):
    before = folder_hashes(damaged_results)
    args = [a.format(out=tmp_path, **world) for a in args]
    done = harness_main(*args, "--results-dir", str(damaged_results))
    assert done.returncode == 0, done.stderr
    warnings = [ln for ln in done.stderr.splitlines() if ln.strip()]
    for name, (_, words) in DAMAGED_RECORDS.items():
        mine = [w for w in warnings if f"{damaged_results / name / 'run.json'}:" in w]
        assert len(mine) <= 1 and all(w.startswith("warning: skipping ") and words in w for w in mine), mine
    if args[0] in ("results", "report"):  # these read every record: each damaged one is named once
        assert len(warnings) == len(DAMAGED_RECORDS), warnings
    assert "Traceback" not in done.stderr and folder_hashes(damaged_results) == before
    if args[0] == "results":  # the one readable run is listed, on a line of its own
        rows = done.stdout.splitlines()[1:]
        assert len(rows) == 1 and " ok " in rows[0], rows
    if args[0] == "status":
        assert "1 runs — 1 done" in done.stdout


def test_a_report_regenerates_its_own_files_but_no_one_elses(world, tmp_path):
    out = tmp_path / "site" / "index.html"
    for _ in range(2):  # the second report replaces what the first wrote
        done = harness_main("report", "--results-dir", world["results"], "--out", str(out))
        assert done.returncode == 0, done.stderr
    (tmp_path / "site" / "leaderboard.csv").unlink()
    (tmp_path / "site" / "leaderboard.csv").write_text("someone's spreadsheet\n")
    (tmp_path / "site" / ".golf-report.json").unlink()  # even without the list of what it wrote
    refused = harness_main("report", "--results-dir", world["results"], "--out", str(out))
    assert_one_line_error(refused, "leaderboard.csv already exists and no report wrote it")
    assert (tmp_path / "site" / "leaderboard.csv").read_text() == "someone's spreadsheet\n"


# ---------------------------------------------------------------------------------------------- runtime failures

def test_a_full_disk_fails_the_run_in_one_line_and_its_record_says_why(world, tmp_path):
    """A file-size limit stands in for a full disk: the artifact (hundreds of KB) cannot be written, the record
    (tens of KB) can. The run ends `failed` with the reason, leaves no partial artifact, and prints one line."""
    import json
    import os
    import resource
    import signal
    import subprocess
    import sys

    from conftest import REPO
    from harness.data.datasets import resolve_dataset

    resolve_dataset("builtin")  # built (a big write) before the limit applies
    results = tmp_path / "r"
    limit = 96 * 1024

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run([sys.executable, "-m", "harness", "run", "--variant", "baseline", "--budget", world["tiny"],
                           "--max-steps", "2", "--model-dim", "128", "--results-dir", str(results), "--quiet"],
                          cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                          preexec_fn=limited, timeout=600)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 1 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "File too large" in lines[0] and "record and log in" in lines[0]
    run_dir = next(results.iterdir())
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and "File too large" in record["error"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["curve.jsonl", "log.txt", "run.json"]  # no torn artifact


def test_a_local_sweep_says_which_runs_died_and_exits_1(world, tmp_path):
    """A run whose process is killed outright (no chance to record its end) is marked failed by the sweep,
    with the exit code and its log, and the sweep's exit code says something failed."""
    import json

    from conftest import REPO

    done = harness_cli("sweep", "--variant", str(REPO / "tests/fixtures/killed_variant.py"), "--budget",
                       world["tiny"], "--max-steps", "5", "--name", "dies", "--results-dir", str(tmp_path / "r"))
    assert done.returncode == 1, done.stdout + done.stderr
    record = json.loads(next((tmp_path / "r").glob("*/run.json")).read_text())
    assert record["status"] == "failed" and "exited with code -9" in record["error"]
    assert "1 of 1 runs did not finish" in done.stdout and "exited with code -9" in done.stdout
    assert "log: " in done.stdout and "Traceback" not in done.stdout + done.stderr
    status = harness_main("status", "dies", "--results-dir", str(tmp_path / "r"))
    assert status.returncode == 0 and "failed" in status.stdout and "exited with code -9" in status.stdout


def test_planned_run_ids_are_safe_file_names_whatever_the_preset_is_called(world, tmp_path):
    plugin = tmp_path / "odd_presets.py"
    plugin.write_text("from harness.model import GPT, GPTConfig\nfrom harness.registry import register\n"
                      "register('odd', config=GPTConfig, build=GPT, presets={'a/../b': {'num_layers': 1},"
                      " 'c d': {'num_layers': 2}})\n")
    done = harness_main("sweep", "--variant", str(plugin), "--preset", "a/../b,c d", "--budget", world["tiny"],
                        "--dry-run", "--results-dir", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    ids = [line.split()[-1] for line in done.stdout.splitlines() if line.startswith("  run ")]
    assert len(ids) == 2 and all(SAFE_NAME.fullmatch(i) for i in ids), ids
    assert not (tmp_path / "r").exists()
