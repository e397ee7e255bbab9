"""`run --variant script:PATH`: a challenge submission's train_gpt.py run unchanged, its log read into a record that
sits on the same leaderboards as plugin runs. The log samples below are written here in the formats of the
baseline and of later records (step lines, artifact sizes, final round-trip, sliding-window and TTT lines)."""

import json
import math
import re
import sys
import time

import pytest

from conftest import REPO, harness_cli, harness_main, only_record, write_budget
from harness.errors import UserError
from harness.script_run import STOP_GRACE_SECONDS, Ended, judge, parse_env_flags, parse_log, run_process

FIXTURE = REPO / "tests/fixtures/challenge_script/train_gpt.py"

BASELINE_LOG = """\
logs/3f2a.txt
val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path=./data/tokenizers/fineweb_1024_bpe.model
model_params:1000
warmup_step:1/2
step:0/500 val_loss:6.9000 val_bpb:4.1000 train_time:0ms step_avg:0.02ms
step:1/500 train_loss:6.9100 train_time:51ms step_avg:51.00ms
step:400/500 train_loss:2.5000 train_time:20400ms step_avg:51.00ms
step:412/500 val_loss:2.4000 val_bpb:1.4200 train_time:21012ms step_avg:51.00ms
stopping_early: wallclock_cap train_time:21012ms step:412/500
Serialized model: 7000000 bytes
Code size: 40000 bytes
Total submission size: 7040000 bytes
Serialized model int8+zlib: 1600000 bytes (payload:1700000 raw_torch:1710000 payload_ratio:3.90x)
Total submission size int8+zlib: 1640000 bytes
final_int8_zlib_roundtrip val_loss:2.4100 val_bpb:1.4300 eval_time:900ms
final_int8_zlib_roundtrip_exact val_loss:2.41012345 val_bpb:1.42987654
"""
SLIDING_LOG = """\
step:0/9000 val_loss:6.9300 val_bpb:4.1000 train_time:0ms step_avg:0.01ms
step:3000/9000 train_loss:2.1000 train_time:250000ms step_avg:83.33ms
step:7100/9000 val_loss:1.9300 val_bpb:1.1400 train_time:600010ms step_avg:84.51ms
stopping_early: wallclock_cap train_time:600010ms step:7100/9000
DIAGNOSTIC post_ema val_loss:1.9200 val_bpb:1.1390 eval_time:2000ms
Serialized model: 100000000 bytes
Code size: 60000 bytes
Serialized model int6+zstd: 15400000 bytes
Total submission size int6+zstd: 15460000 bytes
Total submission size int8+zlib: 15460000 bytes
final_int6_roundtrip val_loss:1.9400 val_bpb:1.1490 eval_time:5000ms
final_int6_roundtrip_exact val_loss:1.94001111 val_bpb:1.14902222
final_int6_sliding_window val_loss:1.9000 val_bpb:1.1250 stride:64 eval_time:70000ms
final_int6_sliding_window_exact val_loss:1.90003333 val_bpb:1.12504444
final_int8_zlib_roundtrip_exact val_loss:1.90003333 val_bpb:1.12504444
"""
TTT_LOG = """\
1/20000 train_loss: 9.0000 train_time: 0.0m tok/s: 8000000
500/20000 train_loss: 2.6000 train_time: 0.8m tok/s: 8100000
4000/20000 val_loss: 2.9000 val_bpb: 1.1300
5000/20000 val_loss: 2.8100 val_bpb: 1.0900
stopping_early: wallclock_cap train_time: 588000ms step: 5000/20000
pre-quantization post-ema val_loss:2.81000000 val_bpb:1.08900000 eval_time:5500ms
Serialized model: 135000000 bytes
Code size: 16000 bytes
Serialized model quantized+brotli: 15900000 bytes
Total submission size quantized+brotli: 15916000 bytes
quantized val_loss:2.84000000 val_bpb:1.10100000 eval_time:7700ms
quantized_sliding_window val_loss:2.80000000 val_bpb:1.08400000 eval_time:83000ms
ttt_sliding:done val_loss=2.797000 val_bpb=1.083000 elapsed=290.0s
legal_ttt_exact val_loss:2.79700000 val_bpb:1.08300000 eval_time:290000ms
"""
# Each line opened by a timestamp, as a logging wrapper of some records writes them.
PHASED_TTT_LOG = """\
1776143300.100 4900/20000 val_loss: 2.3500 val_bpb: 1.0750
1776143301.101 stopping_early: wallclock_cap train_time: 599600ms step: 4900/20000
1776143302.102 diagnostic pre-quantization post-ema val_loss:2.32800000 val_bpb:1.06300000 eval_time:6700ms
1776143303.103 Serialized model: 135000000 bytes
1776143304.104 Code size (uncompressed): 150000 bytes
1776143305.105 Code size (compressed): 30000 bytes
1776143306.106 Serialized model quantized+pergroup: 15800000 bytes
1776143307.107 Total submission size quantized+pergroup: 15830000 bytes
1776143308.108 diagnostic quantized val_loss:2.34700000 val_bpb:1.07200000 eval_time:50000ms
1776143309.109 quantized_ttt_phased val_loss:2.31900000 val_bpb:1.05900000 eval_time:500000ms
1776143310.110 total_eval_time:500.0s
"""


@pytest.mark.parametrize("text, expected", [
    (BASELINE_LOG, dict(score_label="final_int8_zlib_roundtrip_exact", val_loss_post_quant=2.41012345,
                        val_bpb_post_quant=1.42987654, val_loss=2.4, val_bpb=1.42, steps=412, train_seconds=21.012,
                        ms_per_step=51.0, model_bytes=1_600_000, total_bytes=1_640_000)),
    (SLIDING_LOG, dict(score_label="final_int8_zlib_roundtrip_exact", val_loss_post_quant=1.90003333,
                       val_bpb_post_quant=1.12504444, val_loss=1.92, val_bpb=1.139, steps=7100, train_seconds=600.01,
                       ms_per_step=84.51, model_bytes=15_400_000, total_bytes=15_460_000)),
    (TTT_LOG, dict(score_label="legal_ttt_exact", val_loss_post_quant=2.797, val_bpb_post_quant=1.083,
                   val_loss=2.81, val_bpb=1.089, steps=5000, train_seconds=588.0, ms_per_step=117.6,
                   model_bytes=15_900_000, total_bytes=15_916_000)),
    (PHASED_TTT_LOG, dict(score_label="quantized_ttt_phased", val_loss_post_quant=2.319, val_bpb_post_quant=1.059,
                          val_loss=2.328, val_bpb=1.063, steps=4900, train_seconds=599.6, model_bytes=15_800_000,
                          total_bytes=15_830_000)),
], ids=["baseline", "int6-sliding-window", "legal-ttt", "phased-ttt"])
def test_the_last_final_line_is_the_score_and_the_compressed_artifact_its_size(text, expected):
    """The submission's score is the last final line (its `_exact` twin when printed), never a diagnostic,
    pre-quantization or step line; the artifact is the compressed form, never the raw checkpoint."""
    parsed = parse_log(text.splitlines())
    assert parsed.problem() is None
    for name, value in expected.items():
        got = getattr(parsed, name)
        assert got == (pytest.approx(value) if isinstance(value, float) else value), name


def test_steps_become_a_curve_with_validation_points():
    ttt = parse_log(TTT_LOG.splitlines()).curve
    assert [p["step"] for p in ttt] == [1, 500, 4000, 5000]
    assert ttt[1] == {"step": 500, "seconds": pytest.approx(48.0), "train_loss": 2.6}
    assert ttt[-1]["val_bpb"] == 1.09
    baseline = parse_log(BASELINE_LOG.splitlines()).curve  # step 0 (no training yet) is left out
    assert [p["step"] for p in baseline] == [1, 400, 412] and baseline[-1]["val_loss"] == 2.4


def test_an_exact_line_beats_its_rounded_twin_whichever_comes_last():
    lines = ["Total submission size int8+zlib: 10 bytes", "final_x_exact val_loss:2.12345678 val_bpb:1.23456789",
             "final_x val_loss:2.1235 val_bpb:1.2346 eval_time:3ms"]
    parsed = parse_log(lines)
    assert (parsed.score_label, parsed.val_bpb_post_quant) == ("final_x_exact", 1.23456789)


def test_an_unreadable_log_fails_the_run_saying_what_is_missing():
    no_score = parse_log(BASELINE_LOG.splitlines()[:-2])
    assert "no final score line" in no_score.problem() and no_score.steps == 412
    status, reason = judge(Ended(exit_code=0), no_score, 60.0, 1_640_000, 16_000_000)
    assert status == "failed" and reason.startswith("the script's log cannot be read: its output has no final score")
    no_size = parse_log([line for line in BASELINE_LOG.splitlines() if "bytes" not in line])
    assert "size is unknown" in no_size.problem()
    whole = parse_log(BASELINE_LOG.splitlines())
    assert judge(Ended(exit_code=0), whole, 60.0, 1_640_000, 16_000_000) == ("ok", None)
    assert judge(Ended(exit_code=0), whole, 60.0, 1_640_000, 1_000_000)[0] == "over_cap"
    assert judge(Ended(exit_code=-9), whole, 60.0, 1_640_000, 16_000_000)[1] == "the script was killed by SIGKILL"


def test_free_flags_become_the_variables_the_script_reads():
    source = ('int(os.environ.get("NUM_LAYERS", 9)); float(os.getenv("QK_GAIN_INIT", 1.5)); os.environ["TTT_ON"]; '
              'os.environ.get(\n    "DEVICE", "cuda")')
    # A name that is also an option of `run` (--device) is given in capitals, which no option matches.
    flags = parse_env_flags(["--num-layers", "11", "--qk-gain-init=5.0", "--ttt-on", "1", "--DEVICE", "cuda:1"],
                            source, "s.py")
    assert flags == {"NUM_LAYERS": "11", "QK_GAIN_INIT": "5.0", "TTT_ON": "1", "DEVICE": "cuda:1"}
    for words, message in ((["--num-layrs", "11"], "never reads NUM_LAYRS (--num-layrs); did you mean NUM_LAYERS"),
                           (["--iterations", "5"], "use --max-steps"), (["--train-seq-len", "2048"], "seq_len"),
                           (["--num-layers"], "needs a value"), (["11"], "unexpected argument"),
                           (["--num-layers", "1", "--num-layers=2"], "given twice")):
        with pytest.raises(UserError, match=re.escape(message)):
            parse_env_flags(words, source, "s.py")
    packed = "import lzma as L,base64 as B\nexec(L.decompress(B.b85decode('...')))"
    assert parse_env_flags(["--anything", "1"], packed, "s.py") == {"ANYTHING": "1"}  # names unseen: not checked


def test_a_script_past_its_limit_is_stopped_with_its_process_group(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text("import subprocess, sys, time\nprint('started', flush=True)\n"
                      "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\ntime.sleep(60)\n")
    t0 = time.perf_counter()
    ended = run_process([sys.executable, str(script)], tmp_path, {}, tmp_path / "log.txt", echo=False,
                        limit_seconds=1.0)
    # Its child held the output pipe too: only stopping the whole group ends the run before the grace period.
    assert time.perf_counter() - t0 < STOP_GRACE_SECONDS
    assert ended.timed_out and ended.exit_code is None and ended.lines == ["started"]
    assert (tmp_path / "log.txt").read_text() == "started\n"
    assert "still running after" in judge(ended, parse_log(ended.lines), 1.0, None, 10)[1]


@pytest.mark.parametrize("body, status, reason", [
    ("print('step:1/3 train_loss:6.9 train_time:5ms step_avg:5.00ms')\nraise SystemExit('CUDA is required')",
     "failed", "the script exited with code 1: CUDA is required"),
    ("import os, signal, time\nprint('step:1/3 train_loss:6.9 train_time:5ms step_avg:5.00ms', flush=True)\n"
     "os.kill(os.getppid(), signal.SIGTERM)\ntime.sleep(60)",  # a scheduler stopping the job
     "interrupted", "stopped by Ctrl-C or SIGTERM"),
], ids=["non-zero-exit", "sigterm"])
def test_a_script_that_does_not_finish_leaves_a_record_saying_why(tmp_path, body, status, reason):
    script = tmp_path / "train_gpt.py"
    script.write_text(body + "\n")
    results = tmp_path / "r"
    result = harness_main("run", "--variant", f"script:{script}", "--budget", str(write_budget(tmp_path / "b.toml")),
                          "--results-dir", str(results), "--quiet")
    assert result.returncode == 1, result.stderr
    record = only_record(results)
    assert record["status"] == status and record["error"].startswith(reason)
    assert record["steps"] == 1 and "val_bpb_post_quant" not in record
    if status == "failed":
        assert result.stderr.strip().count("\n") == 0 and reason in result.stderr
    assert not (results / record["run_id"] / "harness_shards").exists()  # the staged shards are gone


@pytest.mark.parametrize("variant, flags, message", [
    ("script:", [], "needs a path"),
    ("script:no/such/train_gpt.py", [], "does not exist"),
    ("script:tests/fixtures", [], "is a folder"),
    ("script:README.md", [], "not a .py file"),
    (f"script:{FIXTURE}", ["--preset", "fast"], "--preset does not apply to a script run"),
    (f"script:{FIXTURE}", ["--num-layrs", "2"], "did you mean NUM_LAYERS"),
    (f"script:{FIXTURE}", ["--seed=-1"], "--seed"),
], ids=["no-path", "missing", "folder", "not-python", "preset", "misspelt-variable", "bad-seed"])
def test_bad_script_input_is_one_line_and_exit_2(tmp_path, variant, flags, message):
    result = harness_main("run", "--variant", variant, "--budget", str(write_budget(tmp_path / "b.toml")),
                          "--results-dir", str(tmp_path / "r"), *flags)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "r").exists()


def test_the_fixture_submission_runs_end_to_end_onto_the_leaderboard(tmp_path):
    """The challenge-layout fixture through the real CLI: the record's figures are the ones its log printed, its
    code bytes are the script's, its flags reached it as variables, and it ranks on the budget's leaderboard."""
    from harness.data.datasets import resolve_dataset
    from harness.metric import load_validation
    from harness.report.tables import build_leaderboards, load_runs

    results = tmp_path / "r"
    result = harness_cli("run", "--variant", f"script:{FIXTURE}", "--budget", str(write_budget(tmp_path / "b.toml")),
                         "--max-steps", "3", "--num-layers", "2", env={"HARNESS_RESULTS_DIR": str(results)})
    assert result.returncode == 0, result.stdout + result.stderr
    record = only_record(results)
    run_dir = results / record["run_id"]
    log = (run_dir / "log.txt").read_text().splitlines()

    def printed(prefix: str) -> list[str]:
        return [line for line in log if line.startswith(prefix)][-1].removeprefix(prefix).split()

    final = printed("final_int8_zlib_roundtrip_exact ")
    assert record["status"] == "ok" and record["variant"] == "script:train_gpt.py"
    assert record["val_loss_post_quant"] == float(final[0].split(":")[1])
    assert record["val_bpb_post_quant"] == float(final[1].split(":")[1])
    assert record["val_bpb"] == float(printed("step:3/3 val_loss:")[1].split(":")[1])
    assert record["steps"] == 3 and record["curve"][-1]["step"] == 3
    assert printed("val_loader:")[-1] == "tokens:4096"  # the budget's validation cap, staged for the script
    assert record["artifact_total_bytes"] == int(printed("Total submission size int8+zlib:")[0])
    assert record["artifact_model_bytes"] == int(printed("Serialized model int8+zlib:")[0])
    assert record["artifact_code_bytes"] == FIXTURE.stat().st_size == int(printed("Code size:")[0])
    assert record["config"] == {"NUM_LAYERS": "2"} and "num_layers:2" in " ".join(log)
    assert record["overrides"] == [{"name": "max_steps", "budget": 20000, "effective": 3}]
    assert record["script_sha256"] and record["dataset_hash"] and record["calibration"]["after"]
    # On those 4,096 tokens it counted the bytes the harness counts.
    dataset = resolve_dataset("builtin")
    val = load_validation(dataset.val_files, 64, 4096, dataset.tokenizer.tables)
    assert record["tokens_per_byte"] == pytest.approx(val.target_tokens / val.target_bytes, rel=1e-6)
    assert (run_dir / "final_model.int8.ptz").is_file() and (run_dir / "logs" / f"{record['run_id']}.txt").is_file()
    assert not (run_dir / "harness_shards").exists()
    assert [json.loads(line)["step"] for line in (run_dir / "curve.jsonl").read_text().splitlines()] == [1, 2, 3]
    (board,) = build_leaderboards(load_runs(results))
    (row,) = board.rows
    assert row["label"] == "script:train_gpt.py NUM_LAYERS=2" and row["rank"] == 1 and math.isclose(
        row["bpb_mean"], record["val_bpb_post_quant"])
