"""Dataset names and what they ask for, without loading any data: the CLI checks a name when it parses it.

`builtin` is the embedded corpus at sp1024 (the challenge baseline's vocabulary) and `builtin_sp<N>` the same
documents at N pieces, sp1024 being `builtin` itself; `fineweb_<variant>` is a FineWeb export; `<name>_bytes`
is the byte form of a token dataset.
"""

from __future__ import annotations

import argparse

from harness.errors import UserError

DEFAULT_VOCAB = 1024
BUILTIN_PREFIX = "builtin_sp"
DATASET_NAMES = ("builtin (sp1024), builtin_sp<N>, synthetic, fineweb (sp1024), fineweb_<sp N|byte260>, or the byte "
                 "form <name>_bytes of one of them")


def builtin_name(vocab_size: int) -> str:
    """The builtin corpus's name at a size: `builtin` for sp1024, so runs on it keep the name they always had."""
    return "builtin" if vocab_size == DEFAULT_VOCAB else f"{BUILTIN_PREFIX}{vocab_size}"


def builtin_vocab(name: str) -> int | None:
    """The vocabulary size a `builtin` / `builtin_sp<N>` name asks for; None for any other name."""
    if name == "builtin":
        return DEFAULT_VOCAB
    if not name.startswith(BUILTIN_PREFIX):
        return None
    digits = name.removeprefix(BUILTIN_PREFIX)
    if not (digits.isascii() and digits.isdigit()) or digits.startswith("0"):
        raise UserError(f"unknown dataset {name!r}: builtin_sp<N> takes a positive whole number of tokenizer "
                        f"pieces, e.g. builtin_sp512 or builtin_sp4096")
    return int(digits)


def dataset_name_arg(text: str) -> str:
    """An argparse `type=` for a dataset name, refused as an unknown choice is (a builtin size or a FineWeb
    variant is checked when the dataset is resolved)."""
    base = text.removesuffix("_bytes")
    if base in ("builtin", "synthetic", "fineweb") or base.startswith((BUILTIN_PREFIX, "fineweb_")):
        return text
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (use {DATASET_NAMES})")
