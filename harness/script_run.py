"""Run a parameter-golf submission script as-is (`run --variant script:path/to/train_gpt.py`) and record it.

A submission is a train_gpt.py that reads its settings from environment variables and prints its scores. The
harness does not import it: it runs the unchanged file in a fresh process (`python script`, or `torchrun
--standalone --nproc_per_node=N script` for a budget of N CUDA devices) with the challenge's variables filled
from the budget and dataset — DATA_PATH, TOKENIZER_PATH, VOCAB_SIZE, SEED, RUN_ID, MAX_WALLCLOCK_SECONDS,
ITERATIONS, TRAIN_SEQ_LEN, TRAIN_BATCH_TOKENS, WARMUP_STEPS, and the evaluation defaults VAL_BATCH_SIZE (the
baseline's name) / VAL_BATCH_TOKENS (later records') and VAL_LOSS_EVERY — plus one variable per free flag
(`--num-layers 11` → NUM_LAYERS=11; a name that is also an option of `run` is given in capitals, `--DEVICE
cuda`), which is the run's config. Its working folder is the run folder, so its own
files (logs/, final_model*) land there; its output goes to the console and to log.txt. The shards are offered
under the names the scripts glob (fineweb_train_*.bin, fineweb_val_*.bin): a dataset named otherwise, or a budget
that scores only the first val_tokens_cap tokens, is staged in the run folder (links, and the capped
validation tokens) and the staging is removed when the script ends, so the script scores the tokens plugin runs
under the same budget score.

The record is read from what the script printed, as these line patterns (the last match wins unless said):
- final score: `<label> val_loss:X val_bpb:Y` whose label is not a step and not pre-quantization. The LAST such
  line is the submission's score — records print later stages after earlier ones (final_int8_zlib_roundtrip →
  final_int6_sliding_window → legal_ttt / quantized_ttt_phased), and some repeat their best as a trailing
  final_int8_zlib_roundtrip_exact. Of that label and its twin, the `_exact` line (8 decimals) beats the
  rounded one.
- pre-quantization score (val_bpb): a line labelled pre-quantization or post-EMA (`pre-quantization post-ema
  val_loss:X val_bpb:Y`, `DIAGNOSTIC post_ema ...`), or else the last step validation line.
- steps and time: step lines `step:N/M ...` (baseline) or `N/M ...` (later records) carrying `train_loss:X`,
  `val_loss:X val_bpb:Y`, `train_time:Tms|Ts|Tm` and `step_avg:Ams`, and `stopping_early: ... step:N/M`.
- artifact: `Total submission size <form>: N bytes` (total) and `Serialized model <form>: N bytes` (model); a
  line with a form (int8+zlib, int6+zstd, quantized+brotli, ...) beats the unqualified one, which is the raw
  fp checkpoint. The code bytes are the script's own size, as the challenge counts them; the total is the
  log's where printed (some records count their code compressed), else model + code.
A non-zero exit, a crash, or an output without a final score or an artifact size ends the record `failed` with
the reason in one line; Ctrl-C or SIGTERM ends it `interrupted`; a script still running after the budget's
wallclock + eval limit + LAUNCH_MARGIN_SECONDS is stopped and recorded `failed`.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.budget import Budget
from harness.errors import UserError
from harness.results import (
    SCHEMA_VERSION,
    default_results_dir,
    new_run_id,
    thin_curve,
    write_curve,
    write_json_atomic,
)

# Startup, compilation, warm-up, serialization and evaluation stages a script may run outside its clock (a
# record's GPTQ, compression and TTT compile take minutes on their own).
LAUNCH_MARGIN_SECONDS = 600.0
STOP_GRACE_SECONDS = 10.0  # how long a stopped script gets to exit before it is killed

# Variables the budget, dataset or a harness flag decides: a free flag may not set them (it says which does).
BUDGET_FILE = "; write a budget file with the value you want"
CONTRACT_VARIABLES = {
    "DATA_PATH": "the budget's dataset; use --data-dir", "TOKENIZER_PATH": "the dataset; use --tokenizer",
    "VOCAB_SIZE": "the dataset's tokenizer; use --tokenizer or another dataset", "SEED": "--seed; use it",
    "RUN_ID": "--run-id; use it", "ITERATIONS": "the budget's max_steps; use --max-steps",
    "MAX_WALLCLOCK_SECONDS": "the budget's train_wallclock_seconds" + BUDGET_FILE,
    "TRAIN_SEQ_LEN": "the budget's seq_len" + BUDGET_FILE,
    "TRAIN_BATCH_TOKENS": "the budget's tokens_per_step" + BUDGET_FILE,
    "WARMUP_STEPS": "the budget's warmup_steps" + BUDGET_FILE,
    **dict.fromkeys(("RANK", "WORLD_SIZE", "LOCAL_RANK"), "torchrun, for the budget's device_count"),
}
ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
READS_ENV = re.compile(r"""(?:environ\.get|getenv)\(\s*["']([A-Za-z_]\w*)["']|environ\[\s*["']([A-Za-z_]\w*)["']""")


class ScriptFailed(RuntimeError):
    """A script run that ended `failed`; its message is the one line the CLI prints (the record says the same)."""

    explained = True


# ---------------------------------------------------------------------------------------------- input


def check_script(text: str) -> Path:
    """The script of `script:PATH`: an existing, readable .py file."""
    path = Path(text).expanduser()
    if not text:
        raise UserError("--variant script: needs a path, e.g. --variant script:records/my_run/train_gpt.py")
    if path.is_dir():
        raise UserError(f"--variant script:{text} is a folder; give the training script itself (its train_gpt.py)")
    if not path.exists():
        raise UserError(f"--variant script:{text} does not exist; give the path of a training script")
    if path.suffix != ".py":
        raise UserError(f"--variant script:{text} is not a .py file; give the training script (train_gpt.py)")
    try:
        path.read_bytes()
    except OSError as exc:
        raise UserError(f"--variant script:{text} cannot be read ({exc.strerror})") from None
    return path.resolve()


def env_names_read(source: str) -> set[str]:
    """The variables a script reads by name (os.environ.get / os.getenv / os.environ[...]). Empty for a packed
    script (an exec of compressed code), whose names cannot be seen."""
    return {a or b for a, b in READS_ENV.findall(source)}


def parse_env_flags(words: list[str], source: str, script_name: str) -> dict[str, str]:
    """`--num-layers 11 --qk-gain-init=5.0` → {"NUM_LAYERS": "11", "QK_GAIN_INIT": "5.0"}. A name the script never
    reads is refused (env knobs otherwise ignore a misspelt name in silence), as is one the harness decides."""
    read = env_names_read(source)
    values: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--"):
            raise UserError(f"unexpected argument {word!r}; script settings are given as --name value")
        key, has_eq, value = word[2:].partition("=")
        name = key.replace("-", "_").upper()
        if not ENV_NAME.fullmatch(name):
            raise UserError(f"--{key} cannot name an environment variable; use letters, digits and '-'")
        if not has_eq:
            if i + 1 >= len(words) or words[i + 1].startswith("--"):
                raise UserError(f"--{key} needs a value (it sets {name} for the script)")
            value, i = words[i + 1], i + 1
        if name in CONTRACT_VARIABLES:
            raise UserError(f"--{key} would set {name}, which comes from {CONTRACT_VARIABLES[name]}")
        if name in values:
            raise UserError(f"--{key} is given twice; keep one")
        if "\n" in value or "\x00" in value:
            raise UserError(f"--{key} has a line break or NUL in its value; give it on one line")
        if read and name not in read:
            settable = sorted(read - CONTRACT_VARIABLES.keys())
            close = difflib.get_close_matches(name, settable, n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else f"it reads: {' '.join(settable)}"
            raise UserError(f"{script_name} never reads {name} (--{key}); {hint}")
        values[name] = value
        i += 1
    return values


def refuse_plugin_options(args: argparse.Namespace) -> None:
    """Options that shape a plugin's training mean nothing to a script, which sets its own."""
    given = [flag for flag, on in (("--preset", args.preset), ("--preset-file", args.preset_file),
                                   ("--with", args.with_), ("--compile/--no-compile", args.compile is not None),
                                   ("--precision", args.precision), ("--no-preflight", not args.preflight)) if on]
    if given:
        raise UserError(f"{given[0]} does not apply to a script run: the script sets its own training; pass its "
                        f"settings as --name value (environment variables)")


# ---------------------------------------------------------------------------------------------- environment


def challenge_env(budget: Budget, data_path: Path, tokenizer_path: str, vocab_size: int, seed: int, run_id: str,
                  iterations: int) -> dict[str, str]:
    """The challenge's variables, as the records name them, filled from the budget and the dataset."""
    return {
        "DATA_PATH": str(data_path), "TOKENIZER_PATH": tokenizer_path, "VOCAB_SIZE": str(vocab_size),
        "SEED": str(seed), "RUN_ID": run_id, "ITERATIONS": str(iterations),
        "MAX_WALLCLOCK_SECONDS": f"{float(budget.train_wallclock_seconds):g}",
        "TRAIN_SEQ_LEN": str(budget.seq_len), "TRAIN_BATCH_TOKENS": str(budget.tokens_per_step),
        "WARMUP_STEPS": str(budget.warmup_steps),
        # Defaults a flag may change: one step's tokens per evaluation batch, and periodic validation only
        # when the budget validates periodically (the scripts count it in steps, the budget in seconds).
        "VAL_BATCH_SIZE": str(budget.tokens_per_step), "VAL_BATCH_TOKENS": str(budget.tokens_per_step),
        **({} if budget.val_every_seconds else {"VAL_LOSS_EVERY": "0"}),
    }


def launch_command(script: Path, device_kind: str, world_size: int) -> list[str]:
    """How the challenge launches a script: torchrun for several GPUs, plain Python otherwise."""
    if device_kind == "cuda" and world_size > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}",
                str(script)]
    return [sys.executable, str(script)]


def stage_dataset(dataset, folder: Path, seq_len: int, val_tokens_cap: int) -> Path:
    """The folder to give as DATA_PATH: the dataset's own when its shards carry the challenge's names and the
    whole validation split is scored; otherwise `folder`, holding links under those names and, with a cap, one
    validation shard of the first cap tokens cut to whole sequences (as harness.metric.load_validation cuts
    them), so the script scores the same tokens a plugin run under the budget does."""
    named = all(p.name.startswith("fineweb_") for p in (*dataset.train_files, *dataset.val_files))
    if named and val_tokens_cap <= 0:
        return dataset.directory
    import numpy as np

    from harness.data.shards import read_shard, write_shard

    folder.mkdir()
    for i, path in enumerate(dataset.train_files):
        (folder / f"fineweb_train_{i:06d}.bin").symlink_to(path.resolve())
    if val_tokens_cap <= 0:
        for i, path in enumerate(dataset.val_files):
            (folder / f"fineweb_val_{i:06d}.bin").symlink_to(path.resolve())
        return folder
    tokens = np.concatenate([np.asarray(read_shard(p)) for p in dataset.val_files])
    usable = min(val_tokens_cap, tokens.size - 1) // seq_len * seq_len
    write_shard(folder / "fineweb_val_000000.bin", tokens[:usable + 1])
    return folder


# ---------------------------------------------------------------------------------------------- the process


@dataclass
class Ended:
    """How the script's process ended, and every line it printed."""

    exit_code: int | None  # None: stopped (timed out or interrupted)
    timed_out: bool = False
    interrupted: bool = False
    lines: list[str] = field(default_factory=list)


def stop(proc: subprocess.Popen, sig: int) -> None:
    """Signal the script's whole process group (torchrun and its workers), then kill what outlives the grace."""
    for s in (sig, signal.SIGKILL):
        try:
            os.killpg(proc.pid, s)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=STOP_GRACE_SECONDS)
            return
        except subprocess.TimeoutExpired:
            continue


def run_process(command: list[str], cwd: Path, env: dict[str, str], log_path: Path, echo: bool,
                limit_seconds: float) -> Ended:
    """Run `command` in a process group of its own, streaming its output line by line to log_path and (echo) to
    the console; stopped after limit_seconds, or on Ctrl-C / SIGTERM (a KeyboardInterrupt here)."""
    ended = Ended(exit_code=None)
    with open(log_path, "a", encoding="utf-8", buffering=1) as log:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)

        def pump() -> None:
            for raw in proc.stdout:
                line = raw.decode("utf-8", errors="replace")
                ended.lines.append(line.rstrip("\r\n"))
                log.write(line)
                if echo:
                    sys.stdout.write(line)
                    sys.stdout.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            ended.exit_code = proc.wait(timeout=limit_seconds)
        except subprocess.TimeoutExpired:
            ended.timed_out = True
            stop(proc, signal.SIGTERM)
        except KeyboardInterrupt:
            ended.interrupted = True
            stop(proc, signal.SIGINT)
        reader.join(STOP_GRACE_SECONDS)  # a grandchild still holding the pipe must not hang the record
    return ended


# ---------------------------------------------------------------------------------------------- the log

NUM = r"[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|nan|inf)"
SCORE = re.compile(rf"val_loss:\s*(?P<loss>{NUM})\s+val_bpb:\s*(?P<bpb>{NUM})")
STAMP = r"^\s*(?:\d+(?:\.\d+)?\s+)?"  # some logs open each line with a timestamp
STEP = re.compile(STAMP + r"(?:step:\s*)?(?P<step>\d+)/\d+\s")
STOPPED = re.compile(STAMP + r"stopping_early:.*\bstep:\s*(?P<step>\d+)/")
TRAIN_LOSS = re.compile(rf"train_loss:\s*(?P<loss>{NUM})")
TRAIN_TIME = re.compile(r"train_time:\s*(?P<value>\d+(?:\.\d*)?)(?P<unit>ms|s|m)\b")
STEP_AVG = re.compile(r"step_avg:\s*(?P<ms>\d+(?:\.\d*)?)ms")
SIZE = re.compile(STAMP + r"(?P<what>Serialized model|Total submission size)(?P<form>[^:]*):\s*(?P<bytes>\d+) bytes")
PRE_QUANT = re.compile(r"pre[-_ ]?quant|post[-_ ]?ema", re.IGNORECASE)
SECONDS_PER_UNIT = {"ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass
class ScriptLog:
    """What a script's output says, as parse_log reads it (None where it says nothing)."""

    score_label: str | None = None
    val_loss_post_quant: float | None = None
    val_bpb_post_quant: float | None = None
    val_loss: float | None = None
    val_bpb: float | None = None
    steps: int | None = None
    train_seconds: float | None = None
    ms_per_step: float | None = None
    model_bytes: int | None = None
    total_bytes: int | None = None
    curve: list[dict] = field(default_factory=list)

    def problem(self) -> str | None:
        """Why the output cannot give a record (None when it can)."""
        if self.score_label is None:
            return ("its output has no final score line (`<label> val_loss:X val_bpb:Y` after training, such as "
                    "final_int8_zlib_roundtrip_exact)")
        if self.model_bytes is None and self.total_bytes is None:
            return ("its output has no 'Total submission size' or 'Serialized model' line, so the artifact's size "
                    "is unknown")
        return None


def number(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


def parse_log(lines: list[str]) -> ScriptLog:
    """Read a script's output (see the module docstring for the patterns and their preference)."""
    out = ScriptLog()
    finals: list[tuple[str, str, str]] = []  # (label, loss, bpb) in the order printed
    sizes: dict[str, dict[bool, int]] = {"Serialized model": {}, "Total submission size": {}}
    points: dict[int, dict] = {}
    for line in lines:
        size = SIZE.match(line)
        if size:
            sizes[size["what"]][bool(size["form"].strip())] = int(size["bytes"])
            continue
        step, stopped, score = STEP.match(line), STOPPED.match(line), SCORE.search(line)
        if step or stopped:
            n = int((step or stopped)["step"])
            out.steps = n
            if (t := TRAIN_TIME.search(line)) is not None:
                out.train_seconds = float(t["value"]) * SECONDS_PER_UNIT[t["unit"]]
            if (avg := STEP_AVG.search(line)) is not None:
                out.ms_per_step = float(avg["ms"])
            if step and n > 0:  # step 0 is the untrained model's validation: no training to plot
                point = points.setdefault(n, {"step": n})
                if t is not None:
                    point["seconds"] = out.train_seconds
                if (loss := TRAIN_LOSS.search(line)) is not None:
                    point["train_loss"] = number(loss["loss"])
            if step and score:
                out.val_loss, out.val_bpb = number(score["loss"]), number(score["bpb"])
                if n > 0:
                    points[n].update(val_loss=out.val_loss, val_bpb=out.val_bpb)
            continue
        if not score:
            continue
        prefix = line[:score.start()]
        if PRE_QUANT.search(prefix):
            out.val_loss, out.val_bpb = number(score["loss"]), number(score["bpb"])
            continue
        words = [w for w in prefix.split() if ":" not in w and not w.replace(".", "").isdigit()]
        if words:
            finals.append((words[-1], score["loss"], score["bpb"]))
    if finals:
        base = finals[-1][0].removesuffix("_exact")
        exact = [f for f in finals if f[0] == base + "_exact"]
        label, loss, bpb = (exact or [f for f in finals if f[0] == finals[-1][0]])[-1]
        out.score_label, out.val_loss_post_quant, out.val_bpb_post_quant = label, float(loss), float(bpb)
    model, total = sizes["Serialized model"], sizes["Total submission size"]
    out.model_bytes = model.get(True, model.get(False))
    out.total_bytes = total.get(True, total.get(False))
    if out.ms_per_step is None and out.steps and out.train_seconds:
        out.ms_per_step = 1000.0 * out.train_seconds / out.steps
    out.curve = list(points.values())
    return out


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class ScriptRun:
    """One run of a script: what RunSpec is to a plugin run, less the model (the script is the model)."""

    script: Path
    budget: Budget
    env_flags: dict[str, str]
    seed: int = 1337
    run_id: str | None = None
    results_dir: Path | None = None
    data_root: Path | None = None
    data_dir: Path | None = None
    tokenizer: Path | None = None
    device: str | None = None        # overrides the budget's device kind
    max_steps: int | None = None     # overrides the budget's step cap (ITERATIONS)
    quiet: bool = False
    note: str | None = None
    command: list[str] = field(default_factory=lambda: list(sys.argv))

    def world_size(self) -> int:
        return self.budget.device_count if (self.device or self.budget.device) == "cuda" else 1

    def overrides(self) -> list[dict]:
        """Departures from the budget's contract, shaped as RunSpec.overrides shapes them."""
        b, out = self.budget, []
        for name, budget_value, effective in (
                ("device", b.device, self.device), ("device_count", b.device_count, self.world_size()),
                ("max_steps", b.max_steps, self.max_steps),
                ("data_dir", b.dataset, str(self.data_dir) if self.data_dir is not None else None),
                ("tokenizer", "the dataset's own", str(self.tokenizer) if self.tokenizer is not None else None)):
            if effective is not None and effective != budget_value:
                out.append({"name": name, "budget": budget_value, "effective": effective})
        return out

    def config_hash(self, script_sha256: str) -> str:
        from harness.config import stable_hash

        budget = {k: v for k, v in self.budget.to_dict().items() if k != "source"}
        key = {"script_sha256": script_sha256, "config": self.env_flags, "budget": budget, "seed": self.seed}
        departures = {o["name"]: o["effective"] for o in self.overrides()}
        return stable_hash({**key, "overrides": departures} if departures else key)


def pick_device(run: ScriptRun):
    """The device the record describes and the probe measures (the script picks its own, as the challenge's do)."""
    import torch

    b, kind = run.budget, run.device or run.budget.device
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"budget {b.name!r} is meant for {b.device_count}×CUDA GPU but no CUDA device is "
                            f"available; add --device cpu to run the script here anyway (numbers not comparable)")
        if torch.cuda.device_count() < run.world_size():
            raise UserError(f"budget {b.name!r} runs the script on {run.world_size()} GPUs but "
                            f"{torch.cuda.device_count()} are visible")
        return torch.device("cuda", 0)
    return torch.device("cpu")


def probe(device) -> dict:
    """The machine's calibration probe (harness.hardware.calibrate), its memory handed back before the script
    runs: the script, not the harness, is what the device is for."""
    from harness import hardware

    result = hardware.calibrate(device)
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()
    return result


def run_script(run: ScriptRun) -> dict[str, Any]:
    """Run the script under the budget and write its record, whatever the ending; returns the record. A failed
    run raises ScriptFailed after its record is written."""
    import harness
    from harness import hardware
    from harness.checks import to_safe_name
    from harness.data.datasets import resolve_dataset

    # ------------------------------------------------------------------ SETUP
    b = run.budget
    say = (lambda msg: None) if run.quiet else (lambda msg: print(msg, flush=True))
    device = pick_device(run)
    dataset = resolve_dataset(b.dataset, run.data_root, run.data_dir, run.tokenizer, log=say)
    if dataset.tokenizer.path is None:
        raise UserError(f"dataset {dataset.name!r} has no SentencePiece tokenizer ({dataset.tokenizer.name}); a "
                        f"challenge script reads one from TOKENIZER_PATH: use a token dataset")
    script_bytes = run.script.read_bytes()
    script_sha256 = hashlib.sha256(script_bytes).hexdigest()
    config_hash = run.config_hash(script_sha256)
    run_id = run.run_id or new_run_id(to_safe_name(f"script-{run.script.stem}"), b.name, run.seed, config_hash)
    run_dir = Path(run.results_dir or default_results_dir()) / run_id
    if run_dir.exists():
        raise UserError(f"results directory {run_dir} already exists; choose another --run-id")
    world_size, staging = run.world_size(), run_dir / "harness_shards"
    command = launch_command(run.script, device.type, world_size)
    run_dir.mkdir(parents=True)
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "run_id": run_id, "config_hash": config_hash, "status": "running",
        "variant": f"script:{run.script.name}", "preset": None, "config": run.env_flags, "seed": run.seed,
        "budget_name": b.name, "budget": b.to_dict(), "command": run.command, "note": run.note,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **hardware.git_state(),
        "environment": hardware.environment(device, world_size),
        "hardware_matches_budget": device.type == b.device and world_size == b.device_count,
        "dataset": dataset.name, "dataset_hash": dataset.content_hash, "tokenizer": dataset.tokenizer.name,
        "tokenizer_hash": dataset.tokenizer.content_hash, "tokenizer_check": dataset.tokenizer_check,
        "world_size": world_size, "warmup_steps": b.warmup_steps, "overrides": run.overrides(),
        "script": str(run.script), "script_sha256": script_sha256, "launch": command,
        "artifact_code_bytes": len(script_bytes), "artifact_code_counted": "script",
        "artifact_cap_bytes": b.artifact_cap_bytes, "calibration": {"before": probe(device)},
    }
    header = (f"run {run_id}: script {run.script.name} under {b.name} | python "
              f"{' '.join(command[1:-1] + [run.script.name])} | dataset {dataset.name} | seed {run.seed}"
              + "".join(f" | {k}={v}" for k, v in run.env_flags.items()))
    say(header)
    (run_dir / "log.txt").write_text(header + "\n", encoding="utf-8")

    # ------------------------------------------------------------------ THE SCRIPT (its own process)
    limit = b.train_wallclock_seconds + b.eval_seconds_limit + LAUNCH_MARGIN_SECONDS
    try:
        data_path = stage_dataset(dataset, staging, b.seq_len, b.val_tokens_cap)
        iterations = run.max_steps if run.max_steps is not None else b.max_steps
        record["script_env"] = {**challenge_env(b, data_path, str(dataset.tokenizer.path),
                                                dataset.tokenizer.vocab_size, run.seed, run_id, iterations),
                                **run.env_flags}
        write_json_atomic(run_dir / "run.json", record)
        ended = run_process(command, run_dir, {**os.environ, "PYTHONUNBUFFERED": "1", **record["script_env"]},
                            run_dir / "log.txt", echo=not run.quiet, limit_seconds=limit)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    # ------------------------------------------------------------------ RECORD (read from its log)
    parsed = parse_log(ended.lines)
    curve = [{**p, "tokens": p["step"] * b.tokens_per_step} for p in parsed.curve]
    total_bytes = (parsed.total_bytes if parsed.total_bytes is not None else
                   parsed.model_bytes + len(script_bytes) if parsed.model_bytes is not None else None)
    status, error = judge(ended, parsed, limit, total_bytes, b.artifact_cap_bytes)
    if not ended.interrupted:
        record["calibration"]["after"] = probe(device)
    record.update(status=status, error=error, exit_code=ended.exit_code, steps=parsed.steps,
                  tokens_seen=parsed.steps * b.tokens_per_step if parsed.steps is not None else None,
                  train_seconds=parsed.train_seconds, ms_per_step=parsed.ms_per_step,
                  tokens_per_second=(parsed.steps * b.tokens_per_step / parsed.train_seconds
                                     if parsed.steps and parsed.train_seconds else None),
                  val_loss=parsed.val_loss, val_bpb=parsed.val_bpb, curve=thin_curve(curve),
                  artifact_model_bytes=parsed.model_bytes, artifact_total_bytes=total_bytes)
    if status in ("ok", "over_cap"):  # a score only for a run that ended as it should
        record.update(score_line=parsed.score_label, val_loss_post_quant=parsed.val_loss_post_quant,
                      val_bpb_post_quant=parsed.val_bpb_post_quant,
                      tokens_per_byte=parsed.val_bpb_post_quant * math.log(2) / parsed.val_loss_post_quant)
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    record["wallclock_seconds_total"] = time.perf_counter() - harness.PROCESS_START
    record["outside_training_fraction"] = 1 - (parsed.train_seconds or 0.0) / record["wallclock_seconds_total"]
    write_json_atomic(run_dir / "run.json", record)
    if curve:
        write_curve(run_dir / "curve.jsonl", curve)
    summary = (f"{status}: {run_id} | " + (f"{error} | " if error else "")
               + f"val_bpb {fmt(record.get('val_bpb_post_quant'))} (pre-quant {fmt(parsed.val_bpb)}, "
               f"{parsed.score_label or 'no final line'}) | {parsed.steps} steps | {fmt(parsed.ms_per_step, 1)} "
               f"ms/step | artifact {total_bytes} bytes | record {run_dir / 'run.json'}")
    with open(run_dir / "log.txt", "a", encoding="utf-8") as log:
        log.write(summary + "\n")
    if status == "failed":
        raise ScriptFailed(f"run {run_id} failed: {error} (record and log in {run_dir})")
    print(f"{status} {run_id} val_bpb={fmt(record.get('val_bpb_post_quant'))}" if run.quiet else summary, flush=True)
    return record


def judge(ended: Ended, parsed: ScriptLog, limit: float, total_bytes: int | None,
          cap_bytes: int) -> tuple[str, str | None]:
    """(status, one-line reason or None) from how the process ended, what it printed and its artifact's size."""
    if ended.interrupted:
        return "interrupted", "stopped by Ctrl-C or SIGTERM"
    if ended.timed_out:
        return "failed", (f"the script was still running after {limit:.0f}s (the budget's wallclock + eval limit + "
                          f"{LAUNCH_MARGIN_SECONDS:.0f}s) and was stopped")
    if ended.exit_code != 0:
        how = (f"was killed by {signal.Signals(-ended.exit_code).name}" if ended.exit_code < 0 and
               -ended.exit_code in signal.valid_signals() else f"exited with code {ended.exit_code}")
        last = next((line.strip() for line in reversed(ended.lines) if line.strip()), "")
        return "failed", f"the script {how}" + (f": {last[:200]}" if last else "")
    problem = parsed.problem()
    if problem:
        return "failed", f"the script's log cannot be read: {problem}"
    if not all(v is not None and math.isfinite(v) and v > 0
               for v in (parsed.val_loss_post_quant, parsed.val_bpb_post_quant)):
        return "diverged", f"its final score ({parsed.score_label}) is not a finite positive number"
    return ("over_cap" if total_bytes is not None and total_bytes > cap_bytes else "ok"), None


def fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def run_script_command(args: argparse.Namespace, extra: list[str]) -> int:
    """`run --variant script:PATH ...` from the CLI: every check of its input, then the run; the exit code."""
    from harness.budget import load_budget, with_dataset
    from harness.checks import check_seed, safe_name
    from harness.cli import check_data_paths, results_folder

    script = check_script(args.variant.removeprefix("script:"))
    refuse_plugin_options(args)
    budget = load_budget(args.budget)
    if args.dataset:  # another tokenization: VOCAB_SIZE follows the dataset
        budget = with_dataset(budget, args.dataset)
    flags = parse_env_flags(extra, script.read_text(encoding="utf-8", errors="replace"), script.name)
    if args.run_id is not None:
        safe_name(args.run_id, "--run-id")
    check_seed(args.seed)
    check_data_paths(args)
    record = run_script(ScriptRun(script=script, budget=budget, env_flags=flags, seed=args.seed, run_id=args.run_id,
                                  results_dir=results_folder(args, writing=True), data_root=args.data_root,
                                  data_dir=args.data_dir, tokenizer=args.tokenizer, device=args.device,
                                  max_steps=args.max_steps, quiet=args.quiet, note=args.note))
    return 0 if record["status"] in ("ok", "over_cap") else 1
