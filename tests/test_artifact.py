import pickle
import zlib

import pytest
import torch

from harness import artifact
from harness.model import GPT, GPTConfig


def test_quantization_round_trip_is_close_and_keeps_control_tensors_exact():
    torch.manual_seed(0)
    state = {
        "blocks.0.attn.c_q.weight": torch.randn(300, 256),        # 2-D, large: per-row int8
        "big_vector": torch.randn(70_000),                          # 1-D, large: per-tensor int8
        "blocks.0.attn_scale": torch.rand(256) + 0.5,               # control: fp32, exact
        "blocks.0.resid_mix": torch.randn(2, 256),                  # control (2-D but small): fp32, exact
        "small.weight": torch.randn(64, 64),                        # small: fp16
        "step_counter": torch.tensor([7], dtype=torch.int64),       # non-float: passthrough
    }
    obj = artifact.quantize_state_dict(state)
    assert obj["quantized"]["blocks.0.attn.c_q.weight"].dtype == torch.int8
    assert obj["scales"]["blocks.0.attn.c_q.weight"].shape == (300,)
    assert obj["scales"]["big_vector"].ndim == 0
    assert obj["passthrough"]["blocks.0.attn_scale"].dtype == torch.float32
    assert obj["passthrough"]["small.weight"].dtype == torch.float16
    back = artifact.decompress(artifact.compress(state))
    assert set(back) == set(state)
    for name in ("blocks.0.attn_scale", "blocks.0.resid_mix", "step_counter"):
        assert torch.equal(back[name], state[name])
    w, wq = state["blocks.0.attn.c_q.weight"], back["blocks.0.attn.c_q.weight"]
    row_step = w.abs().amax(dim=1, keepdim=True) / 127
    # Half a quantization step from rounding, plus the fp16 rounding of the scale times |q| ≤ 127.
    assert ((w - wq).abs() <= row_step * (0.5 + 127 * 2**-11) + 1e-6).all()
    assert (state["small.weight"] - back["small.weight"]).abs().max() < 1e-2
    assert back["small.weight"].dtype == torch.float32


def test_artifact_is_deterministic_and_zlib_level_9():
    model = GPT(GPTConfig(num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1))
    blob = artifact.compress(model.state_dict())
    assert blob == artifact.compress(model.state_dict())
    raw = zlib.decompress(blob)
    assert zlib.compress(raw, level=9) == blob


def test_loading_never_unpickles_arbitrary_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    blob = zlib.compress(pickle.dumps({"quantized": Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError):
        artifact.decompress(blob)


def test_model_code_bytes_count_the_variant_file_and_the_model_sources():
    from harness import REPO_ROOT

    model = GPT(GPTConfig(num_layers=1, model_dim=32, num_heads=2, num_kv_heads=1))
    files = artifact.model_source_files(model, REPO_ROOT / "variants" / "baseline.py")
    assert sorted(f.name for f in files) == ["baseline.py", "model.py"]
    size = artifact.measure(b"x" * 10, files, "model")
    assert size.code_bytes == size.model_code_bytes == sum(len(f.read_bytes()) for f in files)
    assert size.total_bytes == 10 + size.code_bytes


def test_code_bytes_count_the_trainer_as_the_challenge_counts_its_script():
    """The challenge counts its whole train_gpt.py; the nearest equivalent here is the model's files plus the
    harness modules a run imports to train and score it (not the report, sweep or tuning code)."""
    from harness import REPO_ROOT
    from harness.registry import get_variant

    trainer = {p.relative_to(REPO_ROOT).as_posix() for p in artifact.trainer_source_files()}
    assert {"harness/train.py", "harness/metric.py", "harness/artifact.py", "harness/optim.py", "harness/model.py",
            "harness/data/loader.py", "harness/data/tokenizers.py"} <= trainer
    assert not any(n.startswith(("harness/report", "harness/sweep", "harness/tune", "harness/cli")) for n in trainer)
    variant, _ = get_variant("mla")
    model = variant.build(variant.resolve(None, None, {"num_layers": 1, "model_dim": 32, "num_heads": 2,
                                                      "num_kv_heads": 1}))
    model_files = artifact.model_source_files(model, variant.source_file)
    files = set(model_files) | set(artifact.trainer_source_files())
    size = artifact.measure(b"0" * 10, model_files)
    assert size.code_counted == "submission" and size.total_bytes == 10 + size.code_bytes
    assert size.code_bytes == size.submission_code_bytes == sum(p.stat().st_size for p in files)
    assert size.model_code_bytes == sum(p.stat().st_size for p in model_files) < size.code_bytes
    model_only = artifact.measure(b"0" * 10, model_files, "model")
    assert model_only.code_bytes == size.model_code_bytes and len(model_only.code_files) == len(model_files)
