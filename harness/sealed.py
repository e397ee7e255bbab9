"""The round trip of record: the artifact rebuilt, compared and scored in a fresh process the plugin cannot reach.

A plugin's code runs in the training process and could change it, so the score of record and the byte count are
not taken there. round_trip() lays out a folder outside the repository holding the artifact, a copy of the
model's code files (the bytes counted) and a copy of the harness's Python files, and starts a new interpreter in
it: isolated (no site customisation, no user site, no PYTHONPATH, no working-directory imports), with only that
folder, the standard library and the installed packages on its path, so it imports nothing else of the
repository or of the plugin's folder. The child, main() below:
  1. checks its harness copy against the hashes taken when the training process first imported the harness,
     before any plugin could touch it (harness/integrity.py);
  2. reads the artifact, the probe tokens and the validation split into memory, then seals itself: no file is
     read from then on except Python modules in its folder and the interpreter's own files (harness/guard.py);
  3. imports the variant file and rebuilds the model from the artifact alone, under a seed unrelated to the run's;
  4. compares its logits on the probe tokens with the trained model's (computed in the training process after
     loading the same artifact): a model that needs anything the artifact does not hold gives other logits;
  5. scores the validation split (when given), counts the artifact's bytes and its code copies' bytes;
  6. checks that nothing of the harness changed in its memory, and writes its result as one JSON line tagged
     with a nonce only the two processes know.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness import integrity

RESULT_MARK = "golf-sealed-result"
PROBE_TOLERANCE = 1e-4  # relative to the largest logit: the same kernels on the same inputs in two processes
BOOT = ("import json, sys; sys.path[:0] = [sys.argv[1]]; sys.path += json.loads(sys.argv[2]); "
        "from harness.sealed import main; sys.exit(main(sys.argv[1]))")


@dataclass(frozen=True)
class Validation:
    """Where the validation split is and how the run scores it (the child reads it itself)."""
    files: tuple[str, ...]
    seq_len: int
    cap_tokens: int
    tables: object  # harness.data.tokenizers.ByteTables
    batch_tokens: int
    scheme: dict | None = None  # the eval scheme (harness.train.eval_scheme); None: standard


class SealedFailure(RuntimeError):
    """The sealed round trip could not give a result; the message is one line for a person."""


def sha256_files(files) -> str:
    """One hash over the files' names and contents, in a fixed order."""
    h = hashlib.sha256()
    for path in sorted(files, key=lambda p: Path(p).name + str(p)):
        h.update(Path(path).name.encode() + b"\0" + Path(path).read_bytes() + b"\0")
    return h.hexdigest()


def _package_paths() -> list[str]:
    """The parent's import path minus everything that is not the interpreter's or an installed package's (the
    repository, the plugin's folder, the working directory, a test folder)."""
    from harness.guard import _python_roots, _under

    roots = [r for r in _python_roots() if not r.startswith(("/proc", "/sys", "/dev"))]
    keep = []
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        if real and os.path.isdir(real) and _under(real, roots) and real not in keep:  # the bundle comes first
            keep.append(real)
    return keep


def _lay_out(bundle: Path, model_files, variant_file: Path) -> tuple[list[str], str]:
    """Copy the harness's Python files and the model's files into `bundle`; returns the model files' paths
    inside it and the variant file's."""
    for path in integrity.HARNESS_DIR.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        dest = bundle / "harness" / path.relative_to(integrity.HARNESS_DIR)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    files = sorted({Path(p).resolve() for p in model_files} | {Path(variant_file).resolve()})
    outside = [p for p in files if not p.is_relative_to(integrity.HARNESS_DIR)]
    common = Path(os.path.commonpath([str(p.parent) for p in outside]))
    inside = []
    for path in files:
        if path.is_relative_to(integrity.HARNESS_DIR):
            rel = Path("harness") / path.relative_to(integrity.HARNESS_DIR)
        else:
            rel = Path("model") / path.relative_to(common)
            (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, bundle / rel)
        inside.append(rel.as_posix())
    return inside, (Path("model") / Path(variant_file).resolve().relative_to(common)).as_posix()


def round_trip(variant, config, blob: bytes, model_files, *, counted: str, device: torch.device, precision: str,
               script_bytes: int | None = None,
               probe_tokens: torch.Tensor, probe_logits: torch.Tensor, validation: Validation | None = None,
               timeout: float = 3600.0) -> dict:
    """Rebuild, compare and (with `validation`) score the artifact in a sealed process; its result as a dict:
    probe_diff, probe_scale, model_bytes, code_bytes, model_code_bytes, submission_code_bytes, code_sha256,
    variant_sha256, seconds, and val_loss, val_bpb, eval_seconds when scored. Raises SealedFailure."""
    from harness.config import as_dict

    t0 = time.perf_counter()
    expected = variant.source_sha256
    current = hashlib.sha256(Path(variant.source_file).read_bytes()).hexdigest()
    if expected and current != expected:
        raise SealedFailure(f"the variant file {variant.source_file} changed while the run used it: the code that "
                            f"trained is not the code that would be counted")
    with tempfile.TemporaryDirectory(prefix="golf-sealed-") as tmp:
        bundle = Path(tmp)
        inside, variant_rel = _lay_out(bundle, model_files, variant.source_file)
        (bundle / "model.int8.ptz").write_bytes(blob)
        torch.save({"tokens": probe_tokens.cpu(), "logits": probe_logits.float().cpu()}, bundle / "probe.pt")
        spec = {"variant": variant.name, "variant_file": variant_rel, "variant_sha256": current,
                "config": as_dict(config), "model_files": inside, "counted": counted, "script_bytes": script_bytes,
                "device": str(device),
                "precision": precision, "threads": torch.get_num_threads(),
                "harness_hashes": integrity.FILE_HASHES, "validation": None}
        if validation is not None:
            np.savez(bundle / "tables.npz", base_bytes=validation.tables.base_bytes,
                     has_leading_space=validation.tables.has_leading_space,
                     is_boundary=validation.tables.is_boundary)
            spec["validation"] = {"files": [str(f) for f in validation.files], "seq_len": validation.seq_len,
                                  "cap_tokens": validation.cap_tokens, "batch_tokens": validation.batch_tokens,
                                  "scheme": validation.scheme or {"name": "standard"}}
        (bundle / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        nonce = secrets.token_hex(16)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        try:
            done = subprocess.run([sys.executable, "-I", "-S", "-c", BOOT, str(bundle), json.dumps(_package_paths())],
                                  input=nonce + "\n", capture_output=True, text=True, cwd=bundle, env=env,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SealedFailure(f"the sealed round trip took longer than {timeout:.0f}s") from None
    results = [line for line in done.stdout.splitlines() if line.startswith(f"{RESULT_MARK} {nonce} ")]
    if len(results) != 1:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SealedFailure(f"the sealed round trip ended without a result (exit code {done.returncode}): {last}")
    result = json.loads(results[0].split(" ", 2)[2])
    if "error" in result:
        raise SealedFailure(f"the sealed round trip failed: {result['error']}")
    result["seconds"] = time.perf_counter() - t0
    result["variant_sha256"] = current
    return result


# ---------------------------------------------------------------------------------------------- the child


def _error_line(exc: BaseException) -> str:
    from harness.guard import refused_path

    path = refused_path(exc)
    if path:
        return f"the model read {path.split(' (')[0]} while being rebuilt from the artifact; a model must come from " \
               f"its artifact, config and seed alone"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def main(bundle: str) -> int:
    out = os.dup(1)  # the result goes here, whatever the plugin does to sys.stdout
    nonce = sys.stdin.readline().strip()
    try:
        result, code = _child(Path(bundle)), 0
    except BaseException as exc:  # the plugin's or ours: one line for the training process to record
        result, code = {"error": _error_line(exc)}, 1
    os.write(out, f"\n{RESULT_MARK} {nonce} {json.dumps(result)}\n".encode())
    return code


def _child(bundle: Path) -> dict:
    from harness import artifact, guard, precision, registry
    from harness.config import replace
    from harness.data.tokenizers import ByteTables
    from harness.evaluation import EvalScheme, evaluate_scheme
    from harness.metric import ScoredModel, evaluate, load_validation, split_output

    spec = json.loads((bundle / "spec.json").read_text(encoding="utf-8"))
    if not integrity.HARNESS_DIR.is_relative_to(bundle.resolve()):
        raise RuntimeError(f"imported the harness from {integrity.HARNESS_DIR}, not from the sealed copy")
    changed = sorted(k for k in set(spec["harness_hashes"]) | set(integrity.FILE_HASHES)
                     if spec["harness_hashes"].get(k) != integrity.FILE_HASHES.get(k))
    if changed:
        raise RuntimeError(f"harness files changed on disk since the run started: {', '.join(changed[:5])}")
    blob = (bundle / "model.int8.ptz").read_bytes()
    probe = torch.load(bundle / "probe.pt", weights_only=True)
    val = None
    if spec["validation"]:
        v = spec["validation"]
        tables = ByteTables(**dict(np.load(bundle / "tables.npz")))
        val = load_validation(v["files"], v["seq_len"], v["cap_tokens"], tables)
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    autocast_dtype = precision.compute_dtype(device.type, spec["precision"])
    if device.type == "cuda":  # load CUDA, cuBLAS and the attention kernels before the seal
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        q = torch.randn(1, 2, 8, 64, device=device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True) @ q.transpose(-1, -2)
        torch.cuda.synchronize()
    guard.seal(bundle)
    integrity.freeze()

    variant, _ = registry.get_variant(str(bundle / spec["variant_file"]))
    if variant.name != spec["variant"]:
        raise RuntimeError(f"the variant file registers {variant.name!r}, the run trained {spec['variant']!r}")
    if variant.source_sha256 != spec["variant_sha256"]:
        raise RuntimeError("the variant file's copy differs from the file the run imported")
    config = replace(variant.config_cls(), spec["config"], "the run's config")
    model = artifact.restore(variant.construct, config, blob).to(device)
    precision.apply(model, spec["precision"])
    model.eval()
    with torch.no_grad():
        logits = split_output(model(probe["tokens"].to(device)))[0].float().cpu()
    expected = probe["logits"]
    diff = float((logits - expected).abs().max()) if logits.shape == expected.shape else float("inf")
    result = {"probe_diff": diff if np.isfinite(diff) else None,
              "probe_scale": float(expected.abs().max()) if expected.numel() else 0.0}
    if val is not None:
        scheme = EvalScheme(**spec["validation"]["scheme"])
        batch_tokens = spec["validation"]["batch_tokens"]
        scored = ScoredModel(model).to(device)
        if scheme.name != "standard":  # the plain windows' score too, before test-time training changes the model
            result["val_loss_post_quant_standard"], result["val_bpb_post_quant_standard"] = evaluate(
                scored, val, batch_tokens, 0, 1, device, autocast_dtype)
        t_eval = time.perf_counter()
        result["val_loss"], result["val_bpb"], result["eval_scheme"] = evaluate_scheme(
            scored, val, scheme, batch_tokens, 0, 1, device, autocast_dtype)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        result["eval_seconds"] = time.perf_counter() - t_eval
    code_files = [bundle / f for f in spec["model_files"]]
    # the self-contained script's size (harness/submission.py) comes from the training process, which names the
    # files by their places in the repository; the copies here are what it embeds
    script = (spec["script_bytes"], tuple(code_files)) if spec.get("script_bytes") is not None else None
    size = artifact.measure(blob, code_files, spec["counted"], script)
    result.update(model_bytes=size.model_bytes, code_bytes=size.code_bytes, model_code_bytes=size.model_code_bytes,
                  submission_code_bytes=size.submission_code_bytes, code_sha256=sha256_files(code_files))
    changed = integrity.verify()
    if changed:
        raise RuntimeError(f"the plugin changed the harness in memory: {'; '.join(changed[:3])}")
    return result


def probe_logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The model's eval-mode logits on `tokens`, in fp32 without autocast, as the sealed process computes them."""
    from harness.metric import split_output

    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = split_output(model(tokens))[0].float()
    model.train(was_training)
    return logits


def probe_mismatch(result: dict) -> str | None:
    """The problem, if the sealed rebuild's logits differ from the trained model's."""
    diff, scale = result["probe_diff"], max(1.0, result["probe_scale"])
    if diff is not None and diff <= PROBE_TOLERANCE * scale:
        return None
    shown = "are not finite or have another shape" if diff is None else f"differ by {diff:.3g}"
    return (f"the model rebuilt from the artifact in a sealed process gives other logits than the trained model "
            f"({shown}, largest logit {scale:.3g}): the model uses something the artifact does not hold")
