"""The trainer: one run of one variant under one budget, read top to bottom.

SETUP → WARM-UP (untimed, state restored) → TRAIN LOOP (timed) → FINAL EVAL → EXPORT + ROUND TRIP → RECORD.
Only training steps are charged to the budget's clock (modded-nanogpt's fair clock); validation pauses it and
warm-up steps are undone. Every ending — ok, over the cap, diverged, interrupted, failed — writes its record.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import random
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import harness
from harness import (
    artifact,
    attention,
    checkpoint,
    compilation,
    conformance,
    guard,
    hardware,
    hooks,
    integrity,
    live,
    precision,
    sealed,
    techniques,
)
from harness.config import as_dict, stable_hash
from harness.data.datasets import check_shard_lengths, default_data_root, resolve_dataset
from harness.data.loader import DistributedTokenLoader, plan_accumulation
from harness.errors import UserError
from harness.evaluation import EvalScheme
from harness.metric import ScoredModel, autocast, evaluate, load_validation
from harness.optim import build_optimizers, zeropower_via_newtonschulz5
from harness.qat import LateQAT
from harness.registry import Variant
from harness.results import (
    SCHEMA_VERSION,
    default_results_dir,
    new_run_id,
    thin_curve,
    write_atomic,
    write_curve,
    write_json_atomic,
)
from harness.runspec import RunSpec
from harness.techniques.proof import prove as technique_proof_of


class Log:
    """Prints (unless quiet) and appends to the run's log file; only rank 0 speaks."""

    def __init__(self, enabled: bool, quiet: bool):
        self.enabled, self.quiet, self.file = enabled, quiet, None
        self.pending: list[str] = []

    def open(self, path: Path) -> None:
        self.file = open(path, "a", encoding="utf-8", buffering=1)
        for line in self.pending:
            self.file.write(line + "\n")
        self.pending.clear()

    def __call__(self, msg: str, console: bool = True) -> None:
        if not self.enabled:
            return
        if console and not self.quiet:
            print(msg, flush=True)
        if self.file:
            try:
                self.file.write(msg + "\n")
            except OSError:  # a full disk: the console still gets it, and the run goes on to record its end
                pass
        else:
            self.pending.append(msg)


class RunFailed(RuntimeError):
    """A run that ended `failed` (its record says why). `explained`: the reason is one line for a person (the
    recompile limit), not a bug whose traceback matters."""

    def __init__(self, message: str, explained: bool = False):
        super().__init__(message)
        self.explained = explained


CHECKPOINT_FILE = "checkpoint.pt"
_stop = {"requested": False}


def request_checkpoint() -> None:
    """Ask the running loop to save a checkpoint and stop at the next step boundary (signal-handler safe)."""
    _stop["requested"] = True


def setup_distributed(device_kind: str) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; a single process otherwise."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        if device_kind == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return rank, world_size, local_rank


def pick_device(spec: RunSpec, local_rank: int) -> torch.device:
    kind = spec.device or spec.budget.device
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"budget {spec.budget.name!r} is meant for {spec.budget.device_count}×CUDA GPU but no CUDA "
                        f"device is available; add --device cpu to run it here anyway (numbers not comparable)")
    return torch.device("cuda", local_rank) if kind == "cuda" else torch.device("cpu")


def accumulate(trainer, model, batches, accumulation: int, world_size: int, device: torch.device,
               autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """Forward and backward over one optimizer step's micro-batches, inside the model's step hooks.

    Gradients are averaged over micro-batches (and, by DDP, over ranks); returns the mean training loss.
    """
    hooks.begin_step(model)
    train_loss = torch.zeros((), device=device)
    for micro, (x, y) in enumerate(batches):
        if world_size > 1:
            trainer.require_backward_grad_sync = micro == accumulation - 1
        with autocast(device, autocast_dtype):
            loss, aux = trainer(x, y)
        train_loss += loss.detach()
        ((loss + aux) / accumulation).backward()
    hooks.end_accumulation(model, world_size)
    return train_loss / accumulation


def preflight_checks(spec: RunSpec) -> dict:
    """The conformance checks on a small CPU copy of the run's model, before anything is recorded: a model that
    sees the future, couples its batch or evaluates nondeterministically is refused, naming the check."""
    if not spec.preflight:
        return {"skipped": True}
    findings, summary = conformance.preflight(spec.variant, spec.config, spec.budget.seq_len,
                                              build_seconds_limit=spec.budget.build_seconds_limit)
    if findings:
        from harness.registry import known_variant_names

        ref = spec.variant.name if spec.variant.name in known_variant_names() else spec.variant.source_file
        raise UserError(f"preflight check '{findings[0].check}' failed for {spec.variant.name}: {findings[0].problem}"
                        f" (python -m harness check {ref} runs every check)")
    return summary


def build_model(variant: Variant, config, seed: int, device: torch.device, scheme: str,
                build_seconds_limit: float | None = None) -> torch.nn.Module:
    """The variant's model at `seed`, built on the CPU so a seed gives the same init on any device, then moved
    to `device` with the precision scheme's dtypes."""
    hardware.check_model_fits(variant, config, device)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = variant.construct(config, build_seconds_limit)
    model.to(device)
    precision.apply(model, scheme)
    return model


def wrap_for_training(scored, model, use_compile: bool, fullgraph: bool, world_size: int,
                      device: torch.device, local_rank: int):
    """(compiled, trainer): torch.compile if asked, then DDP across ranks. Parameters of generated weights are
    left out of DDP: their gradients arrive once per step through end_accumulation, which averages them."""
    compiled = compilation.compile_model(scored, fullgraph) if use_compile else scored
    if world_size == 1:
        return compiled, compiled
    DDP._set_params_and_buffers_to_ignore_for_model(compiled, hooks.generator_parameter_names(compiled))
    return compiled, DDP(compiled, device_ids=[local_rank] if device.type == "cuda" else None,
                         forward_sync_buffers=False)


def run(spec: RunSpec) -> dict:
    # ------------------------------------------------------------------ SETUP
    t_start = harness.PROCESS_START
    _stop["requested"] = False
    b, c = spec.budget, spec.config
    device_kind = spec.device or b.device
    rank, world_size, local_rank = setup_distributed(device_kind)
    distributed = world_size > 1
    master = rank == 0
    log = Log(master, spec.quiet)
    device = pick_device(spec, local_rank)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    scheme = spec.precision or precision.default_precision(device.type)
    autocast_dtype = precision.compute_dtype(device.type, scheme)
    use_compile = spec.compile if spec.compile is not None else device.type == "cuda"
    fullgraph = not spec.variant.graph_breaks
    max_steps = spec.max_steps if spec.max_steps is not None else b.max_steps
    # Compiling happens in the first step: a budget without warm-up (CPU budgets) gets one when compiled, so the
    # compile is never charged to the clock.
    warmup_steps = max(b.warmup_steps, 1) if use_compile else b.warmup_steps
    if spec.tensorboard is not None:
        live.check_tensorboard()

    if master:
        dataset = resolve_dataset(b.dataset, spec.data_root, spec.data_dir, spec.tokenizer, log=log,
                                  form=spec.variant.data)
    if distributed:
        dist.barrier()  # rank 0 builds a missing embedded corpus once; the others then find it cached
    if not master:
        dataset = resolve_dataset(b.dataset, spec.data_root, spec.data_dir, spec.tokenizer, log=log,
                                  form=spec.variant.data)
    if dataset.tokenizer.vocab_size != c.vocab_size:
        raise UserError(f"tokenizer/vocab mismatch: dataset {dataset.name!r} has a {dataset.tokenizer.vocab_size}-"
                        f"token vocabulary but the model has --vocab-size {c.vocab_size}; "
                        f"pass --vocab-size {dataset.tokenizer.vocab_size}")
    check_shard_lengths(dataset, b.seq_len)
    EvalScheme(**eval_scheme(c, b.eval_seconds_limit)).check(b.seq_len)  # refused now, not after training
    guard.protect(spec.data_root or default_data_root(), dataset.directory)  # the harness reads data for a model
    if spec.preflight:
        log(f"preflight: the conformance checks on a small CPU copy of {spec.variant.name} …")
    preflight = preflight_checks(spec)
    technique_proof = (technique_proof_of(spec.variant, c, spec.techniques, {"tables": dataset.tokenizer.tables})
                       if spec.techniques else None)
    accumulation = plan_accumulation(b.tokens_per_step, b.micro_batch_tokens, b.seq_len, world_size)
    val = load_validation(dataset.val_files, b.seq_len, b.val_tokens_cap, dataset.tokenizer.tables)
    val_batch_tokens = b.tokens_per_step // (world_size * accumulation)
    if dataset.source is not None:  # the byte form: the source's bytes, cut into other sequences than its tokens
        from harness.data.bytes import coverage

        byte_form = coverage(dataset, b.seq_len, b.val_tokens_cap, val.target_bytes)

    def new_loader() -> DistributedTokenLoader:
        return DistributedTokenLoader(dataset.train_files, rank, world_size, device, c.vocab_size)

    loader = new_loader()  # opens (and checks) the first training shard before anything is recorded

    model = build_model(spec.variant, c, spec.seed, device, scheme, b.build_seconds_limit)
    context = {"tables": dataset.tokenizer.tables}
    stack = techniques.TechniqueStack(spec.techniques, model, c, context).to(device) if spec.techniques else None
    scored = ScoredModel(model, stack).to(device)
    param_count = sum(p.numel() for p in model.parameters())
    stored_param_count = artifact.stored_numel(hooks.exported_state(model))
    code_files = artifact.model_source_files(model, spec.variant.source_file)
    code_files += sorted({Path(tech.source_file) for tech, _ in spec.techniques} - set(code_files))  # training code
    guard.add_plugin_files(*(p for p in code_files if not p.is_relative_to(integrity.HARNESS_DIR)))
    flops_key = stable_hash({"code": [p.read_text() for p in code_files], "config": as_dict(c), "seq_len": b.seq_len,
                             "tokens_per_step": b.tokens_per_step, "precision": scheme,
                             "torch": torch.__version__, "device": device.type})
    flops_cache = (spec.data_root or default_data_root()) / "cache" / "flops.json"
    flops_per_token = hardware.count_train_flops_per_token(scored, c.vocab_size, b.seq_len, device,
                                                           flops_cache, flops_key, b.tokens_per_step, autocast_dtype)
    attention_found = attention.probe(model, c.vocab_size, b.seq_len, device, autocast_dtype)
    attention_kernel = attention.pin(device, attention_found)
    compilation.start(use_compile, stack.recompiles if stack is not None else 0)
    optimizers, muon = build_optimizers(
        model, c, fused=device.type == "cuda", muon_dtype=autocast_dtype or torch.float32,
        orthogonalize=compilation.compile_newton_schulz() if use_compile else zeropower_via_newtonschulz5)
    if stack is not None and stack.trainable():  # the techniques' own heads: Adam, not exported
        extra = torch.optim.Adam(stack.trainable(), lr=c.scalar_lr, betas=(c.beta1, c.beta2), eps=c.adam_eps,
                                 fused=device.type == "cuda")
        extra.param_groups[0]["base_lr"] = c.scalar_lr
        optimizers.append(extra)
    compiled, trainer = wrap_for_training(scored, model, use_compile, fullgraph, world_size, device, local_rank)
    qat = LateQAT(model, c.export, c.late_qat) if c.late_qat > 0 else None

    config_hash = spec.config_hash()
    run_id = spec.run_id or new_run_id(spec.label(), b.name, spec.seed, config_hash)
    if distributed:
        shared = [run_id]
        dist.broadcast_object_list(shared, src=0)
        run_id = shared[0]
    run_dir = Path(spec.results_dir or default_results_dir()) / run_id
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "run_id": run_id, "config_hash": config_hash, "status": "running",
        "variant": spec.variant.name, "preset": spec.preset, "config": as_dict(c), "seed": spec.seed,
        "budget_name": b.name, "budget": b.to_dict(), "command": spec.command, "note": spec.note,
        "sweep": spec.sweep, "study": spec.study,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **hardware.git_state(),
        "environment": hardware.environment(device, world_size),
        "hardware_matches_budget": device.type == b.device and world_size == b.device_count,
        "dataset": dataset.name, "dataset_hash": dataset.content_hash, "tokenizer": dataset.tokenizer.name,
        "tokenizer_hash": dataset.tokenizer.content_hash, "tokenizer_check": dataset.tokenizer_check,
        "val_tokens": val.target_tokens,
        "val_bytes": val.target_bytes, "tokens_per_byte": val.target_tokens / val.target_bytes,
        "world_size": world_size, "grad_accumulation": accumulation, "compiled": use_compile,
        "warmup_steps": warmup_steps,
        "precision": scheme, "attention": {"kernel": attention_kernel, **attention_found}, "preflight": preflight,
        "techniques": spec.technique_record(), "technique_proof": technique_proof,
        "overrides": spec.overrides(world_size),
        "param_count": param_count, "stored_param_count": stored_param_count,
        "model_flops_per_token": flops_per_token, "variant_sha256": spec.variant.source_sha256,
    }
    if getattr(dataset, "text_hash", None):  # the same text in another tokenization shares its leaderboard
        record["dataset_text_hash"] = dataset.text_hash
    if "entropy_bits_per_byte" in dataset.meta:
        record["dataset_entropy_bits_per_byte"] = dataset.meta["entropy_bits_per_byte"]
    if dataset.source is not None:
        record["byte_form"] = byte_form
    if spec.resume:  # the first attempt's start and every resumption stay in the record
        first = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        record.update(started_at=first["started_at"], resumed=first.get("resumed", []))
    if master:
        if run_dir.exists() and not spec.resume:
            raise UserError(f"results directory {run_dir} already exists; choose another --run-id")
        run_dir.mkdir(parents=True, exist_ok=spec.resume)
        log.open(run_dir / "log.txt")
        write_json_atomic(run_dir / "run.json", record)
    progress_view = live.LiveRecord(run_dir, record, master, max_steps, b.train_wallclock_seconds, spec.tensorboard)
    log(f"run {run_id}: {spec.variant.name}{':' + spec.preset if spec.preset else ''} under {b.name} | "
        f"{param_count:,} params | {device.type}×{world_size} accum {accumulation} | dataset {dataset.name} "
        f"(val {val.target_tokens:,} tokens) | seed {spec.seed} | compile {use_compile}")
    if dataset.source is not None:
        log(f"byte form of {dataset.source.name}: scores {val.target_bytes:,} of its "
            f"{byte_form['val_bytes_in_split']:,} validation bytes; a token model on it at seq_len {b.seq_len} "
            f"scores {byte_form['source_val_bytes_scored']:,}")
    log(f"command: {' '.join(spec.command)}", console=False)
    if spec.note:
        log(f"note: {spec.note}", console=False)
    log(f"environment: {record['environment']}", console=False)

    curve: list[dict] = []
    status, diverged_step, failure = "running", None, None
    training_ms, step, val_seconds_in_training = 0.0, 0, 0.0
    cap_ms = 1000.0 * b.train_wallclock_seconds

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def lr_scale(step: int, elapsed_ms: float) -> float:
        return warmdown_scale(step, elapsed_ms, cap_ms, max_steps, c.warmdown_steps, c.min_lr)

    def train_step(step: int, elapsed_ms: float) -> tuple[torch.Tensor, float, torch.Tensor]:
        """One optimizer step; (mean training loss, the LR multiplier applied, the global gradient norm before
        clipping), the tensors left on the device for the step's one fetch."""
        progress = min(1.0, max(elapsed_ms / cap_ms, step / max_steps))  # how far training is, 0 → 1
        if stack is not None:
            stack.start_step(model, step, progress)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        scale = lr_scale(step, elapsed_ms)
        if stack is not None:
            scale = stack.lr_scale(scale, step, progress)
        quantised = qat is not None and qat.active(scale)
        if quantised:  # forward and backward on the exported weights; the update goes to the full-precision ones
            qat.quantise()
        batches = (loader.next_batch(b.tokens_per_step, b.seq_len, accumulation) for _ in range(accumulation))
        train_loss = accumulate(trainer, model, batches, accumulation, world_size, device, autocast_dtype)
        if quantised:
            qat.restore()
        if stack is not None:
            stack.after_backward(model)
        frac = min(step / c.muon_momentum_warmup_steps, 1.0) if c.muon_momentum_warmup_steps > 0 else 1.0
        for group in muon.param_groups:
            group["momentum"] = (1 - frac) * c.muon_momentum_warmup_start + frac * c.muon_momentum
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * scale
        # The norm is computed either way (one pass over the gradients, no sync): it travels with the loss.
        if c.grad_clip_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip_norm)
        else:  # the list of gradients is only needed here
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=device)
        for opt in optimizers:
            opt.step()
        if stack is not None:
            stack.after_step(model, step)
        return train_loss, scale, grad_norm

    def validate() -> tuple[float, float]:
        return evaluate(compiled, val, val_batch_tokens, rank, world_size, device, autocast_dtype)

    fractions = sorted(spec.report_fractions)

    def should_prune(fraction: float, val_bpb: float, step: int) -> float | None:
        """Report at the last report point passed; rank 0 decides and every rank follows. Returns the
        report point when the run is to stop."""
        at = [f for f in fractions if f <= fraction][-1]
        del fractions[:fractions.index(at) + 1]
        decision = torch.tensor([float(master and spec.on_report is not None and spec.on_report(at, val_bpb, step))],
                                device=device)
        if distributed:
            dist.broadcast(decision, src=0)
        return at if decision.item() else None

    def finish(final_status: str) -> None:
        record["status"] = final_status
        record["compile"] = compilation.stats(use_compile, fullgraph)
        if master:
            record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            record["wallclock_seconds_total"] = time.perf_counter() - t_start
            record["outside_training_fraction"] = 1 - record.get("train_seconds", 0.0) / record[
                "wallclock_seconds_total"]
            write_json_atomic(run_dir / "run.json", record)
            progress_view.close()  # appended as it went; now written whole, the source of truth
            if curve:
                write_curve(run_dir / "curve.jsonl", curve)
            progress_view.final(record)
            if final_status != "interrupted":  # finished: the clock is spent, nothing to resume
                (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)

    def failed(exc: BaseException) -> RunFailed:
        """Record the run as failed with its reason, then the one-line error to raise; a record that cannot be
        written (a full disk) is said in that line, and the run's log keeps the traceback."""
        refused = guard.refused_path(exc)
        explained = (str(exc) if isinstance(exc, sealed.SealedFailure) else
                     f"the model opened {refused}" if refused else compilation.explain(exc))
        record["error"] = explained or f"{type(exc).__name__}: {exc}"
        reason = record["error"].strip().splitlines()[0] if record["error"].strip() else type(exc).__name__
        try:
            finish("failed")
            where = f"record and log in {run_dir}"
        except OSError as write_error:
            where = f"and its record could not be updated: {write_error.strerror}; log in {run_dir}"
        return RunFailed(f"run {run_id} failed: {reason} ({where})", explained=explained is not None)

    try:
        # ------------------------------------------------------------------ WARM-UP (untimed, undone)
        record["calibration"] = {"before": hardware.calibrate(device)}  # how fast this machine is now (off the clock)
        t_warm = time.perf_counter()
        record["setup_seconds"] = t_warm - t_start
        if warmup_steps > 0:
            initial_model = {k: v.detach().clone() for k, v in scored.state_dict().items()}
            initial_opts = [copy.deepcopy(opt.state_dict()) for opt in optimizers]
            log(f"warm-up: {warmup_steps} steps, undone after"
                + (" (compiling the model and Newton–Schulz in the first; minutes on a cold cache)" if use_compile
                   else ""))
            said = time.perf_counter()
            for i in range(warmup_steps):
                train_step(i, 0.0)
                if time.perf_counter() - said >= live.REFRESH_SECONDS and i + 1 < warmup_steps:
                    sync()
                    log(f"warm-up: step {i + 1}/{warmup_steps} done, {time.perf_counter() - t_warm:.1f}s")
                    said = time.perf_counter()
            scored.load_state_dict(initial_model)
            for opt, state in zip(optimizers, initial_opts):
                opt.load_state_dict(state)
            loader = new_loader()
            if qat is not None:
                qat.steps = 0  # the undone warm-up's do not count
        sync()
        record["warmup_seconds"] = time.perf_counter() - t_warm
        log(f"warm-up: {warmup_steps} steps in {record['warmup_seconds']:.1f}s (not charged; state restored)")
        if spec.resume:
            progress = checkpoint.load(run_dir / CHECKPOINT_FILE, scored, optimizers, loader)  # with techniques
            step, training_ms, curve = progress["step"], progress["training_ms"], progress["curve"]
            val_seconds_in_training = progress["val_seconds_in_training"]
            record["resumed"].append({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "step": step,
                                      "train_seconds": training_ms / 1000.0})
            log(f"resumed at step {step} with {max(cap_ms - training_ms, 0) / 1000:.1f}s of the clock left")

        # ------------------------------------------------------------------ TRAIN LOOP (timed)
        next_log_ms = (training_ms // (1000.0 * b.log_every_seconds) + 1) * 1000.0 * b.log_every_seconds
        next_val_ms = ((training_ms // (1000.0 * b.val_every_seconds) + 1) * 1000.0 * b.val_every_seconds
                       if b.val_every_seconds else math.inf)
        progress_view.start(curve)
        t0 = time.perf_counter()
        while step < max_steps:
            elapsed_ms = training_ms + 1000.0 * (time.perf_counter() - t0)
            train_loss, scale, grad_norm = train_step(step, elapsed_ms)
            step += 1
            elapsed_ms = training_ms + 1000.0 * (time.perf_counter() - t0)
            # One all-reduce per step: the global batch's mean loss, whether any rank hit the cap or is due to
            # validate, the mean fraction of the budget spent, so that every rank takes the same branches, and
            # the gradient norm (the same on every rank: DDP has averaged the gradients).
            fraction = max(elapsed_ms / cap_ms, step / max_steps)
            flags = torch.tensor([float(elapsed_ms >= cap_ms), float(_stop["requested"]),
                                  float(elapsed_ms >= next_val_ms), fraction], device=device)
            shared = torch.cat([train_loss.float().reshape(1), flags, grad_norm.float().reshape(1)])
            if distributed:
                dist.all_reduce(shared)
                shared[0] /= world_size
                shared[4:6] /= world_size
            loss_value, reached_cap, stop_requested, val_timer, fraction, norm = shared.tolist()
            seconds, before = elapsed_ms / 1000.0, curve[-1] if curve else {"seconds": 0.0, "tokens": 0}
            curve.append({"step": step, "seconds": seconds, "tokens": step * b.tokens_per_step,
                          "train_loss": live.finite(loss_value), "lr": muon.param_groups[0]["lr"],
                          "lr_scale": scale, "grad_norm": live.finite(norm),
                          "tokens_per_second": ((step * b.tokens_per_step - before["tokens"]) /
                                                (seconds - before["seconds"]) if seconds > before["seconds"]
                                                else None)})
            if not math.isfinite(loss_value):
                status, diverged_step = "diverged", step
                log(f"step {step}: train loss is {loss_value}; stopping (diverged)")
                break
            done = reached_cap > 0 or step >= max_steps
            if stop_requested > 0 and not done:
                if master:
                    checkpoint.save(run_dir / CHECKPOINT_FILE, scored, optimizers, loader, {
                        "step": step, "training_ms": elapsed_ms, "curve": curve,
                        "val_seconds_in_training": val_seconds_in_training})
                status = "interrupted"
                log(f"stopped at step {step} on request; checkpoint saved, resumable with "
                    f"{(cap_ms - elapsed_ms) / 1000:.1f}s of the clock left")
                break
            if elapsed_ms >= next_log_ms or done or step == 1:
                tps = step * b.tokens_per_step / (elapsed_ms / 1000.0)
                log(f"step {step} | loss {loss_value:.4f} | {tps / 1000:.1f}k tok/s | "
                    f"{elapsed_ms / step:.1f} ms/step | "
                    f"train {elapsed_ms / 1000:.1f}s of {b.train_wallclock_seconds:.0f}s "
                    f"({max(cap_ms - elapsed_ms, 0) / 1000:.1f}s left)")
                next_log_ms = (elapsed_ms // (1000.0 * b.log_every_seconds) + 1) * 1000.0 * b.log_every_seconds
            report_due = bool(fractions) and fraction >= fractions[0]
            if (val_timer > 0 or report_due) and not done:
                sync()
                training_ms += 1000.0 * (time.perf_counter() - t0)  # clock paused during validation
                t_val = time.perf_counter()
                val_loss, val_bpb = validate()
                val_seconds_in_training += time.perf_counter() - t_val
                curve[-1].update(val_loss=val_loss, val_bpb=val_bpb)
                log(f"step {step} | val_loss {val_loss:.4f} | val_bpb {val_bpb:.4f}")
                progress_view.validated(step, val_bpb)
                progress_view.refresh()
                if b.val_every_seconds:
                    next_val_ms = (training_ms // (1000.0 * b.val_every_seconds) + 1) * 1000.0 * b.val_every_seconds
                sync()
                t0 = time.perf_counter()
                if report_due and (at := should_prune(fraction, val_bpb, step)) is not None:
                    status = "pruned"  # `at`: the report point judged; `spent`: how much of the budget was used
                    record["pruned_at"] = {"fraction": at, "spent": round(fraction, 4), "step": step,
                                           "val_bpb": val_bpb}
                    log(f"step {step}: pruned at the {at:.0%} report ({fraction:.1%} of the budget spent, "
                        f"val_bpb {val_bpb:.4f})")
                    break
            if done:
                break
            progress_view.step_done()
        sync()
        training_ms += 1000.0 * (time.perf_counter() - t0)
    except KeyboardInterrupt:
        status = "interrupted"
        log(f"interrupted at step {step}; writing what the run produced")
    except Exception as exc:
        status, failure = "failed", exc
        log(traceback.format_exc(), console=False)  # the CLI prints one line; --debug shows this too
    if status in ("interrupted", "failed") and step and curve:
        training_ms = 1000.0 * curve[-1]["seconds"]  # the clock as of the last completed step
    if status != "interrupted":
        record["calibration"]["after"] = hardware.calibrate(device)

    record.update(steps=step, tokens_seen=step * b.tokens_per_step, train_seconds=training_ms / 1000.0,
                  ms_per_step=training_ms / step if step and training_ms else None,
                  tokens_per_second=(step * b.tokens_per_step / (training_ms / 1000.0)
                                     if step and training_ms else None),
                  curve=thin_curve(curve), diverged_step=diverged_step, error=None,
                  val_seconds_in_training=val_seconds_in_training, peak_memory_bytes=hardware.peak_memory_bytes(device))
    peak = hardware.peak_flops(device)
    record["mfu"] = (flops_per_token * record["tokens_per_second"] / (peak * world_size)
                     if peak and record["tokens_per_second"] else None)
    if status in ("diverged", "pruned"):
        finish(status)
        return record
    if status == "failed":
        raise failed(failure) from failure

    try:
        # ------------------------------------------------------------------ FINAL EVAL
        if stack is not None:  # the weights the run exports (e.g. an average), before they are scored
            stack.finish(model)
        if status == "running":
            log(f"final validation: scoring {val.target_tokens:,} tokens …")
            t_eval = time.perf_counter()
            record["val_loss"], record["val_bpb"] = validate()
            sync()
            record["eval_seconds"] = time.perf_counter() - t_eval
            record["variant_metrics"] = hooks.metrics(model)
            log(f"final: val_loss {record['val_loss']:.4f} | val_bpb {record['val_bpb']:.4f} | "
                f"{record['eval_seconds']:.1f}s")

        # ------------------------------------------------------------------ EXPORT + ROUND TRIP
        if spec.keep_weights and master:  # the weights before any export, so other schemes can be tried on them
            buf = io.BytesIO()
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
            write_atomic(run_dir / "weights.pt", buf.getvalue())
        t_export = time.perf_counter()
        hessians, state = None, hooks.exported_state(model)
        if artifact.needs_hessians(c.export):  # inputs of the weights from training batches (never validation)
            log(f"export: calibrating {c.export} on {c.export_calibration_batches} training batches …")
            calibration = new_loader()
            hessians = artifact.collect_hessians(
                model, (calibration.next_batch(b.tokens_per_step, b.seq_len, accumulation)[0]
                        for _ in range(c.export_calibration_batches)), set(state))
        log(f"export: compressing the weights ({c.export}) …")
        blob = artifact.compress(state, c.export, hessians)
        record["export_seconds"] = time.perf_counter() - t_export
        log(f"export: {len(blob):,} bytes in {record['export_seconds']:.1f}s")
        if qat is not None:
            record["late_qat_steps"] = qat.steps
        script = submission_script_size(spec, code_files)
        size = artifact.measure(blob, code_files, b.code_bytes, script)
        if master:
            write_atomic(run_dir / "model.int8.ptz", blob)
        record.update(artifact_model_bytes=size.model_bytes, artifact_code_bytes=size.code_bytes,
                      artifact_total_bytes=size.total_bytes, artifact_cap_bytes=b.artifact_cap_bytes,
                      artifact_code_counted=size.code_counted, artifact_model_code_bytes=size.model_code_bytes,
                      artifact_submission_code_bytes=size.submission_code_bytes,
                      artifact_code_files=[os.path.relpath(p, harness.REPO_ROOT) for p in size.code_files])
        if status == "running":
            # The score of record comes from a sealed process that rebuilds the model from the artifact alone
            # (harness/sealed.py). The trained model, with the artifact's weights loaded, gives the probe logits
            # that rebuild must match: a model that kept anything outside the artifact fails here.
            restored = artifact.restore(spec.variant.construct, c, blob)
            artifact.copy_tensors(model, restored)
            problem = None
            if master:
                changed = integrity.verify()
                if changed:
                    raise sealed.SealedFailure(f"the plugin changed the harness in memory ({'; '.join(changed[:3])});"
                                               f" a variant may only define its model")
                log("round trip: scoring the artifact in a sealed process …")
                probe = val.tokens[:min(2, val.num_sequences) * b.seq_len].long().view(-1, b.seq_len).to(device)
                result = sealed.round_trip(
                    spec.variant, c, blob, code_files, counted=b.code_bytes, script_bytes=script[0], device=device,
                    precision=scheme,
                    probe_tokens=probe, probe_logits=sealed.probe_logits(model, probe),
                    validation=sealed.Validation(tuple(str(f) for f in dataset.val_files), b.seq_len,
                                                 b.val_tokens_cap, dataset.tokenizer.tables, val_batch_tokens,
                                                 eval_scheme(c, b.eval_seconds_limit)),
                    timeout=max(600.0, 4 * b.eval_seconds_limit))
                record.update(val_loss_post_quant=result["val_loss"], val_bpb_post_quant=result["val_bpb"],
                              eval_seconds_post_quant=result["eval_seconds"], variant_sha256=result["variant_sha256"],
                              code_sha256=result["code_sha256"], artifact_model_bytes=result["model_bytes"],
                              artifact_code_bytes=result["code_bytes"],
                              artifact_total_bytes=result["model_bytes"] + result["code_bytes"],
                              artifact_model_code_bytes=result["model_code_bytes"],
                              artifact_submission_code_bytes=result["submission_code_bytes"],
                              sealed={k: result[k] for k in ("probe_diff", "probe_scale", "seconds", "eval_seconds")},
                              eval_scheme=result["eval_scheme"])
                if "val_bpb_post_quant_standard" in result:  # the scheme's score beside the plain windows'
                    record.update(val_loss_post_quant_standard=result["val_loss_post_quant_standard"],
                                  val_bpb_post_quant_standard=result["val_bpb_post_quant_standard"])
                problem = sealed.probe_mismatch(result)
                if problem:
                    hidden = artifact.differing_unstored(model, restored)
                    problem += f"; tensors outside it that differ: {', '.join(hidden[:3])}" if hidden else ""
            if distributed:  # every rank follows rank 0's verdict
                verdict = torch.tensor([float(problem is not None)], device=device)
                dist.broadcast(verdict, src=0)
                problem = problem or ("the sealed round trip failed on rank 0" if verdict.item() else None)
            if problem:
                raise sealed.SealedFailure(problem)
            if master:
                log(f"sealed round trip: val_loss {record['val_loss_post_quant']:.4f} | "
                    f"val_bpb {record['val_bpb_post_quant']:.4f} | artifact {record['artifact_total_bytes']:,} bytes"
                    f" (model {record['artifact_model_bytes']:,} + {size.code_counted} code "
                    f"{record['artifact_code_bytes']:,}; cap {b.artifact_cap_bytes:,}) | logits match the trained "
                    f"model's | {record['sealed']['seconds']:.1f}s")
            scoring_seconds = record["eval_seconds_post_quant" if c.eval != "standard" else "eval_seconds"]
            status = ("over_cap" if record["artifact_total_bytes"] > b.artifact_cap_bytes else
                      "over_eval_limit" if scoring_seconds > b.eval_seconds_limit else "ok")
    except KeyboardInterrupt:
        status = "interrupted"
        log("interrupted during evaluation; writing what the run produced")
    except Exception as exc:
        log(traceback.format_exc(), console=False)
        raise failed(exc) from exc

    # ------------------------------------------------------------------ RECORD
    finish(status)
    log(f"{status}: {run_id} | val_bpb {fmt(record.get('val_bpb_post_quant'))} (pre-quant "
        f"{fmt(record.get('val_bpb'))}) | {step} steps | {fmt(record['ms_per_step'], 1)} ms/step | "
        f"{fmt(record['tokens_per_second'], 0)} tok/s | record {run_dir / 'run.json'}")
    if spec.quiet and master:
        print(f"{status} {run_id} val_bpb={fmt(record.get('val_bpb_post_quant'))}", flush=True)
    if distributed:
        dist.barrier()
    return record


def warmdown_scale(step: int, elapsed_ms: float, cap_ms: float, max_steps: int, warmdown_steps: int,
                   min_lr: float = 0.0) -> float:
    """The LR multiplier: flat, then linear decay over the last warmdown_steps to 0, or to the min_lr floor; the
    decay's start is predicted from the step time so that it ends at the clock's cap (or at the step cap)."""
    if warmdown_steps <= 0:
        return 1.0
    by_clock = (cap_ms - elapsed_ms) / (elapsed_ms / step) if step > 0 and elapsed_ms > 0 else math.inf
    return max(min_lr, min(1.0, min(by_clock, max_steps - step) / warmdown_steps))


def submission_script_size(spec: RunSpec, code_files: list[Path]) -> tuple[int, tuple[Path, ...]]:
    """(bytes, files) of the one self-contained script that reproduces this run, as `export` writes it
    (harness/submission.py): the code bytes a submission of it would count."""
    from harness import submission  # the exported script carries this module's code as its runner, not as an import

    files = submission.bundle_files(code_files)
    return len(submission.bundle_script(files, submission.settings_from_spec(spec))), tuple(files)


def eval_scheme(c, time_limit_seconds: float) -> dict:
    """How the score of record is taken (harness/evaluation.py), from the config's eval fields."""
    return {"name": c.eval, "stride": c.eval_stride, "ttt_chunk_tokens": c.ttt_chunk_tokens,
            "ttt_epochs": c.ttt_epochs, "ttt_lr": c.ttt_lr, "ttt_momentum": c.ttt_momentum,
            "time_limit_seconds": time_limit_seconds}


def fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
