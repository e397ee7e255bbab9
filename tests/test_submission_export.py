"""`python -m harness export`: a finished run as the challenge's record folder, whose one script reproduces it."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import harness_cli, harness_main, only_record, write_budget
from harness import REPO_ROOT, submission
from harness.errors import UserError

SCRIPT_VARIABLES = ("DATA_PATH", "TOKENIZER_PATH", "SEED", "RUN_ID", "ITERATIONS", "MAX_WALLCLOCK_SECONDS",
                    "RESULTS_DIR", "HARNESS_DATA_ROOT")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One tiny run through the CLI, exported: (budget file, results folder, its record, the record folder). The
    run is on another export and eval scheme than the defaults, with late QAT from its first step (wide enough for
    the embedding to be quantised), so the exported script must reproduce all three."""
    tmp = tmp_path_factory.mktemp("export")
    budget, results, out = write_budget(tmp / "tiny.toml"), tmp / "results", tmp / "record"
    ran = harness_cli("run", "--variant", "baseline", "--budget", str(budget), "--max-steps", "3",
                      "--results-dir", str(results), "--quiet", "--model-dim", "128", "--export", "mixed-zstd",
                      "--eval", "sliding", "--eval-stride", "32", "--late-qat", "1.0")
    assert ran.returncode == 0, ran.stderr
    record = only_record(results)
    done = harness_main("export", record["run_id"], "--results-dir", str(results), "--out", str(out),
                        "--author", "A. Golfer", "--github-id", "agolfer")
    assert done.returncode == 0, done.stderr
    return budget, results, record, out


def record_dirs(exported):
    _, results, record, _ = exported
    return list((results / record["run_id"]).iterdir())


def test_export_writes_the_challenge_records_layout(exported):
    _, _, record, out = exported
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "submission.json", "train.log", "train_gpt.py"]
    script = (out / "train_gpt.py").read_bytes()
    sub = json.loads((out / "submission.json").read_text())
    assert sub["val_bpb"] == record["val_bpb_post_quant"] and sub["pre_quant_val_bpb"] == record["val_bpb"]
    assert sub["bytes_code"] == len(script) == submission.submission_code_bytes(record) == record["artifact_code_bytes"]
    # the run's schemes: late QAT on every timed step, the mixed export, the sliding score beside the standard one
    assert record["late_qat_steps"] == 3 and record["config"]["export"] == "mixed-zstd"
    scheme = record["eval_scheme"]
    assert scheme["scheme"] == "sliding" and scheme["targets_scored"] == record["val_tokens"]
    assert record["val_bpb_post_quant_standard"] != record["val_bpb_post_quant"]
    artifact = next(p for p in record_dirs(exported) if p.name == "model.int8.ptz").read_bytes()
    assert artifact.startswith(b"golf:mixed-zstd\n") and len(artifact) == record["artifact_model_bytes"]
    assert sub["bytes_total"] == record["artifact_model_bytes"] + len(script)
    assert (sub["author"], sub["github_id"], sub["date"]) == ("A. Golfer", "agolfer", record["finished_at"])
    readme = (out / "README.md").read_text()
    assert f"{record['val_bpb_post_quant']:.8f}" in readme and "--max-steps 3" in readme
    assert "ITERATIONS=3" in readme and "torchrun --standalone --nproc_per_node=1 train_gpt.py" in readme
    assert (out / "train.log").read_bytes() == (exported[1] / record["run_id"] / "log.txt").read_bytes()


def test_exported_script_reproduces_the_run_from_another_folder(exported, tmp_path):
    """Same seed, same data, CPU fp32: the same losses step by step and the same score, with every file the run
    needs coming out of the one script (the sealed round trip copies the harness from the unpacked bundle)."""
    from harness.data.datasets import resolve_dataset

    _, results, record, out = exported
    dataset = resolve_dataset("builtin")
    assert dataset.content_hash == record["dataset_hash"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in SCRIPT_VARIABLES}
    env.update(DATA_PATH=str(dataset.directory), TOKENIZER_PATH=dataset.tokenizer.path, ITERATIONS="3")
    done = subprocess.run([sys.executable, str(out / "train_gpt.py")], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    again = only_record(elsewhere / "results")
    losses = [json.loads(line)["train_loss"] for line in (elsewhere / "results" / again["run_id"] /
                                                          "curve.jsonl").read_text().splitlines()]
    original = [json.loads(line)["train_loss"] for line in (results / record["run_id"] /
                                                            "curve.jsonl").read_text().splitlines()]
    assert len(losses) == len(original) == 3
    assert losses == pytest.approx(original, abs=1e-6)
    assert again["val_bpb_post_quant"] == pytest.approx(record["val_bpb_post_quant"], abs=1e-6)
    assert (again["variant"], again["seed"], again["budget_name"], again["commit"]) == ("baseline", 1337, "tiny",
                                                                                        None)
    # The unpacked harness is the one that trained: its code counts the same bytes.
    assert again["artifact_submission_code_bytes"] == record["artifact_submission_code_bytes"]
    assert [p.name for p in out.glob("golf_bundle_*")] and not list(elsewhere.glob("golf_bundle_*"))


def test_settings_from_the_record_and_from_the_runspec_are_the_same(exported):
    """The trainer will count a script built from its RunSpec; the export builds one from the record."""
    from harness.budget import load_budget
    from harness.registry import get_variant
    from harness.runspec import RunSpec

    budget_file, _, record, out = exported
    budget = load_budget(str(budget_file))
    variant, _ = get_variant("baseline")
    config = variant.resolve(None, budget.model, {"model_dim": 128, "export": "mixed-zstd", "eval": "sliding",
                                                  "eval_stride": 32, "late_qat": 1.0}, budget.name)
    spec = RunSpec(variant=variant, config=config, budget=budget, seed=1337, max_steps=3)
    assert submission.settings_from_spec(spec) == submission.submission_settings(record)
    files = submission.bundle_files(submission.record_files(record))
    first = submission.bundle_script(files, submission.settings_from_spec(spec))
    assert first == submission.bundle_script(files, submission.submission_settings(record))
    assert first == (out / "train_gpt.py").read_bytes()  # byte-stable across calls and processes


TRICKY = ("'''\"\"\" quotes, a backslash at the end \\\n\\x00 written out, then real ones:\r\n"
          "a lone carriage return\rthen text\n\x00\x0c\x1b\t tabs\u2028line separator\u00a0nbsp \ufeff é ✓ 🏌\n"
          "#>>> {\"path\": \"fake\", \"lines\": 1}\n#|\n#\\\"x\"\n").encode("utf-8")


def test_any_source_text_survives_embedding_and_the_script_stays_valid_python(tmp_path):
    """Files packed in comment lines: quotes, backslashes, control and invisible characters, lines that look like
    the format's own marks, a file without a final newline; a copy with CRLF line ends reads the same."""
    files = {"a.py": TRICKY, "b/empty.py": b"", "c.py": b"x = 1  # no final newline"}
    text = submission.embed_files(files)
    assert submission.read_embedded(text) == files
    assert submission.read_embedded(text.replace("\n", "\r\n")) == files
    compile(text, "embedded", "exec")  # comments only: nothing in them can become code
    assert all(line.isprintable() and line.startswith("#") for line in text.splitlines())
    tampered = text.replace('"bytes": 25', '"bytes": 24')  # c.py, the last file, read one byte short
    with pytest.raises(ValueError, match="c.py does not match its sha256"):
        submission.read_embedded(tampered)

    plugin = tmp_path / "plugin"  # a variant outside the repository, with a helper module below it
    (plugin / "helpers").mkdir(parents=True)
    (plugin / "my_variant.py").write_bytes(TRICKY)
    (plugin / "helpers" / "util.py").write_bytes(b"\xef\xbb\xbfVALUE = '\\\\'\n")
    settings = {"variant_file": "plugins/my_variant.py", "note": "'''\"\"\"\\"}
    model_files = [plugin / "my_variant.py", plugin / "helpers" / "util.py"]
    script = submission.bundle_script(submission.bundle_files(model_files), settings)
    assert script == submission.bundle_script(submission.bundle_files(model_files[::-1]), settings)
    compile(script, "train_gpt.py", "exec")
    unpacked = submission.read_embedded(script.decode("utf-8"))
    assert unpacked["plugins/my_variant.py"] == TRICKY
    assert unpacked["plugins/helpers/util.py"] == (plugin / "helpers" / "util.py").read_bytes()
    assert unpacked["harness/train.py"] == (REPO_ROOT / "harness" / "train.py").read_bytes()


def test_a_bundle_folder_is_reused_when_identical_and_never_when_changed(tmp_path):
    files = {"harness/x.py": b"A = 1\n", "variants/v.py": b"B = 2\n"}
    first = submission.unpack(files, tmp_path)
    assert first.parent == tmp_path and submission.unpack(files, tmp_path) == first
    (first / "variants" / "v.py").write_bytes(b"B = 3\n")
    other = submission.unpack(files, tmp_path)
    try:
        assert other != first and submission.holds_exactly(other, files)
        assert (first / "variants" / "v.py").read_bytes() == b"B = 3\n"  # what was there is left alone
    finally:
        shutil.rmtree(other)


def test_the_challenge_environment_variables_set_the_run(exported, tmp_path):
    _, _, record, _ = exported
    settings = submission.submission_settings(record)
    env = {"SEED": "7", "ITERATIONS": "5", "RUN_ID": "again-1", "MAX_WALLCLOCK_SECONDS": "12.5",
           "DATA_PATH": str(tmp_path), "RESULTS_DIR": str(tmp_path / "r")}
    spec = submission.spec_from_settings(REPO_ROOT, settings, env, tmp_path / "train_gpt.py")
    assert (spec.seed, spec.max_steps, spec.run_id, spec.data_dir) == (7, 5, "again-1", tmp_path)
    assert (spec.budget.name, spec.budget.train_wallclock_seconds) == ("tiny-clock12.5s", 12.5)
    assert "MAX_WALLCLOCK_SECONDS=12.5" in spec.note and spec.results_dir == tmp_path / "r"
    plain = submission.spec_from_settings(REPO_ROOT, settings, {"MAX_WALLCLOCK_SECONDS": "30"}, tmp_path)
    assert (plain.seed, plain.max_steps, plain.budget.name, plain.note) == (1337, 3, "tiny", None)
    for bad, named in (({"SEED": "-1"}, "SEED"), ({"ITERATIONS": "0"}, "ITERATIONS"), ({"RUN_ID": "../x"}, "RUN_ID"),
                       ({"MAX_WALLCLOCK_SECONDS": "nan"}, "MAX_WALLCLOCK_SECONDS")):
        with pytest.raises(UserError, match=named):
            submission.spec_from_settings(REPO_ROOT, settings, bad, tmp_path)


@pytest.mark.parametrize("case", ["unknown run", "failed run", "changed variant file", "non-empty folder"])
def test_export_refuses_in_one_line_and_writes_nothing(exported, tmp_path, case):
    _, results, record, out = exported
    run_id, target, where = record["run_id"], tmp_path / "new", results
    if case == "unknown run":
        run_id, expected = "no-such-run", "no run 'no-such-run'"
    elif case == "non-empty folder":
        target, expected = out, "is not empty"
    else:
        where = tmp_path / "results"
        shutil.copytree(results / run_id, where / run_id)
        changed = {"status": "failed"} if case == "failed run" else {"variant_sha256": "0" * 64}
        (where / run_id / "run.json").write_text(json.dumps({**record, **changed}))
        expected = "ended failed: nothing to submit" if case == "failed run" else "the variant file it trained"
    done = harness_main("export", run_id, "--results-dir", str(where), "--out", str(target))
    assert done.returncode == 2 and expected in done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert not target.exists() or target == out
