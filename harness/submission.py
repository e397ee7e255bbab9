"""A run as a parameter-golf submission: the challenge's records layout, and the one script that reproduces it.

A record folder of the challenge holds README.md, submission.json, train.log and train_gpt.py, the file that
trains and scores the model and whose bytes count towards the cap. The harness's train_gpt.py is
bundle_script(files, settings): the harness modules a run needs and the model's files, packed as the
challenge's packed submissions pack theirs (lzma, then base85, on one comment line) under one header line a
file naming it with its size and sha256 (the folder the script unpacks them to is the readable copy; packing keeps the
counted code near the size of the challenge's own scripts instead of several times it), and
the run's settings (variant, config, budget, seed, techniques, the departures it applies) as JSON. The script's
code is the functions of the last section below, copied by their source. When run it writes the files to
golf_bundle_<hash>/ beside itself (reused when it holds exactly them), puts that folder first on sys.path and
calls harness.train.run with a RunSpec from the settings and the challenge's environment variables, so torchrun
works as for the challenge's script (train.run reads RANK and WORLD_SIZE). The same files and settings give the
same bytes (sorted, no timestamps, no paths of this machine), so len(bundle_script(...)) is a run's
submission-equivalent code size: submission_settings(record) and settings_from_spec(spec) give the same settings
for the same run, from its record or from the trainer's RunSpec.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import inspect
import json
import lzma
import math
import os
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness import REPO_ROOT
from harness.artifact import harness_imports
from harness.errors import UserError

if TYPE_CHECKING:
    from harness.runspec import RunSpec

FINISHED = ("ok", "over_cap", "over_eval_limit")  # the endings with a scored artifact
FILE_MARK = "#>>> "                               # the header line of an embedded file
PACKED = "#~"                                     # the line holding a file: lzma, then base85
# Departures from the budget the script applies as the run did (ITERATIONS replaces the step cap); the data paths
# come from the challenge's DATA_PATH and TOKENIZER_PATH instead.
APPLIED_OVERRIDES = ("device", "precision", "compile", "max_steps")
PLUGIN_FOLDER = "plugins"  # where the bundle puts a variant file from outside the repository, with its helpers


# ---------------------------------------------------------------------------------------------- what is bundled


def _closure(start: Iterable[Path], anywhere: bool) -> set[Path]:
    seen: set[Path] = set()
    todo = list(start)
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += harness_imports(path, anywhere)
    return seen


def _cached(kind: str, key: str, make) -> str:
    """`make()`, a string that is a function of `key`, kept under data/cache/bundle/ so that every run (most of
    them fresh processes) does not parse the harness and pack it again: 0.6 s a run otherwise. A cache that
    cannot be read or written is skipped."""
    from harness.data.datasets import default_data_root
    from harness.results import write_atomic

    path = default_data_root() / "cache" / "bundle" / f"{kind}-{key}"
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        pass
    value = make()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, value.encode("utf-8"))
    except OSError:
        pass
    return value


@functools.cache
def harness_files() -> tuple[Path, ...]:
    """The harness modules a run executes: artifact.trainer_source_files() (train.py and its module-level imports),
    what train.py reaches through imports inside functions too (registering a variant checks its search space
    with harness/tune/space.py; a budget's dataset is built by harness/data/builtin.py), the modules
    integrity.freeze() imports before a plugin loads (harness/cli.py among them), and each package's __init__.py.
    Cached by the harness files' hashes as the process first imported them."""
    from harness import integrity

    def find() -> str:
        from harness import artifact

        run_modules = [REPO_ROOT.joinpath(*m.split(".")).with_suffix(".py") for m in integrity.RUN_MODULES]
        files = (set(artifact.trainer_source_files()) | _closure([REPO_ROOT / "harness" / "train.py"], anywhere=True)
                 | _closure(run_modules, anywhere=False))
        packages = {parent / "__init__.py" for f in files for parent in f.parents if parent.is_relative_to(
            REPO_ROOT / "harness")}
        found = sorted(f.resolve() for f in files | {p for p in packages if p.is_file()})
        return json.dumps([f.relative_to(REPO_ROOT).as_posix() for f in found])

    key = hashlib.sha256(json.dumps(integrity.FILE_HASHES, sort_keys=True).encode()).hexdigest()[:32]
    return tuple(REPO_ROOT / rel for rel in json.loads(_cached("files", key, find)))


def bundle_files(model_files: Iterable[Path]) -> list[Path]:
    """Every file a run's script embeds: harness_files() and the model's (the variant file among them)."""
    return sorted(set(harness_files()) | {Path(p).resolve() for p in model_files})


def _bundle_name(path: Path, variant_folder: Path) -> str:
    """Where `path` goes in the bundle: its place in the repository, or for a plugin outside it, its place under
    the variant file's folder (a helper module beside a plugin variant goes beside it)."""
    path = Path(path).resolve()
    if path.is_relative_to(REPO_ROOT):
        return path.relative_to(REPO_ROOT).as_posix()
    if not path.is_relative_to(variant_folder):
        raise UserError(f"{path} is model code from outside the repository and outside the variant file's folder "
                        f"{variant_folder}; move it beside the variant file to export the run")
    return f"{PLUGIN_FOLDER}/{path.relative_to(variant_folder).as_posix()}"


def _bundle_names(files: Iterable[Path], variant_file: str) -> dict[str, Path]:
    """{name in the bundle: file}, the variant file under the name the settings give it."""
    files = sorted({Path(p).resolve() for p in files})
    named = [f for f in files if _bundle_name(f, f.parent) == variant_file]
    if not named:
        raise ValueError(f"the settings name the variant file {variant_file!r}, which is not among the files")
    variant = min(named, key=lambda f: len(f.parts))  # a plugin's helpers sit below its variant file, never above
    return {_bundle_name(f, variant.parent): f for f in files}


# ---------------------------------------------------------------------------------------------- the settings


def _settings(variant: str, variant_path: Path, preset: str | None, config: dict, budget: dict, seed: int,
              techniques: list[dict], overrides: list[dict]) -> dict:
    """The settings a bundle runs with, as plain JSON values (a tuple and a list are the same value here)."""
    settings = {"variant": variant, "variant_file": _bundle_name(variant_path, Path(variant_path).resolve().parent),
                "preset": preset, "config": config, "budget": {k: v for k, v in budget.items() if k != "source"},
                "seed": seed, "techniques": techniques,
                "overrides": {o["name"]: o["effective"] for o in overrides if o["name"] in APPLIED_OVERRIDES}}
    return json.loads(json.dumps(settings, allow_nan=False))


def settings_from_spec(spec: RunSpec) -> dict:
    """The settings of the run a RunSpec (harness/runspec.py) describes, as the trainer has it."""
    from harness.config import as_dict

    return _settings(spec.variant.name, spec.variant.source_file, spec.preset, as_dict(spec.config),
                     spec.budget.to_dict(), spec.seed, spec.technique_record(), spec.overrides())


def record_files(record: dict, root: Path = REPO_ROOT) -> list[Path]:
    """The code files the run counted (its record's artifact_code_files), where they are now."""
    files = sorted({(root / rel).resolve() for rel in record.get("artifact_code_files") or []})
    missing = [f for f in files if not f.is_file()]
    if not files or missing:
        what = f"{missing[0]}, code the run counted, no longer exists" if missing else "its record lists no code"
        raise UserError(f"run {record['run_id']}: {what}; restore it to export this run")
    return files


def variant_file_of(record: dict, files: list[Path]) -> Path:
    """The run's variant file: the one of its code files with the sha256 the run recorded for it."""
    wanted = record.get("variant_sha256")
    found = [f for f in files if hashlib.sha256(f.read_bytes()).hexdigest() == wanted]
    if not wanted or not found:
        raise UserError(f"run {record['run_id']}: none of its code files is the variant file it trained (sha256 "
                        f"{str(wanted)[:12]}…): it was changed or moved since; restore it to export this run")
    return found[0]


def submission_settings(record: dict, root: Path = REPO_ROOT) -> dict:
    """The settings of a recorded run (a run.json as a dict); the same as settings_from_spec gives for it."""
    from harness.techniques import known_technique_names

    plugins = [t["name"] for t in record.get("techniques") or [] if t["name"] not in known_technique_names()]
    if plugins:
        raise UserError(f"run {record['run_id']} used the technique {plugins[0]!r} from a plugin file; an export "
                        f"bundles the harness's own techniques only (harness/techniques/)")
    return _settings(record["variant"], variant_file_of(record, record_files(record, root)), record.get("preset"),
                     record["config"], record["budget"], record["seed"], record.get("techniques") or [],
                     record.get("overrides") or [])


def submission_code_bytes(record: dict, root: Path = REPO_ROOT) -> int:
    """The size of the script that reproduces a recorded run: what its train_gpt.py holds."""
    return len(bundle_script(bundle_files(record_files(record, root)), submission_settings(record, root)))


# ---------------------------------------------------------------------------------------------- the script

SCRIPT_HEAD = '''#!/usr/bin/env python3
"""One golf-harness run as a single training script, in the parameter-golf challenge's records layout.

Everything it needs is in this file: SETTINGS below (the variant, its config, the budget, the seed, the training
techniques and the departures from the budget the run made) and, after the code, the source of the harness
modules and model files it uses: a header line a file (path, size, sha256), then all of them packed on one
comment line (lzma, then base85). Run, it writes those
files to golf_bundle_<hash>/ beside itself (or a temporary folder if that cannot be written), puts that folder
first on the import path and trains, scores and records one run there with harness.train.run.

    DATA_PATH=... TOKENIZER_PATH=... torchrun --standalone --nproc_per_node=N train_gpt.py

Environment (each optional):
  DATA_PATH              a folder of *_train_*.bin / *_val_*.bin shards (default: the budget's dataset under
                         ./data, or $HARNESS_DATA_ROOT, as the harness lays it out)
  TOKENIZER_PATH         the SentencePiece .model the shards were made with (default: the one beside them)
  SEED                   training seed (default: the run's)
  RUN_ID                 name of the run's folder (default: time, variant, budget, seed, hash)
  ITERATIONS             cap on optimizer steps (default: the run's cap)
  MAX_WALLCLOCK_SECONDS  the training clock; a value other than the budget's is recorded as budget
                         <name>-clock<seconds>s, with a note, so it never shares a leaderboard with the budget
  RESULTS_DIR            where the run's folder goes (default: ./results)
"""

from __future__ import annotations

import base64
import hashlib
import json
import lzma
import os
import shutil
import sys
import tempfile
from pathlib import Path

'''


def packed_files(files: Mapping[str, bytes]) -> str:
    """embed_files(files), cached by the files' names and contents."""
    key = hashlib.sha256(json.dumps(sorted((n, hashlib.sha256(d).hexdigest()) for n, d in files.items()))
                         .encode()).hexdigest()[:32]
    return _cached("packed", key, lambda: embed_files(files))


def embed_files(files: Mapping[str, bytes]) -> str:
    """Comment lines holding `files` ({name: bytes of UTF-8 text}): one header line per file (its path, size and
    sha256, in name order), then their bytes one after another, packed once (lzma, base85) on one line, since
    the modules share most of their words. read_embedded reads them back."""
    out, blob = ["#"], b""
    for name in sorted(files):
        data = files[name]
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{name} is not UTF-8 text; save it as UTF-8 (Python's own source encoding)") from None
        out.append(FILE_MARK + json.dumps({"path": name, "bytes": len(data),
                                           "sha256": hashlib.sha256(data).hexdigest()}))
        blob += data
    out.append(PACKED + base64.b85encode(lzma.compress(blob, preset=9 | lzma.PRESET_EXTREME)).decode("ascii"))
    return "\n".join(out) + "\n"


def bundle_script(files: list[Path], settings: dict) -> bytes:
    """The self-contained training script (train_gpt.py) of a run: `files` (bundle_files()) and `settings`
    (submission_settings() or settings_from_spec()). The same files and settings give the same bytes."""
    names = _bundle_names(files, settings["variant_file"])
    constants = "".join(f"{name} = {value!r}\n" for name, value in (
        ("FINISHED", FINISHED), ("FILE_MARK", FILE_MARK), ("PACKED", PACKED)))
    code = "\n\n".join(inspect.getsource(fn) for fn in SCRIPT_FUNCTIONS)
    text = (SCRIPT_HEAD + 'SETTINGS = json.loads(r"""\n' + json.dumps(settings, indent=1, sort_keys=True)
            + '\n""")\n' + constants + "\n\n" + code + '\n\nif __name__ == "__main__":\n'
            "    sys.exit(bundle_main(Path(__file__).resolve(), SETTINGS))\n\n"
            "# " + "-" * 100 + " the embedded files\n"
            + packed_files({name: path.read_bytes() for name, path in names.items()}))
    return text.encode("utf-8")


# ------------------------------------------------------------------------------- the record folder (export)


@dataclass(frozen=True)
class Exported:
    folder: Path
    script_bytes: int
    warnings: tuple[str, ...]


def find_run(run: str, results_dir: Path) -> Path:
    """A run folder from a run id in `results_dir` or a path to a run folder."""
    from harness.checks import SAFE_NAME

    path = Path(run)
    if (path / "run.json").is_file():
        return path
    if SAFE_NAME.fullmatch(run) and (Path(results_dir) / run / "run.json").is_file():
        return Path(results_dir) / run
    raise UserError(f"no run {run!r} in {results_dir} (python -m harness results lists the recorded runs; or give "
                    f"the path of a run folder)")


def finished_record(run_dir: Path) -> dict:
    """The run's record, if the run ended with a scored artifact; a one-line refusal otherwise."""
    from harness.results import read_record

    record = read_record(run_dir)
    if record is None:
        raise UserError(f"{run_dir / 'run.json'} is not a readable run record: nothing to submit")
    status = record["status"]
    if status not in FINISHED:
        ended = "has not finished" if status == "running" else f"ended {status}"
        raise UserError(f"run {record['run_id']} {ended}: nothing to submit (only a run that ended "
                        f"{', '.join(FINISHED)} has a scored artifact)")
    if not (run_dir / "model.int8.ptz").is_file() or record.get("val_bpb_post_quant") is None:
        raise UserError(f"run {record['run_id']} has no scored artifact in {run_dir}: nothing to submit")
    return record


def _hardware(record: dict) -> str:
    env = record.get("environment") or {}
    return f"{record.get('world_size', 1)}×{env.get('device_name') or env.get('device_type', '?')}"


def _harness_command(record: dict) -> str:
    """The command that made the run, as a person types it (the CLI records its own path as argv[0])."""
    words = list(record.get("command") or [])
    if words and Path(words[0]).name == "__main__.py" and Path(words[0]).parent.name == "harness":
        words = ["python", "-m", "harness", *words[1:]]
    return shlex.join(words) if words else "(not recorded)"


def _script_command(record: dict, settings: dict) -> str:
    """How to run the exported script as the run ran: the data it read, its seed, and its step cap."""
    departed = {o["name"]: o["effective"] for o in record.get("overrides") or []}
    env = [f"SEED={record['seed']}"]
    env += [f"{var}={shlex.quote(str(departed[name]))}" for var, name in (("DATA_PATH", "data_dir"),
                                                                           ("TOKENIZER_PATH", "tokenizer"))
            if name in departed]
    if "max_steps" in settings["overrides"]:
        env.append(f"ITERATIONS={settings['overrides']['max_steps']}")
    return " \\\n".join([*env, f"torchrun --standalone --nproc_per_node={record.get('world_size', 1)} train_gpt.py"])


def submission_json(record: dict, script_bytes: int, name: str | None, author: str | None,
                    github_id: str | None) -> dict:
    """submission.json with the fields the challenge's records use (the score is the export's round trip's, under
    the run's eval scheme)."""
    label = f"{record['variant']}{':' + record['preset'] if record.get('preset') else ''}"
    blurb = (f"{label} trained with golf-harness under budget {record['budget_name']} (seed {record['seed']}): "
             f"{record['steps']} steps in {record['train_seconds']:.1f}s on {_hardware(record)}; "
             f"{_export(record)} round trip scored ({_eval(record)}) in a sealed process."
             + (f" {record['note']}" if record.get("note") else ""))
    return {
        "name": name or f"{label} ({record['budget_name']})", "author": author, "github_id": github_id,
        "date": record.get("finished_at"), "blurb": blurb,
        "val_loss": record["val_loss_post_quant"], "val_bpb": record["val_bpb_post_quant"],
        "pre_quant_val_loss": record.get("val_loss"), "pre_quant_val_bpb": record.get("val_bpb"),
        "bytes_total": record["artifact_model_bytes"] + script_bytes, "bytes_code": script_bytes,
        f"bytes_model_{_export(record).replace('-', '_')}": record["artifact_model_bytes"],
        "seeds": [record["seed"]],
        "hardware": _hardware(record), "pytorch_version": (record.get("environment") or {}).get("torch"),
        "tokenizer": record.get("tokenizer"),
        "harness": {"run_id": record["run_id"], "status": record["status"], "variant": record["variant"],
                    "preset": record.get("preset"), "budget": record["budget_name"], "commit": record.get("commit"),
                    "steps": record["steps"], "train_seconds": record["train_seconds"],
                    "ms_per_step": record.get("ms_per_step"),
                    "artifact_total_bytes": record.get("artifact_total_bytes"),
                    "artifact_code_counted": record.get("artifact_code_counted")},
    }


def _export(record: dict) -> str:
    return (record.get("config") or {}).get("export", "int8-zlib")


def _eval(record: dict) -> str:
    scheme = record.get("eval_scheme") or {"scheme": "standard"}
    return scheme["scheme"] + (f" stride {scheme['stride']}" if "stride" in scheme else "") + " evaluation"


def readme(record: dict, submission: dict, settings: dict, drift: str | None) -> str:
    """README.md: the result, the bytes against the cap, where it ran, and the commands that made and remake it."""
    b = record["budget"]
    cap, total = record["artifact_cap_bytes"], submission["bytes_total"]
    fits = "fits" if total <= cap else f"OVER the cap by {total - cap:,} bytes"
    step_cap = settings["overrides"].get("max_steps", b["max_steps"])
    stopped = f"the step cap of {step_cap:,}" if record["steps"] >= step_cap else "the clock"
    env = record.get("environment") or {}
    commit = record.get("commit") or "unknown"
    lines = [
        f"# {submission['name']}", "", submission["blurb"], "",
        f"Exported by golf-harness from run `{record['run_id']}` (status `{record['status']}`).", "",
        "## Result", "",
        "| | val_loss | val_bpb |", "| --- | --- | --- |",
        f"| after the {_export(record)} round trip, {_eval(record)} (the score) | "
        f"{record['val_loss_post_quant']:.8f} | "
        f"{record['val_bpb_post_quant']:.8f} |",
        f"| before quantization | {record['val_loss']:.8f} | {record['val_bpb']:.8f} |", "",
        f"- Training: {record['steps']:,} steps in {record['train_seconds']:.2f} s of the budget's "
        f"{b['train_wallclock_seconds']:g} s (stopped by {stopped}), {record['ms_per_step']:.2f} ms/step, "
        f"{record['tokens_per_second']:,.0f} tokens/s",
        f"- Artifact: model {record['artifact_model_bytes']:,} + code {submission['bytes_code']:,} (train_gpt.py) = "
        f"{total:,} bytes against the cap of {cap:,}: {fits}. The run itself counted "
        f"{record['artifact_code_bytes']:,} bytes of {record.get('artifact_code_counted', 'submission')} code "
        f"(total {record['artifact_total_bytes']:,}).",
        f"- Hardware: {_hardware(record)} ({env.get('device_type', '?')}), torch {env.get('torch', '?')}, "
        f"python {env.get('python', '?')}, precision {record.get('precision', '?')}",
        f"- Budget: `{record['budget_name']}`: {b['train_wallclock_seconds']:g} s on {b['device_count']}×"
        f"{b['device']}, {b['tokens_per_step']:,} tokens/step at seq_len {b['seq_len']}, dataset `{b['dataset']}` "
        f"(sha256 {str(record.get('dataset_hash'))[:12]}…, tokenizer `{record.get('tokenizer')}`)",
        f"- Seed: {record['seed']}",
        f"- Harness commit: `{commit}`" + (" (with uncommitted changes)" if record.get("dirty") else ""),
    ]
    if record.get("overrides"):
        lines.append("- Departures from the budget: " + ", ".join(f"{o['name']} = {o['effective']}"
                                                                 for o in record["overrides"]))
    if drift:
        lines.append(f"- Exported when {drift}")
    lines += [
        "", "## Commands", "", "The run:", "", "```bash", _harness_command(record), "```", "",
        "The same run from this folder (train_gpt.py holds the harness modules and the model's code; it writes "
        "them to `golf_bundle_<hash>/` beside itself and records the run under `./results`):", "",
        "```bash", _script_command(record, settings), "```", "",
        "Unset, `DATA_PATH` and `TOKENIZER_PATH` find the budget's dataset under `./data` as the harness lays it out "
        "(`python -m harness data` builds or fetches it there); `ITERATIONS` caps the steps and "
        "`MAX_WALLCLOCK_SECONDS` changes the clock (recorded as another budget). The script's docstring lists "
        "every variable.", "",
        "## Files", "",
        "- `train_gpt.py`: the training script (its bytes are the code counted above)",
        "- `train.log`: the run's log", "- `submission.json`: leaderboard metadata", "",
    ]
    return "\n".join(lines)


def export_run(run_dir: Path, out: Path, name: str | None = None, author: str | None = None,
               github_id: str | None = None) -> Exported:
    """Write `out` (new, or an empty folder) as the challenge's record folder of a finished run."""
    from harness.checks import writable_folder
    from harness.hardware import git_state

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a new folder")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty; give a new or empty folder (export never overwrites)")
    record = finished_record(Path(run_dir))
    settings = submission_settings(record)
    script = bundle_script(bundle_files(record_files(record)), settings)
    now = git_state()
    drift = None  # the script embeds the harness as it is now: say so when that may not be the run's
    if now["commit"] != record.get("commit") or now["dirty"] or record.get("dirty"):
        drift = (f"the harness is at commit {str(now['commit'])[:12]}{' (changed)' if now['dirty'] else ''}, the run "
                 f"was made at {str(record.get('commit'))[:12]}{' (changed)' if record.get('dirty') else ''}: "
                 f"train_gpt.py embeds the harness as it is now")
    warnings = [drift] if drift else []
    if not author or not github_id:
        warnings.append("submission.json has no author or github_id; pass --author and --github-id")
    sub = submission_json(record, len(script), name, author, github_id)
    contents = {"README.md": readme(record, sub, settings, drift).encode("utf-8"),
                "submission.json": (json.dumps(sub, indent=2, allow_nan=False) + "\n").encode("utf-8"),
                "train.log": (Path(run_dir) / "log.txt").read_bytes(), "train_gpt.py": script}
    # Written whole or not at all: a folder beside `out`, renamed onto it (which only an empty folder allows).
    writable_folder(out.parent, "--out")
    tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    try:
        tmp.mkdir()
        for file, data in contents.items():
            (tmp / file).write_bytes(data)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Exported(out, len(script), tuple(warnings))


# ------------------------------------------------------------------------------------------------------------
# The exported script's own code: bundle_script copies these functions' source into train_gpt.py, after the
# standard-library imports and the constants above (FINISHED, FILE_MARK, VERBATIM, ESCAPED). So they use nothing
# else of this module, and import the harness only inside, once the bundle is on the import path.


def read_embedded(text: str) -> dict[str, bytes]:
    """The files embedded in a script's comment lines, each checked against its sha256 (ValueError if not)."""
    lines = [line.removesuffix("\r") for line in text.split("\n")]  # a copy whose line ends became CRLF reads alike
    heads = [json.loads(line[len(FILE_MARK):]) for line in lines if line.startswith(FILE_MARK)]
    packed = [line[len(PACKED):] for line in lines if line.startswith(PACKED)]
    try:
        blob = lzma.decompress(base64.b85decode(packed[-1])) if packed else b""
    except (ValueError, lzma.LZMAError):  # a damaged line: the hash checks below say which file
        blob = b""
    files: dict[str, bytes] = {}
    at = 0
    for head in heads:
        data = blob[at:at + head["bytes"]]
        at += head["bytes"]
        if hashlib.sha256(data).hexdigest() != head["sha256"]:
            raise ValueError(f"the embedded file {head['path']} does not match its sha256: this script was changed "
                             f"after it was exported; export the run again")
        files[head["path"]] = data
    return files


def holds_exactly(folder: Path, files: dict[str, bytes]) -> bool:
    """Whether `folder` holds `files` and nothing else (Python's __pycache__ folders aside)."""
    if not folder.is_dir():
        return False
    try:
        present = {p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and "__pycache__" not in p.relative_to(folder).parts}
        return present == set(files) and all((folder / name).read_bytes() == data for name, data in files.items())
    except OSError:  # another user's folder: not one to reuse
        return False


def unpack(files: dict[str, bytes], beside: Path) -> Path:
    """The folder holding `files`: golf_bundle_<hash> in `beside`, reused when it holds exactly them, else written
    whole (a temporary folder renamed into place, so ranks that start together never see half of it); a new
    temporary folder when that place cannot be written or holds something else."""
    digest = hashlib.sha256(json.dumps({name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
                                       sort_keys=True).encode()).hexdigest()[:12]
    target = beside / f"golf_bundle_{digest}"

    def write(folder: Path) -> None:
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)

    if not holds_exactly(target, files):
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=beside))
            try:
                write(tmp)
                os.rename(tmp, target)  # fails if another rank got there first, or something else is there
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass
    if holds_exactly(target, files):
        return target
    fallback = Path(tempfile.mkdtemp(prefix="golf_bundle_"))
    write(fallback)
    print(f"note: {target} cannot be written or holds other files; the bundle is in {fallback}", file=sys.stderr)
    return fallback


def env_number(env: Mapping[str, str], name: str, kind: type, low: float,
               above: bool = False) -> int | float | None:
    """The environment variable `name` as an int or float of at least (or `above`) `low`; None when unset."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or (value <= low if above else value < low):
        from harness.errors import UserError

        raise UserError(f"{name}={raw!r} must be {'an integer' if kind is int else 'a number'} "
                        f"{'above' if above else 'of at least'} {low:g}")
    return value


def spec_from_settings(bundle: Path, settings: dict, env: Mapping[str, str], script: Path) -> RunSpec:
    """The RunSpec of the exported run: the settings, with the challenge's environment variables applied."""
    from harness.budget import Budget, check_budget
    from harness.checks import check_seed, existing_file, safe_name
    from harness.config import replace
    from harness.errors import UserError
    from harness.registry import get_variant
    from harness.runspec import RunSpec
    from harness.techniques import get_technique

    variant, _ = get_variant(str(bundle / settings["variant_file"]))
    if variant.name != settings["variant"]:
        raise UserError(f"{settings['variant_file']} registers {variant.name!r}, the run trained "
                        f"{settings['variant']!r}")
    config = replace(variant.config_cls(), settings["config"], "the exported run's config")
    applied = []
    for entry in settings["techniques"]:
        technique = dataclasses.replace(get_technique(entry["name"]), preset=entry.get("preset"))
        applied.append((technique, replace(technique.config_cls(), entry["config"], f"technique {entry['name']}")))
    budget = Budget(**settings["budget"], source=str(script))
    clock = env_number(env, "MAX_WALLCLOCK_SECONDS", float, 0, above=True)
    note = None
    if clock is not None and clock != budget.train_wallclock_seconds:
        # Another clock is another contract: the run is recorded under its own budget name, never the budget's.
        note = f"MAX_WALLCLOCK_SECONDS={clock:g} replaced budget {budget.name}'s {budget.train_wallclock_seconds:g} s"
        budget = dataclasses.replace(budget, name=f"{budget.name}-clock{clock:g}s", train_wallclock_seconds=clock)
    check_budget(budget, script)
    seed = env_number(env, "SEED", int, 0)
    run_id = env.get("RUN_ID") or None
    data_dir = Path(env["DATA_PATH"]) if env.get("DATA_PATH") else None
    if data_dir is not None and data_dir.exists() and not data_dir.is_dir():
        raise UserError(f"DATA_PATH {data_dir} is a file; give the folder of *_train_*/*_val_* shards")
    tokenizer = env.get("TOKENIZER_PATH")
    steps = env_number(env, "ITERATIONS", int, 1)
    overrides = settings["overrides"]
    return RunSpec(
        variant=variant, config=config, budget=budget, preset=settings["preset"],
        seed=check_seed(settings["seed"] if seed is None else seed, "SEED"),
        run_id=safe_name(run_id, "RUN_ID") if run_id else None,
        results_dir=Path(env.get("RESULTS_DIR") or "results"),
        data_root=Path(env.get("HARNESS_DATA_ROOT") or "data"),  # the challenge's ./data layout
        data_dir=data_dir,
        tokenizer=existing_file(Path(tokenizer), "SentencePiece .model", "TOKENIZER_PATH") if tokenizer else None,
        device=overrides.get("device"), compile=overrides.get("compile"), precision=overrides.get("precision"),
        max_steps=overrides.get("max_steps") if steps is None else steps, techniques=applied, note=note)


def bundle_main(script: Path, settings: dict) -> int:
    """What the exported script does: unpack its files beside itself, then run them (run_bundle, in the bundled
    harness/submission.py). Exit 2 for a damaged script."""
    try:
        files = read_embedded(script.read_bytes().decode("utf-8"))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bundle = unpack(files, script.parent)
    sys.path.insert(0, str(bundle))
    from harness.submission import run_bundle

    return run_bundle(bundle, settings, script)


def run_bundle(bundle: Path, settings: dict, script: Path) -> int:
    """One harness run from an unpacked bundle. Exit 0 when the run ends with a scored artifact, 2 for bad input
    (one line), 1 otherwise, as `python -m harness run` does."""
    # The bundle is not a git checkout: its runs record no commit, not that of a repository it happens to sit in.
    os.environ["GIT_CEILING_DIRECTORIES"] = str(bundle.parent)
    from harness.errors import UserError
    from harness.train import RunFailed, run

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # torchrun and schedulers stop with SIGTERM: recorded as interrupted
    try:
        record = run(spec_from_settings(bundle, settings, os.environ, script))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if record["status"] in FINISHED else 1


SCRIPT_FUNCTIONS = (read_embedded, holds_exactly, unpack, bundle_main)  # the rest runs from the bundle
