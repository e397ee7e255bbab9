"""The harness as it was before any plugin ran: its files' hashes, and its functions in memory.

A plugin's code runs inside the harness's process, so it could replace the functions that score it or count
its bytes, or switch a check off. Two records guard against that:
- FILE_HASHES: the sha256 of every harness/**/*.py, taken when the harness is first imported, before a plugin
  can be. The sealed process (harness/sealed.py) checks its copy of the harness against them before using it.
- freeze(): before the first plugin is loaded, every harness module a run uses is imported and, for each, the
  identity, code and defaults of every function and method and the value of every constant (UPPER_CASE names)
  are recorded, with the functions of torch.nn.functional and the methods of torch.Tensor that scoring relies
  on. verify() names whatever has changed since; a run, a preflight and `check` refuse to go on if anything has.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
import types
from pathlib import Path

HARNESS_DIR = Path(__file__).resolve().parent
# The modules a run, a preflight and the sealed round trip execute (importing them pulls in the rest they use).
RUN_MODULES = ("harness.train", "harness.conformance", "harness.sealed", "harness.registry", "harness.guard",
               "harness.cli", "harness.results", "harness.checks", "harness.budget", "harness.config")
CONSTANT_TYPES = (int, float, str, bytes, bool, tuple, frozenset, type(None))


def file_hashes(root: Path = HARNESS_DIR) -> dict[str, str]:
    """{path relative to the harness folder: sha256} for every Python file of the harness at `root`."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts}


FILE_HASHES = file_hashes()
_frozen: dict[str, tuple] | None = None


def _function_state(value) -> tuple | None:
    fn = value.__func__ if isinstance(value, staticmethod | classmethod) else value
    if isinstance(fn, types.FunctionType):
        return id(fn), fn.__code__, fn.__defaults__, repr(fn.__kwdefaults__)
    return None


def _entries(name: str, namespace: dict, owner: str, constants: bool):
    for attr, value in list(namespace.items()):
        state = _function_state(value)
        if state is not None:
            yield f"{name}.{attr}", state
        elif isinstance(value, type) and value.__module__ == owner:
            yield f"{name}.{attr}", (id(value),)
            for method, member in list(vars(value).items()):
                if (method_state := _function_state(member)) is not None:
                    yield f"{name}.{attr}.{method}", method_state
        elif constants and attr.isupper() and isinstance(value, CONSTANT_TYPES):
            yield f"{name}.{attr}", ("constant", repr(value))


def snapshot() -> dict[str, tuple]:
    """The current state of every loaded harness module and of the torch functions the score goes through."""
    import torch
    import torch.nn.functional as F

    out: dict[str, tuple] = {}
    for name, module in sorted(sys.modules.items()):
        if (name == "harness" or name.startswith("harness.")) and isinstance(module, types.ModuleType):
            out.update(_entries(name, vars(module), name, constants=True))
    out.update(_entries("torch.nn.functional", vars(F), "", constants=False))
    out.update(("torch.Tensor." + attr, (id(value),)) for attr, value in list(vars(torch.Tensor).items())
               if callable(value))
    return out


def freeze() -> None:
    """Record the harness as it is now (once per process, before the first plugin is imported)."""
    global _frozen
    if _frozen is None:
        for module in RUN_MODULES:
            importlib.import_module(module)
        import torch

        from harness.optim import Muon

        # torch wraps an optimizer class's step() when its first instance is made: let that happen before.
        Muon([torch.nn.Parameter(torch.zeros(1, 1))], lr=0.0, momentum=0.0, backend_steps=1)
        _frozen = snapshot()


def verify() -> list[str]:
    """What has changed since freeze(), one phrase each (empty: nothing, or nothing frozen yet)."""
    if _frozen is None:
        return []
    now = snapshot()
    changed = []
    for key, before in _frozen.items():
        after = now.get(key)
        if after is None:
            changed.append(f"{key} was removed")
        elif after[0] != before[0]:
            changed.append(f"{key} was {'changed' if before[0] == 'constant' else 'replaced'}")
        elif after != before:
            changed.append(f"{key}'s code or defaults were changed")
    return changed


def require_intact(what: str) -> None:
    """Raise (one line) if the harness was changed in memory since freeze(): the result of `what` would not be
    the harness's."""
    from harness.errors import UserError

    changed = verify()
    if changed:
        more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
        raise UserError(f"the plugin changed the harness in memory ({'; '.join(changed[:3])}{more}), so {what} "
                        f"cannot be trusted; a variant may only define its model")
