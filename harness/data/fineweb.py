"""FineWeb in the challenge's export: fetched from the Hugging Face dataset repo with huggingface_hub.

The published export (`willdepueoai/parameter-golf`, folder `datasets/`) is described by its manifest.json;
shards land in data/datasets/fineweb10B_<variant>/ and the tokenizer in data/tokenizers/, the challenge's
own layout, so a directory prepared by the challenge's script works here unchanged. The sp4096 and sp8192
exports the records use were published in another repo of the same layout (PUBLISHED_REPOS); its manifest is
kept beside the default one rather than over it, so neither goes stale.

Every export is made from one document list (docs_selected.jsonl), its first `num_val_docs` documents being
validation; the manifest gives that list's sha256. Their pair is the validation text's identity (`text_hash`),
the same for every tokenizer of those documents.
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
# Where the records fetched their larger vocabularies (records/track_10min_16mb/2026-04-01_Vocab4096_MLPMult4_WD085,
# 2026-04-05_SP8192_GPTQ-Embeddings_SDClip_Loop45x2): the same layout, another repo.
PUBLISHED_REPOS = {"sp4096": "kevclark/parameter-golf", "sp8192": "kevclark/parameter-golf"}


def repo_for(variant: str) -> str:
    return PUBLISHED_REPOS.get(variant, REPO_ID)


def manifest_path(data_root: Path, repo_id: str) -> Path:
    """data/manifest.json for the challenge's repo (its own layout); data/manifest.<owner>--<name>.json for others."""
    return data_root / ("manifest.json" if repo_id == REPO_ID else f"manifest.{repo_id.replace('/', '--')}.json")


def _lists(manifest: dict, name: str) -> bool:
    datasets = manifest.get("datasets")
    return isinstance(datasets, list) and any(isinstance(d, dict) and d.get("name") == name for d in datasets)


def text_hash_from_manifest(manifest: dict, name: str) -> str | None:
    """The validation text's identity for dataset `name` (fineweb10B_<variant>): its document list's sha256 and
    how many of them are validation; None when the manifest lacks the dataset or either figure."""
    docs_meta = manifest.get("docs_meta")
    docs_sha256 = docs_meta.get("docs_sha256") if isinstance(docs_meta, dict) else None
    num_val_docs = manifest.get("num_val_docs")
    if not (_lists(manifest, name) and isinstance(docs_sha256, str) and isinstance(num_val_docs, int)):
        return None
    return hashlib.sha256(f"fineweb docs {docs_sha256} validation {num_val_docs}".encode()).hexdigest()


def text_hash_on_record(data_root: Path, name: str) -> str | None:
    """text_hash for a dataset folder without one in its meta.json (prepared by the challenge's own script),
    from the challenge's manifest beside it when that lists it; unreadable or absent: None (unknown)."""
    try:
        manifest = json.loads((data_root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return text_hash_from_manifest(manifest, name) if isinstance(manifest, dict) else None


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


def _download(remote: str, destination: Path, repo_id: str) -> None:
    from huggingface_hub import hf_hub_download

    if destination.is_file():
        return
    remote_path = Path(remote)
    try:
        cached = Path(hf_hub_download(repo_id=repo_id, repo_type="dataset", filename=remote_path.name,
                                      subfolder=remote_path.parent.as_posix()))
    except Exception as exc:  # huggingface_hub raises many types for "no network"; all mean one thing here
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"could not download {remote} from {repo_id} ({type(exc).__name__}: {reason[:160]}); "
                        f"check the network connection, or copy the files into {destination.parent}") from None
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(destination.name + f".tmp{os.getpid()}")
    try:
        os.link(cached.resolve(), tmp)
    except OSError:
        shutil.copyfile(cached.resolve(), tmp)
    os.replace(tmp, destination)


def _manifest(data_root: Path, repo_id: str, name: str, fix: str) -> dict:
    """The repo's manifest, downloaded again when the copy kept here does not list `name` (it may predate it)."""
    path = manifest_path(data_root, repo_id)
    kept = path.is_file()
    _download(f"{REMOTE_PREFIX}/manifest.json", path, repo_id)
    manifest = read_json(path, "FineWeb manifest", f"delete it and run {fix} again")
    if kept and not _lists(manifest, name):
        path.unlink()
        _download(f"{REMOTE_PREFIX}/manifest.json", path, repo_id)
        manifest = read_json(path, "FineWeb manifest", f"delete it and run {fix} again")
    return manifest


def fetch_fineweb(data_root: Path, train_shards: int, variant: str = "sp1024", log=print,
                  repo_id: str | None = None) -> Path:
    """Download the validation shards, `train_shards` training shards and the tokenizer of `variant` from
    `repo_id` (default: where it was published); return the dataset dir."""
    if train_shards < 0:
        raise UserError(f"--train-shards must be 0 or more, got {train_shards}")
    name = dataset_dirname(variant)
    repo_id = repo_id or repo_for(variant)
    check_reachable()
    manifest = _manifest(data_root, repo_id, name, fetch_command(train_shards, variant))
    entry = next((d for d in manifest.get("datasets", []) if d.get("name") == name), None)
    if entry is None:
        raise UserError(f"{name} is not in the manifest of {repo_id}; available: "
                        f"{', '.join(d.get('name', '?') for d in manifest.get('datasets', []))} (another repo: "
                        f"--hf-repo OWNER/NAME)")
    stats = entry.get("stats") or {}
    max_train, n_val = int(stats.get("files_train", 0)), int(stats.get("files_val", 0))
    if train_shards > max_train:
        raise UserError(f"{name} has {max_train} training shards; asked for {train_shards}")
    out = data_root / "datasets" / name
    files = [f"fineweb_val_{i:06d}.bin" for i in range(n_val)] + [f"fineweb_train_{i:06d}.bin"
                                                                  for i in range(train_shards)]
    for i, fname in enumerate(files, 1):
        log(f"fineweb: [{i}/{len(files)}] {fname}")
        _download(f"{REMOTE_PREFIX}/datasets/{name}/{fname}", out / fname, repo_id)
    tok = next((t for t in manifest.get("tokenizers", []) if t.get("name") == entry.get("tokenizer_name")), None)
    if tok is None:
        raise UserError(f"the manifest names no tokenizer for {name}")
    for key in ("model_path", "vocab_path", "path"):
        if rel := tok.get(key):
            _download(f"{REMOTE_PREFIX}/{rel}", data_root / rel, repo_id)
    model = tok.get("model_path") or tok.get("path")
    if model and str(model).endswith(".model"):  # the shards' own tokenizer, so a foreign one can be refused
        meta = {"name": name, "repo": repo_id, "source": REMOTE_PREFIX, "tokenizer_path": model,
                "tokenizer_sha256": hashlib.sha256((data_root / model).read_bytes()).hexdigest(),
                "vocab_size": entry.get("vocab_size"), "text_hash": text_hash_from_manifest(manifest, name)}
        (out / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    log(f"fineweb: {name} ready in {out}")
    return out
