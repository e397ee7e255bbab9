"""Training-only techniques: changes to how a model is trained that compose with any variant and leave what is
stored and what runs at inference unchanged (and a proof of that, per run: harness/techniques/proof.py).

A technique is one file in this folder (or any path) that calls `register(...)` with its name, a typed config
dataclass whose fields are its flags (each named after the technique, e.g. `mtp_heads`), presets and a search
space, and a class deriving from `Technique`. While training, a technique may
  - add modules of its own (`modules()`): trained beside the model by Adam, never exported;
  - transform the training batch (`inputs`), e.g. noise on the tokens;
  - watch the model's blocks (`needs_hidden`) and add loss terms from their outputs (`loss_terms`);
  - change what a block computes in training only (`attach`, with forward hooks that check `module.training`);
  - act around each optimizer step (`begin_step`, `after_backward`, `after_step`), scale its learning rate
    (`lr_scale`), and set the weights the run exports when training ends (`finish`: weight averaging).
It never sees an evaluation: the scorer calls no technique in eval mode. Several compose, applied in the order
of their `order` (then name); a pair a technique declares incompatible is refused with its reason.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from harness.errors import UserError

TECHNIQUES_DIR = Path(__file__).resolve().parent


class Technique:
    """One technique applied to one model. Subclasses override what they use."""

    needs_hidden = False  # whether loss_terms reads the blocks' outputs
    context: dict = {}    # set by the stack: {"tables": the tokenizer's ByteTables} where the run has them

    def __init__(self, config, model: nn.Module, model_config):
        self.config, self.model_config = config, model_config

    def modules(self) -> dict[str, nn.Module]:
        """Training-only modules (heads, projections): trained beside the model, never exported."""
        return {}

    def attach(self, model: nn.Module) -> None:
        """Install forward hooks that change training only (they must check `module.training`)."""

    def inputs(self, x: Tensor, y: Tensor, progress: Tensor) -> tuple[Tensor, Tensor]:
        return x, y

    def loss_terms(self, model: nn.Module, x: Tensor, y: Tensor, logits: Tensor, hidden: list[Tensor],
                   progress: Tensor) -> dict[str, Tensor]:
        return {}

    def token_weights(self, logits: Tensor, y: Tensor, progress: Tensor) -> Tensor | None:
        """Per-token weights of the training cross-entropy (None: all 1); never applied to the score."""
        return None

    def begin_step(self, model: nn.Module, step: int, progress: float) -> None:
        """Before the step's forward passes (outside any compiled graph: python state set here is read by the
        graph as a constant, so change it rarely, or each change recompiles)."""

    def after_backward(self, model: nn.Module) -> None:
        """After the step's backward passes, before gradient clipping and the optimizer step."""

    def after_step(self, model: nn.Module, step: int) -> None:
        """After the optimizer step."""

    def finish(self, model: nn.Module) -> None:
        """When training ends, before the final evaluation and export: e.g. load averaged weights."""

    def lr_scale(self, scale: float, step: int, progress: float) -> float:
        """The learning-rate multiplier of this step, given the trainer's (flat, then warmdown)."""
        return scale

    def positions(self, hidden: Tensor) -> Tensor:
        """The model's own token positions of a block output (a technique that inserts positions removes them)."""
        return hidden

    def recompiles(self) -> int:
        """How many times in a run `begin_step` changes python state that the compiled graph reads (each change
        compiles once more; the harness raises torch.compile's recompile limit by that much)."""
        return 0


def token_embedding(model: nn.Module, vocab_size: int, who: str) -> nn.Embedding:
    """The model's token embedding: `tok_emb`, else the one nn.Embedding with a row per token."""
    found = getattr(model, "tok_emb", None)
    if isinstance(found, nn.Embedding):
        return found
    found = [m for m in model.modules() if isinstance(m, nn.Embedding) and m.num_embeddings == vocab_size]
    if not found:
        raise UserError(f"technique {who} needs the model's token embedding (an nn.Embedding with {vocab_size} rows)")
    return found[0]


def forget_generated(model: nn.Module) -> None:
    """Weights changed in place: generated weights (harness/hooks.py GeneratedWeights) drop what they cached."""
    from harness.hooks import GeneratedWeights

    for module in model.modules():
        if isinstance(module, GeneratedWeights):
            module._forget()


@dataclass(frozen=True)
class TechniqueSpec:
    name: str
    config_cls: type
    cls: type
    doc: str = ""
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    space: dict[str, Any] = field(default_factory=dict)
    order: int = 50
    incompatible: dict[str, str] = field(default_factory=dict)  # other technique → why not together
    training_only: bool = True
    source_file: Path | None = None
    preset: str | None = None  # chosen in --with as name:preset


_REGISTRY: dict[str, TechniqueSpec] = {}


def register(name: str, config: type, cls: type, doc: str = "", presets: dict | None = None,
             space: dict | None = None, order: int = 50, incompatible: dict | None = None) -> TechniqueSpec:
    if not dataclasses.is_dataclass(config):
        raise UserError(f"technique {name!r}: config must be a dataclass")
    loose = [f.name for f in dataclasses.fields(config) if not f.name.startswith(name + "_")]
    if loose:
        raise UserError(f"technique {name!r}: config field {loose[0]!r} must start with '{name}_' (its flags sit "
                        f"beside the variant's)")
    from harness.tune.space import check

    check(dict(space or {}), config, f"technique {name}")
    caller = Path(sys._getframe(1).f_globals.get("__file__", "")).resolve()
    spec = TechniqueSpec(name, config, cls, doc, dict(presets or {}), dict(space or {}), order,
                         dict(incompatible or {}), True, caller)
    _REGISTRY[name] = spec
    return spec


def known_technique_names() -> list[str]:
    return sorted(p.stem for p in TECHNIQUES_DIR.glob("*.py") if not p.stem.startswith("_") and p.stem != "proof")


def get_technique(name: str) -> TechniqueSpec:
    if name.endswith(".py"):
        path = Path(name).resolve()
        if not path.is_file():
            raise UserError(f"technique file {name} does not exist")
        module_name = f"golf_technique_{path.stem}"
        if module_name not in sys.modules:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        mine = [t for t in _REGISTRY.values() if t.source_file == path]
        if not mine:
            raise UserError(f"technique file {name} does not call harness.techniques.register(...)")
        return mine[0]
    if name not in _REGISTRY:
        if name not in known_technique_names():
            raise UserError(f"unknown technique {name!r}; known techniques: {', '.join(known_technique_names())} "
                            f"(or give a path to a .py file)")
        importlib.import_module(f"harness.techniques.{name}")
    return _REGISTRY[name]


def parse_with(text: str | None) -> list[TechniqueSpec]:
    """`--with mtp,deep_supervision` (or `mtp+deep_supervision`) → the techniques in application order; a repeat
    or an incompatible pair is refused with the reason."""
    if not text:
        return []
    names = [n.strip() for n in text.replace("+", ",").split(",") if n.strip()]
    specs = []
    for name in names:
        base, _, preset = name.partition(":") if not name.endswith(".py") else (name, "", "")
        spec = get_technique(base)
        if preset and preset not in spec.presets:
            raise UserError(f"technique {spec.name!r} has no preset {preset!r}; presets: "
                            f"{', '.join(spec.presets) or 'none'}")
        specs.append(dataclasses.replace(spec, preset=preset or None))
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise UserError(f"technique {spec.name!r} is given twice in --with")
        seen.add(spec.name)
    for a in specs:
        for b in specs:
            if b.name in a.incompatible:
                raise UserError(f"techniques {a.name} and {b.name} cannot be combined: {a.incompatible[b.name]}")
    return sorted(specs, key=lambda s: (s.order, s.name))


class TechniqueStack(nn.Module):
    """The techniques of a run applied to its model: owns their modules (not the model's: never exported), the
    training progress (0 → 1, a tensor so a compiled graph reads it instead of recompiling), and the hooks that
    collect the blocks' outputs while training."""

    def __init__(self, specs_and_configs: list[tuple[TechniqueSpec, Any]], model: nn.Module, model_config,
                 context: dict | None = None):
        super().__init__()
        self.names = [spec.name for spec, _ in specs_and_configs]
        self.techniques = []
        for spec, cfg in specs_and_configs:
            technique = spec.cls.__new__(spec.cls)
            technique.context = dict(context or {})  # readable from __init__ on
            technique.__init__(cfg, model, model_config)
            self.techniques.append(technique)
        self.parts = nn.ModuleDict({f"{name}__{key}": module for name, t in zip(self.names, self.techniques)
                                    for key, module in t.modules().items()})
        self.register_buffer("progress", torch.zeros(()), persistent=False)
        self._hidden: list[Tensor] = []
        for t in self.techniques:
            t.attach(model)
        if any(t.needs_hidden for t in self.techniques):
            blocks = getattr(model, "blocks", None)
            if not isinstance(blocks, nn.ModuleList):
                raise UserError(f"techniques {', '.join(self.names)} read the blocks' outputs, and this model has no "
                                f"`blocks` list")
            for block in blocks:  # after the techniques' own hooks: what a block finally outputs (refine_twice)
                block.register_forward_hook(self._collect)
        # python state the compiled graph reads and a technique changes during a run: each change compiles once
        self.recompiles = sum(t.recompiles() for t in self.techniques)

    def _collect(self, module, args, output) -> None:
        if module.training and torch.is_grad_enabled():
            for t in self.techniques:
                output = t.positions(output)
            self._hidden.append(output)

    # Around each optimizer step, in the trainer's order (harness/train.py: train_step). Not `begin_step`: that
    # name is the variants' own per-module hook (harness/hooks.py), which the stack is not.
    def start_step(self, model: nn.Module, step: int, progress: float) -> None:
        self.progress.fill_(progress)  # a tensor: a compiled graph reads it without recompiling
        for t in self.techniques:
            t.begin_step(model, step, progress)

    def after_backward(self, model: nn.Module) -> None:
        for t in reversed(self.techniques):
            t.after_backward(model)

    def after_step(self, model: nn.Module, step: int) -> None:
        for t in self.techniques:
            t.after_step(model, step)

    def finish(self, model: nn.Module) -> None:
        for t in self.techniques:
            t.finish(model)

    def lr_scale(self, scale: float, step: int, progress: float) -> float:
        for t in self.techniques:
            scale = t.lr_scale(scale, step, progress)
        return scale

    def trainable(self) -> list[nn.Parameter]:
        """The techniques' own trained parameters (an EMA teacher's are not)."""
        return [p for p in self.parameters() if p.requires_grad]

    def inputs(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        self._hidden = []
        for t in self.techniques:
            x, y = t.inputs(x, y, self.progress)
        return x, y

    def token_weights(self, logits: Tensor, y: Tensor) -> Tensor | None:
        weights = None
        for t in self.techniques:
            w = t.token_weights(logits, y, self.progress)
            if w is not None:
                weights = w if weights is None else weights * w
        return weights

    def loss_terms(self, model: nn.Module, x: Tensor, y: Tensor, logits: Tensor) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        hidden, self._hidden = self._hidden, []
        for name, t in zip(self.names, self.techniques):
            found = t.loss_terms(model, x, y, logits, hidden, self.progress)
            terms.update({f"{name}.{k}": v for k, v in found.items()})
        self._hidden = []  # what extra forward passes in loss_terms collected is not kept
        return terms


def resolve(specs: list[TechniqueSpec], flags: dict[str, Any]) -> list[tuple[TechniqueSpec, Any]]:
    """Each technique's config from its defaults and the flags that name its fields."""
    from harness.config import replace, validate

    out = []
    for spec in specs:
        names = {f.name for f in dataclasses.fields(spec.config_cls)}
        config = spec.config_cls()
        validate(config)
        if spec.preset:
            config = replace(config, spec.presets[spec.preset], f"preset {spec.name}:{spec.preset}")
        mine = {k: v for k, v in flags.items() if k in names}
        if mine:
            config = replace(config, mine, f"technique {spec.name}")
        if hasattr(config, "check"):
            config.check()
        out.append((spec, config))
    return out


def label(specs_and_configs) -> str:
    """'+mtp+deep_supervision' (empty without techniques): appended to a configuration's label."""
    return "".join(f"+{spec.name}" for spec, _ in specs_and_configs)


def train_steps(scored: nn.Module, stack: TechniqueStack, optimizer, x: Tensor, steps: int,
                progress: float | tuple[float, ...] = 0.5) -> list[float]:
    """A few training steps on one batch with every technique hook in the trainer's order, then `finish`
    (for the proof and the tests; harness/train.py is the trainer). `progress`: one value, or one per step.
    Returns the training losses."""
    model = scored.model
    scored.train()
    losses = []
    for step in range(steps):
        stack.start_step(model, step, progress[step] if isinstance(progress, tuple) else progress)
        optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss, aux = scored(x[:, :-1], x[:, 1:])
            (loss + aux).backward()
        stack.after_backward(model)
        optimizer.step()
        stack.after_step(model, step)
        losses.append(loss.item())
    stack.finish(model)
    return losses
