"""FineWeb in the challenge's export: fetched from the Hugging Face dataset repo with huggingface_hub.

The published export (`willdepueoai/parameter-golf`, folder `datasets/`) is described by its manifest.json;
shards land in data/datasets/fineweb10B_<variant>/ and the tokenizer in data/tokenizers/, the challenge's
own layout, so a directory prepared by the challenge's script works here unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

from harness.checks import read_json
from harness.errors import UserError

REPO_ID = "willdepueoai/parameter-golf"
REMOTE_PREFIX = "datasets"


def dataset_dirname(variant: str) -> str:
    if variant == "byte260" or (variant.startswith("sp") and variant[2:].isdigit()):
        return f"fineweb10B_{variant}"
    raise UserError(f"unknown FineWeb tokenization {variant!r}; use sp1024 (the baseline's), sp<N> or byte260")


def fetch_command(train_shards: int = 80, variant: str = "sp1024") -> str:
    return f"python -m harness data fineweb --train-shards {train_shards} --variant {variant}"


def check_reachable(timeout_seconds: float = 5.0) -> None:
    """Fail at once, in one line, when the Hub cannot be reached (huggingface_hub would retry for ~25 s)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    port = urlparse(endpoint).port or 443
    try:
        socket.create_connection((host, port), timeout=timeout_seconds).close()
    except OSError as exc:
        raise UserError(f"cannot reach {host} to download FineWeb ({exc.strerror or exc}); connect to the network, "
                        f"or copy an existing data/ folder here and pass --data-root") from None


def _download(remote: str, destination: Path) -> None:
    from huggingface_hub import hf_hub_download

    if destination.is_file():
        return
    remote_path = Path(remote)
    try:
        cached = Path(hf_hub_download(repo_id=REPO_ID, repo_type="dataset", filename=remote_path.name,
                                      subfolder=remote_path.parent.as_posix()))
    except Exception as exc:  # huggingface_hub raises many types for "no network"; all mean one thing here
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"could not download {remote} from Hugging Face ({type(exc).__name__}: {reason[:160]}); "
                        f"check the network connection, or copy the files into {destination.parent}") from None
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(destination.name + f".tmp{os.getpid()}")
    try:
        os.link(cached.resolve(), tmp)
    except OSError:
        shutil.copyfile(cached.resolve(), tmp)
    os.replace(tmp, destination)


def fetch_fineweb(data_root: Path, train_shards: int, variant: str = "sp1024", log=print) -> Path:
    """Download the validation shards, `train_shards` training shards and the tokenizer; return the dataset dir."""
    if train_shards < 0:
        raise UserError(f"--train-shards must be 0 or more, got {train_shards}")
    name = dataset_dirname(variant)
    check_reachable()
    manifest_path = data_root / "manifest.json"
    _download(f"{REMOTE_PREFIX}/manifest.json", manifest_path)
    manifest = read_json(manifest_path, "FineWeb manifest", f"delete it and run {fetch_command(train_shards, variant)} "
                                                           f"again")
    entry = next((d for d in manifest.get("datasets", []) if d.get("name") == name), None)
    if entry is None:
        raise UserError(f"{name} is not in the published manifest; available: "
                        f"{', '.join(d.get('name', '?') for d in manifest.get('datasets', []))}")
    stats = entry.get("stats") or {}
    max_train, n_val = int(stats.get("files_train", 0)), int(stats.get("files_val", 0))
    if train_shards > max_train:
        raise UserError(f"{name} has {max_train} training shards; asked for {train_shards}")
    out = data_root / "datasets" / name
    files = [f"fineweb_val_{i:06d}.bin" for i in range(n_val)] + [f"fineweb_train_{i:06d}.bin"
                                                                  for i in range(train_shards)]
    for i, fname in enumerate(files, 1):
        log(f"fineweb: [{i}/{len(files)}] {fname}")
        _download(f"{REMOTE_PREFIX}/datasets/{name}/{fname}", out / fname)
    tok = next((t for t in manifest.get("tokenizers", []) if t.get("name") == entry.get("tokenizer_name")), None)
    if tok is None:
        raise UserError(f"the manifest names no tokenizer for {name}")
    for key in ("model_path", "vocab_path", "path"):
        if rel := tok.get(key):
            _download(f"{REMOTE_PREFIX}/{rel}", data_root / rel)
    model = tok.get("model_path") or tok.get("path")
    if model and str(model).endswith(".model"):  # the shards' own tokenizer, so a foreign one can be refused
        meta = {"name": name, "source": REMOTE_PREFIX, "tokenizer_path": model,
                "tokenizer_sha256": hashlib.sha256((data_root / model).read_bytes()).hexdigest()}
        (out / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    log(f"fineweb: {name} ready in {out}")
    return out
