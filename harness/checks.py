"""Input checks, one place per kind: names that become files, numbers, JSON files the harness reads back, and
the paths it writes. Every failure is a UserError that names the input and says how to fix it.

Names (run ids, sweep and study names, budget names) become folder and file names, so they match one safe
pattern and can never climb out of the folder they are written in. Numbers must be finite: NaN passes every
range check (`nan < 0` and `nan > 1` are both false) and then breaks JSON, so it is refused at the door.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from harness.errors import UserError

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,159}")
SAFE_NAME_RULE = "letters, digits, '.', '_' or '-', starting with a letter or digit, at most 160 characters"
SEED_MAX = 2**63 - 1


def safe_name(value: Any, what: str) -> str:
    """`value` if it can name a file or folder on its own, else a UserError naming `what`."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value) or value.endswith((".", ".tmp")):
        raise UserError(f"{what} {value!r} must be {SAFE_NAME_RULE} (it names a file)")
    return value


def to_safe_name(text: str) -> str:
    """`text` with every character a file name should not hold replaced by '_' (for ids built from names)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip("._-") or "x"
    return cleaned[:160]


def finite(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{what} must be a finite number, got {value!r}")
    return value


def check_seed(seed: Any, what: str = "--seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise UserError(f"{what} {seed!r} is out of range; use an integer from 0 to 2**63 - 1")
    return seed


def number_arg(kind: type, low: float | None = None, high: float | None = None, *, above: bool = False):
    """An argparse `type=` for a finite int or float in [low, high] (or (low, high] with above=True): the flag's
    own error, one line, instead of NaN, inf or a negative count slipping through."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expects a finite number, got {text!r}")
        if low is not None and (value <= low if above else value < low):
            raise argparse.ArgumentTypeError(f"must be {'above' if above else 'at least'} {low}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its message
    return parse


def read_json(path: Path, what: str, fix: str, kind: type = dict) -> Any:
    """A JSON file the harness wrote earlier, or one UserError naming it, what is wrong and `fix`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist; {fix}") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a folder, not a file; {fix}") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}; {fix}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{what} {path} is damaged (not valid JSON: {exc}); {fix}") from None
    if not isinstance(data, kind):
        raise UserError(f"{what} {path} is damaged (holds a {type(data).__name__}, not a {kind.__name__}); {fix}")
    return data


def existing_file(path: Path, what: str, flag: str) -> Path:
    """A file to read: missing, a folder or unreadable are each said as they are."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give the {what} file itself")
    if not path.exists():
        raise UserError(f"{flag} {path} does not exist; give the path of a {what} file")
    return path


def writable_folder(folder: Path, flag: str, create: bool = True) -> Path:
    """A folder the harness may write into: a file in the way, or no permission, is the user's to fix. With
    create=False nothing is made yet (the first write makes it), so a command refused later leaves no trace."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"cannot be made: {existing} is a file"
        raise UserError(f"{flag} {folder} {where}; give a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {folder} is not writable (no permission on {existing}); choose a folder you can "
                        f"write")
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{flag} {folder} cannot be created: {exc.strerror}; choose a folder you can "
                            f"write") from None
    return folder


def readable_folder(folder: Path, flag: str) -> Path:
    """A folder the harness reads from (results/): absent is fine (nothing recorded yet); a file is not."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder} is a file; give the folder that holds the run folders")
    return folder
