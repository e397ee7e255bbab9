"""The `synthetic` dataset: bytes from a seeded random Markov source whose entropy rate is known exactly.

No model can beat the source's entropy rate in expectation, so a trained model's val_bpb must land just above
it: an end-to-end check of the loss, the byte accounting and the data path. Tokens are bytes (id = byte + 4).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from harness.data.shards import write_shard
from harness.data.tokenizers import BYTE_OFFSET

SETTINGS = {"order": 2, "alphabet": 12, "concentration": 0.25, "seed": 20240520,
            "train_tokens": 1_500_000, "val_tokens": 65_536, "format": 1}


def transition_matrix(order: int, alphabet: int, concentration: float, seed: int) -> np.ndarray:
    """P[state, next_symbol] for states = the previous `order` symbols (base-`alphabet` number)."""
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(alphabet, concentration), size=alphabet ** order)


def entropy_rate_bits(P: np.ndarray, alphabet: int) -> float:
    """Exact entropy rate: sum over states of stationary probability × entropy of the next symbol."""
    n_states = P.shape[0]
    # State s = (..., a) moves to state (s * alphabet + b) mod n_states with probability P[s, b].
    T = np.zeros((n_states, n_states))
    for s in range(n_states):
        T[s, (s * alphabet + np.arange(alphabet)) % n_states] += P[s]
    w, v = np.linalg.eig(T.T)
    pi = np.real(v[:, np.argmin(np.abs(w - 1.0))])
    pi = pi / pi.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(np.where(P > 0, P * np.log2(P), 0.0), axis=1)
    return float(pi @ h)


def sample(P: np.ndarray, alphabet: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cum = np.cumsum(P, axis=1)
    u = rng.random(n)
    out = np.empty(n, dtype=np.int64)
    n_states = P.shape[0]
    state = 0
    for i in range(n):
        sym = min(int(np.searchsorted(cum[state], u[i], side="right")), alphabet - 1)
        out[i] = sym
        state = (state * alphabet + sym) % n_states
    return out


def build_synthetic(data_root: Path, log=print) -> Path:
    key = hashlib.sha256(json.dumps(SETTINGS, sort_keys=True).encode()).hexdigest()
    out = data_root / "datasets" / f"synthetic_{key[:12]}"
    if (out / "meta.json").is_file():
        return out
    t0 = time.perf_counter()
    log(f"synthetic corpus: first use, sampling {SETTINGS['train_tokens'] + SETTINGS['val_tokens']:,} tokens from "
        f"its Markov source (once only) ...")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    s = SETTINGS
    P = transition_matrix(s["order"], s["alphabet"], s["concentration"], s["seed"])
    stream = sample(P, s["alphabet"], s["val_tokens"] + s["train_tokens"], s["seed"] + 1)
    symbols = stream + ord("a") + BYTE_OFFSET  # printable bytes 'a', 'b', ... as byte tokens
    write_shard(tmp / "synthetic_val_000000.bin", symbols[: s["val_tokens"]])
    write_shard(tmp / "synthetic_train_000000.bin", symbols[s["val_tokens"]:])
    meta = {"name": "synthetic", "content_hash": key, "settings": SETTINGS,
            "entropy_bits_per_byte": entropy_rate_bits(P, s["alphabet"]), "tokenizer": "byte260"}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    try:
        os.replace(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"synthetic corpus: built in {out} in {time.perf_counter() - t0:.1f}s")
    return out
