"""The optional hooks a variant's model may define, and the one place the trainer calls them.

On the model returned by build(config), all optional:
  param_groups(c) -> list[ParamGroup]   which parameters Muon or Adam trains, at what lr (harness/optim.py)
  training_only: tuple[str, ...]        state-dict key prefixes used only in training, dropped before export
  metrics() -> dict[str, float]         statistics of the last evaluation, written to the run record
  forward returning (logits, {name: loss})  training-only loss terms, never part of val_loss or val_bpb
  export_tensors(state) -> {key: (codec, tensor)}  variant-owned storage: these state tensors are replaced by
                                        the given tensors and stored by the named codec of harness/artifact.py
                                        (e.g. "ternary": 1.6 bits a number) instead of int8. The codec is
                                        lossless and its bytes sit in the same zlib stream, counted against the
                                        cap like the rest; the restored model loads exactly these tensors, so
                                        they must give the trained model's outputs (harness/ternary.py)
On any submodule:
  begin_step() / end_accumulation(world_size)  called around each optimizer step's micro-batches
Tensors regenerated from a stored seed are non-persistent buffers built from a seeded generator: they never
enter the artifact, and the round trip rebuilds the model from the artifact alone, so it proves they are.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from harness.artifact import CodedState
from harness.model import Block


def begin_step(model: nn.Module) -> None:
    for module in model.modules():
        if hasattr(module, "begin_step"):
            module.begin_step()


def end_accumulation(model: nn.Module, world_size: int) -> None:
    for module in model.modules():
        if hasattr(module, "end_accumulation"):
            module.end_accumulation(world_size)


@torch.no_grad()
def prepare_eval(model: nn.Module) -> None:
    """Generate the evaluation weights of every GeneratedWeights module now, eagerly and outside autocast (as
    begin_step does in training): a compiled evaluation then reads them as inputs instead of tracing the
    generator into its graph (nca's growth loop, inlined, takes minutes to compile)."""
    for module in model.modules():
        if isinstance(module, GeneratedWeights):
            module.weights()


def metrics(model: nn.Module) -> dict[str, float]:
    return {k: float(v) for k, v in model.metrics().items()} if hasattr(model, "metrics") else {}


def exported_state(model: nn.Module) -> dict[str, Tensor]:
    """The state dict that goes into the artifact: persistent tensors, minus the declared training-only ones;
    with an export_tensors hook, a CodedState holding the hook's tensors and naming their codecs."""
    drop = tuple(getattr(model, "training_only", ()))
    state = {k: v for k, v in model.state_dict().items() if not (drop and k.startswith(drop))}
    if not hasattr(model, "export_tensors"):
        return state
    with torch.no_grad():
        coded = model.export_tensors(state)
    return CodedState({k: coded[k][1] if k in coded else v for k, v in state.items()},
                      {k: codec for k, (codec, _) in coded.items()})


def seeded_generator(seed: int, salt: str = "") -> torch.Generator:
    """A CPU generator from a stored seed (and a name), independent of the global RNG and of the device."""
    return torch.Generator().manual_seed((seed * 1_000_003 + sum(map(ord, salt)) * 7919) % 2**63)


class GeneratedWeights(nn.Module):
    """Weights computed from this module's parameters once per optimizer step, not once per micro-batch.

    Subclasses implement generate() → {name: tensor}. Under the trainer, begin_step() generates them once and
    hands the model detached leaves; the micro-batches accumulate gradients into those leaves; end_accumulation()
    averages them across ranks and back-propagates through the generator once. Evaluation (no grad) generates
    once and caches until the next mode switch, step or load. Called outside that protocol, weights() is simply
    differentiable, so a plain forward/backward also trains the generator.
    """

    def __init__(self):
        super().__init__()
        self._step_out: dict[str, Tensor] | None = None
        self._leaves: dict[str, Tensor] | None = None
        self._eval_cache: dict[str, Tensor] | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: module._forget())

    def generate(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def weights(self) -> dict[str, Tensor]:
        if not torch.is_grad_enabled():
            if self._eval_cache is None:
                self._eval_cache = self.generate()
            return self._eval_cache
        return self._leaves if self._leaves is not None else self.generate()

    def begin_step(self) -> None:
        self._forget()
        self._step_out = self.generate()
        self._leaves = {k: v.detach().requires_grad_() for k, v in self._step_out.items()}

    def end_accumulation(self, world_size: int) -> None:
        if self._leaves is None:
            return
        outs, grads = [], []
        for name, leaf in self._leaves.items():
            if leaf.grad is not None:
                if world_size > 1:  # DDP ignores the generator (it sees no gradient per micro-batch); average here
                    dist.all_reduce(leaf.grad)
                    leaf.grad /= world_size
                outs.append(self._step_out[name])
                grads.append(leaf.grad)
        if outs:
            torch.autograd.backward(outs, grads)
        self._step_out = self._leaves = None

    def _forget(self) -> None:
        self._eval_cache = self._step_out = self._leaves = None

    def train(self, mode: bool = True):
        self._forget()
        return super().train(mode)


class GeneratedLinear(nn.Module):
    """A block linear whose weight is layer `layer` of a generator's stacked `kind` matrices (weights()[kind])."""

    def __init__(self, weights, kind: str, layer: int):
        super().__init__()
        self.weights, self.kind, self.layer = weights, kind, layer  # a bound method: the generator is not a child

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weights()[self.kind][self.layer].to(x.dtype))


def generated_blocks(c, weights) -> list[nn.Module]:
    """The baseline's blocks, with every block matrix read from `weights()` ({kind: (num_layers, out, in)})."""
    return [Block(c, linear=lambda kind, i, o, z, layer=layer: GeneratedLinear(weights, kind, layer))
            for layer in range(c.num_layers)]


def generator_parameter_names(module: nn.Module) -> list[str]:
    """Names (in `module`) of parameters owned by GeneratedWeights: DDP must leave their gradients to us."""
    owned = {id(p) for m in module.modules() if isinstance(m, GeneratedWeights) for p in m.parameters()}
    return [name for name, p in module.named_parameters() if id(p) in owned]
