"""Run under torch.distributed.run with 2 processes: for every family and preset, one DDP optimizer step (each
rank one micro-batch) must leave both ranks with the same parameters as one process accumulating both
micro-batches. Writes {config id: [problems]} to the JSON file named on the command line."""

import json
import sys
import weakref

import conformance as cf
import torch
import torch._dynamo  # noqa: F401  before the process group exists: see main()
import torch.distributed as dist

from harness.metric import ScoredModel
from harness.optim import build_optimizers
from harness.train import accumulate, wrap_for_training


def step(model, config, batches, world_size):
    scored = ScoredModel(model)
    _, trainer = wrap_for_training(scored, model, False, True, world_size, torch.device("cpu"), 0)
    optimizers, _ = build_optimizers(model, config, fused=False)
    accumulate(trainer, model, batches, len(batches) if world_size == 1 else 1, world_size, torch.device("cpu"),
               None)
    for opt in optimizers:
        opt.step()


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    world_group = weakref.ref(dist.group.WORLD)
    rank, world = dist.get_rank(), dist.get_world_size()
    problems = {}
    for name, preset, changes in cf.all_configs():
        key = cf.config_id(name, preset, changes)
        variant, config = cf.tiny(name, preset, **changes)
        halves = [cf.copy_pairs(config, 4, seed=100 + r) for r in range(world)]
        found = []
        try:
            model = cf.build(variant, config)
            step(model, config, [halves[rank]], world)
            flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
            gathered = [torch.empty_like(flat) for _ in range(world)]
            dist.all_gather(gathered, flat)
            # The reference runs on both ranks: Muon shares its work across the process group either way.
            reference = cf.build(variant, config)
            step(reference, config, halves, 1)
            ref = torch.cat([p.detach().reshape(-1) for p in reference.parameters()])
            if not torch.equal(gathered[0], gathered[1]):
                found.append("ranks disagree after one DDP step")
            diff = (ref - flat).abs().max().item()
            if diff > 1e-4:
                found.append(f"DDP step differs from the single-process step by {diff:.2e}")
        except Exception as exc:  # record and go on: one broken family must not hide the others
            found.append(f"{type(exc).__name__}: {exc}")
        problems[key] = found
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(problems, f, indent=1)
    # Shut the group down while the interpreter is whole. A gloo worker thread lets go of a collective's tensors
    # just after the caller has resumed; if this rank is already exiting by then (a loaded machine makes that
    # likely), freeing their Python objects needs the GIL, Python ends the thread inside a C++ destructor, and
    # the rank aborts: "terminate called without an active exception". destroy_process_group() joins those
    # threads, but only if nothing else holds the group: DDP's first use imports torch._dynamo, and its import of
    # torch.distributed.nn binds the default group as default arguments for good; hence that import on top.
    dist.destroy_process_group()
    assert world_group() is None, "the process group outlived destroy_process_group(): its threads race the exit"


if __name__ == "__main__":
    main(sys.argv[1])
