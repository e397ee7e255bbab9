"""What a variant's build() may touch: its config and the seed, nothing on disk but Python's own files.

A build that reads a file could smuggle weights past the artifact (a table loaded at build time is rebuilt by
the round trip as well, so the score would not show it) or peek at validation data. While a build runs, an
audit hook refuses every file it opens except Python modules and the interpreter's and installed packages'
own files. The hook is process-wide and installed once; it is active only inside `building(...)`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path

from harness.errors import UserError

_active = threading.local()
_installed = False
MODULE_SUFFIXES = (".py", ".pyc", ".so", ".pyd", ".pth")  # what importing a module opens


def _roots() -> tuple[str, ...]:
    import torch

    return tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                str(Path(torch.__file__).parent), "/proc", "/sys", "/dev")})


def _allowed(path: str) -> bool:
    real = os.path.realpath(path)
    if real.endswith(MODULE_SUFFIXES):
        return True
    return any(real == root or real.startswith(root + os.sep) for root in _active.roots)


def _reads(mode, flags) -> bool:
    """Whether an open only reads: reading is how weights or data get in (a library probing a temporary folder
    for writing, as torch's lazy imports do, is not)."""
    if isinstance(mode, str):
        return not any(c in mode for c in "wax+")
    return isinstance(flags, int) and not flags & (os.O_WRONLY | os.O_RDWR)


def _hook(event: str, args: tuple) -> None:
    if event != "open" or not getattr(_active, "variant", None):
        return
    path, mode, flags = (tuple(args) + (None, None))[:3]
    if isinstance(path, int) or not _reads(mode, flags):
        return
    text = os.fsdecode(path) if isinstance(path, bytes | os.PathLike) else str(path)
    if not _allowed(text):
        raise PermissionError(f"{_MARK} {text}")


_MARK = "build() may not open files:"


@contextlib.contextmanager
def building(variant_name: str):
    """Inside: file opens other than Python's own are refused; a refusal becomes a UserError naming the file."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    _active.roots = _roots()
    previous, _active.variant = getattr(_active, "variant", None), variant_name
    try:
        yield
    except PermissionError as exc:
        if _MARK not in str(exc):
            raise
        path = str(exc).split(_MARK, 1)[1].strip()
        raise UserError(f"variant {variant_name!r}: build() opened {path}; a model must come from its config "
                        f"and seed alone (learned weights belong in the artifact, data to the trainer)") from None
    finally:
        _active.variant = previous
