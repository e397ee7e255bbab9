"""Every user mistake: exit code 2, one line on stderr naming the problem, no traceback, no run record."""

import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, harness_cli, harness_main, write_budget
from harness.data.shards import write_shard


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, f"exit {result.returncode}\nstdout:{result.stdout}\nstderr:{result.stderr}"
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


@pytest.fixture
def corrupt_data_dir(tmp_path):
    d = tmp_path / "corrupt"
    d.mkdir()
    write_shard(d / "c_val_000000.bin", np.arange(100))
    write_shard(d / "c_train_000000.bin", np.arange(100))
    raw = (d / "c_train_000000.bin").read_bytes()
    (d / "c_train_000000.bin").write_bytes(raw[:-10])
    return d


CASES = {
    "unknown variant": (["run", "--variant", "nosuch", "--budget", "smoke"], ["unknown variant 'nosuch'", "baseline"]),
    "unknown parameter": (["run", "--variant", "baseline", "--budget", "smoke", "--model-dimm", "64"],
                          ["unknown parameter --model-dimm", "--model-dim"]),
    "ill-typed parameter": (["run", "--variant", "baseline", "--budget", "smoke", "--num-layers", "four"],
                            ["--num-layers expects an integer", "'four'"]),
    "out-of-range parameter": (["run", "--variant", "baseline", "--budget", "smoke", "--num-layers", "0"],
                               ["--num-layers=0 is below its minimum"]),
    "inconsistent shape": (["run", "--variant", "baseline", "--budget", "smoke", "--num-heads", "3"],
                           ["must be divisible by --num-heads 3"]),
    "unknown preset": (["run", "--variant", "baseline:huge", "--budget", "smoke"], ["no preset 'huge'"]),
    "missing budget": (["run", "--variant", "baseline", "--budget", "nosuch"], ["unknown budget 'nosuch'", "smoke"]),
    "missing budget file": (["run", "--variant", "baseline", "--budget", "/nonexistent/b.toml"], ["does not exist"]),
    "cuda budget without cuda": (["run", "--variant", "baseline", "--budget", "10min"], ["no CUDA", "--device cpu"]),
    "missing variant file": (["run", "--variant", "/nonexistent/v.py", "--budget", "smoke"], ["does not exist"]),
    "unknown common flag value": (["run", "--variant", "baseline", "--budget", "smoke", "--device", "tpu"],
                                  ["invalid choice"]),
    "run id that is a path": (["run", "--variant", "baseline", "--budget", "smoke", "--run-id", "../x"],
                              ["--run-id '../x' must be"]),
    "unknown status filter": (["results", "--status", "okk"], ["--status 'okk' is not a run status", "over_cap"]),
    "variant flag of another family": (["run", "--variant", "baseline", "--budget", "smoke", "--rank", "8"],
                                        ["unknown parameter --rank for GPTConfig"]),
    "ill-typed variant flag": (["run", "--variant", "eigenweight", "--budget", "smoke", "--rank", "big"],
                               ["--rank expects an integer", "'big'"]),
    "out-of-range variant flag": (["show", "eigenweight", "--rank", "0"], ["--rank=0 is below its minimum"]),
    "bad choice of a variant flag": (["show", "depth_recurrence", "--per-pass", "twice"],
                                     ["--per-pass=twice is not allowed", "scale"]),
    "layer index beyond the model": (["show", "depth_recurrence", "--repeat-layers", "3,12"],
                                     ["--repeat-layers 12 is not a layer of a 9-layer model"]),
    "show unknown preset": (["show", "eigenweight:r5"], ["no preset 'r5'", "r128"]),
    "two different presets": (["show", "eigenweight:r64", "--preset", "r128"], ["two presets given"]),
    "fineweb offline": (["data", "fineweb", "--train-shards", "1"], ["cannot reach", "huggingface.co"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_line_and_exit_2(name, tmp_path):
    args, fragments = CASES[name]
    if name == "fineweb offline":
        args = [*args, "--data-root", str(tmp_path)]
    result = harness_main(*args, env={"HARNESS_RESULTS_DIR": str(tmp_path / "results")})
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_the_command_itself_reports_a_mistake_the_same_way(tmp_path):
    """The cases above call the CLI in this process; once through `python -m harness` end to end."""
    result = harness_cli("run", "--variant", "nosuch", "--budget", "smoke",
                         env={"HARNESS_RESULTS_DIR": str(tmp_path / "results")})
    assert_one_line_error(result, "unknown variant 'nosuch'")
    assert not (tmp_path / "results").exists()


def test_malformed_budget_files(tmp_path):
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("train_wallclock_seconds = = 3\n")
    assert_one_line_error(harness_main("run", "--variant", "baseline", "--budget", str(bad_toml)), "not valid TOML")
    missing = tmp_path / "missing.toml"
    missing.write_text('description = "x"\n')
    assert_one_line_error(harness_main("run", "--variant", "baseline", "--budget", str(missing)), "is missing")
    unknown = write_budget(tmp_path / "unknown.toml", wallclock=5)
    assert_one_line_error(harness_main("run", "--variant", "baseline", "--budget", str(unknown)),
                          "unknown key 'wallclock'")
    negative = write_budget(tmp_path / "neg.toml", seq_len=-4)
    assert_one_line_error(harness_main("run", "--variant", "baseline", "--budget", str(negative)), "seq_len")


def test_missing_dataset_names_the_fetch_command(tmp_path):
    budget = write_budget(tmp_path / "fw.toml", dataset="fineweb")
    result = harness_main("run", "--variant", "baseline", "--budget", str(budget), "--data-root", str(tmp_path))
    assert_one_line_error(result, "python -m harness data fineweb --train-shards")


def test_corrupt_shard_is_named(tmp_path, corrupt_data_dir):
    budget = write_budget(tmp_path / "b.toml")
    result = harness_main("run", "--variant", "baseline", "--budget", str(budget), "--data-dir", str(corrupt_data_dir))
    assert_one_line_error(result, "c_train_000000.bin", "truncated")


def test_tokenizer_vocab_mismatch(tmp_path):
    budget = write_budget(tmp_path / "b.toml")
    result = harness_main("run", "--variant", "baseline", "--budget", str(budget), "--vocab-size", "512",
                         env={"HARNESS_RESULTS_DIR": str(tmp_path / "r")})
    assert_one_line_error(result, "tokenizer/vocab mismatch", "1024", "--vocab-size 1024")


def test_batch_not_divisible_by_seq_len_times_ranks(tmp_path):
    budget = write_budget(tmp_path / "b.toml", tokens_per_step=1000, micro_batch_tokens=64)
    result = harness_main("run", "--variant", "baseline", "--budget", str(budget),
                         env={"HARNESS_RESULTS_DIR": str(tmp_path / "r")})
    assert_one_line_error(result, "tokens_per_step (1000) must be a multiple of seq_len (64)")


def test_output_into_a_closed_pipe_ends_quietly():
    """`list | head -n 1` closes the pipe before the listing is written; the command stops without a traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "harness", "list"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the child has imported anything, so every write of its meets a closed pipe
    stderr = proc.stderr.read()
    assert proc.wait(120) == 1 and stderr == "", stderr
