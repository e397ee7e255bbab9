"""What a variant's code may touch: its config and the seed to build, the batches the trainer hands it to train.

Three scopes, enforced by one process-wide audit hook on file opens (installed at the first use):
- building(...): while build() runs, every file read is refused except Python modules and the interpreter's and
  installed packages' own files. A build that reads a file could smuggle weights past the artifact (a table
  loaded at build time is rebuilt by the round trip as well, so the score would not show it) or peek at
  validation data. The build also runs without gradients, may not step an optimizer (training belongs on the
  clock) and may not take longer than the budget's build_seconds_limit.
- protect(folders): outside the build too, code of a loaded plugin file may not read anything under the data
  root or the run's dataset: the harness reads the training shards for it and the validation split only to
  score. Which code is asking is read from the call stack (a frame in a plugin file).
- seal(folder): for the sealed round trip (harness/sealed.py), every read for the rest of the process, by
  anyone, except Python modules inside `folder` and the interpreter's own files.
Reads are what is refused: a library probing a temporary folder for writing (torch's lazy imports do) is not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

from harness.errors import UserError

MODULE_SUFFIXES = (".py", ".pyc", ".so", ".pyd", ".pth")  # what importing a module opens
_MARK = "variant code may not open files:"

_state = threading.local()          # .variant: the variant being built in this thread
_plugin_files: set[str] = set()     # source files of loaded plugins (and the modules they import)
_protected: set[str] = set()        # folders plugin code may not read
_sealed: dict[str, tuple[str, ...]] = {}  # "roots": what a sealed process may still read
_installed = False


def _python_roots() -> tuple[str, ...]:
    import site
    import sysconfig

    import torch

    paths = sysconfig.get_paths()
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(torch.__file__).parent), "/proc", "/sys", "/dev",
             *(paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths)}
    user_site = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
    if user_site:
        roots.add(user_site)
    return tuple(sorted({os.path.realpath(p) for p in roots}))


def _under(path: str, roots) -> bool:
    return any(path == root or path.startswith(root + os.sep) for root in roots)


def _reads(mode, flags) -> bool:
    """Whether an open only reads: reading is how weights or data get in."""
    if isinstance(mode, str):
        return not any(c in mode for c in "wax+")
    return isinstance(flags, int) and not flags & (os.O_WRONLY | os.O_RDWR)


def _plugin_on_stack() -> str | None:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename in _plugin_files:
            return frame.f_code.co_filename
        frame = frame.f_back
    return None


def _hook(event: str, args: tuple) -> None:
    if event != "open":
        return
    path, mode, flags = (tuple(args) + (None, None))[:3]
    if isinstance(path, int) or not _reads(mode, flags):
        return
    real = os.path.realpath(os.fsdecode(path) if isinstance(path, bytes | os.PathLike) else str(path))
    if _sealed:
        inside = _under(real, _sealed["roots"]) or (real.endswith(MODULE_SUFFIXES) and _under(real, _sealed["code"]))
        if not inside:
            raise PermissionError(f"{_MARK} {real} (the sealed round trip reads nothing but the artifact)")
        return
    if getattr(_state, "variant", None):
        if not (real.endswith(MODULE_SUFFIXES) or _under(real, _state.roots)):
            raise PermissionError(f"{_MARK} {real} (build() gets its config and the seed, nothing else)")
        return
    if _protected and _under(real, _protected) and (who := _plugin_on_stack()):
        raise PermissionError(f"{_MARK} {real} (read by {Path(who).name}: the harness hands a model its batches "
                              f"and opens the validation split only to score)")


def _install() -> None:
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True


def add_plugin_files(*paths) -> None:
    """Code in these files is a plugin's: it may not read the protected folders."""
    _install()
    _plugin_files.update(str(Path(p).resolve()) for p in paths)
    _plugin_files.update(str(p) for p in paths)


def protect(*folders) -> None:
    """Plugin code may not read anything under these folders from now on."""
    _install()
    _protected.update(os.path.realpath(f) for f in folders if f)


def seal(code_folder: Path) -> None:
    """From now on, nothing in this process reads a file except Python modules in `code_folder` and the
    interpreter's, torch's and installed packages' own files (irreversible: for the sealed process only)."""
    _install()
    roots = _python_roots()
    _sealed.update(code=(os.path.realpath(code_folder),), roots=roots)


class BuildTimeout(Exception):
    pass


class BuildRefused(UserError):
    """A build that read a file, trained or overran: the message names what it did."""


class _Trains(Exception):
    pass


def _no_optimizer_steps(optimizer, args, kwargs):
    if getattr(_state, "variant", None):
        raise _Trains(type(optimizer).__name__)


_step_hook: list = []


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    """Interrupt the body after `seconds` (main thread only: elsewhere the elapsed time is checked after)."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise BuildTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def building(variant_name: str, seconds_limit: float | None = None):
    """Inside: file reads other than Python's own are refused, gradients are off, optimizer steps are refused,
    and the body may take at most `seconds_limit`; each becomes a UserError naming what the build did."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    _install()
    if not _step_hook:
        _step_hook.append(register_optimizer_step_pre_hook(_no_optimizer_steps))
    _state.roots = _python_roots()
    previous, _state.variant = getattr(_state, "variant", None), variant_name
    start = time.perf_counter()
    where = f"variant {variant_name!r}: build()"
    over = (f"{where} took longer than the budget's build_seconds_limit of {seconds_limit:g}s; a build makes the "
            f"model from its config and seed, and work that improves it belongs in training, where the clock "
            f"charges it") if seconds_limit else ""
    try:
        with _time_limit(seconds_limit), torch.no_grad():
            yield
    except BuildTimeout:
        raise BuildRefused(over) from None
    except _Trains as exc:
        raise BuildRefused(f"{where} stepped an optimizer ({exc}): training belongs in the run, on the clock; a build "
                        f"only makes the model") from None
    except PermissionError as exc:
        if _MARK not in str(exc):
            raise
        path = str(exc).split(_MARK, 1)[1].strip().split(" (")[0]
        raise BuildRefused(f"{where} opened {path}; a model must come from its config and seed alone (learned "
                        f"weights belong in the artifact, data to the trainer)") from None
    finally:
        _state.variant = previous
    if seconds_limit and time.perf_counter() - start > seconds_limit:
        raise BuildRefused(over)


def refused_path(exc: BaseException) -> str | None:
    """The file a refused open named, if `exc` (or what caused it) is the guard's refusal."""
    while exc is not None:
        if isinstance(exc, PermissionError) and _MARK in str(exc):
            return str(exc).split(_MARK, 1)[1].strip()
        exc = exc.__cause__ or exc.__context__
    return None
