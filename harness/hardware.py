"""What the run ran on and how fast it could have gone: environment facts, model FLOPs, device peaks."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils import flop_counter

from harness import REPO_ROOT, hooks
from harness.errors import UserError
from harness.metric import autocast

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' datasheets; MFU is reported only for these devices.
PEAK_BF16_FLOPS = {
    "H100 SXM": 989.4e12, "H100 80GB HBM3": 989.4e12, "H100 PCIe": 756.0e12, "H100 NVL": 835.0e12,
    "H200": 989.4e12, "A100": 312.0e12, "L40S": 362.05e12, "GH200": 989.4e12,
}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in sorted(PEAK_BF16_FLOPS.items(), key=lambda kv: -len(kv[0])):
        if all(part in name for part in key.split()):
            return value
    return None


def _cpu_flash_fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def count_train_flops_per_token(scored: nn.Module, vocab_size: int, seq_len: int, device: torch.device,
                                cache_file: Path | None = None, cache_key: str | None = None,
                                tokens_per_step: int | None = None, autocast_dtype: torch.dtype | None = None) -> int:
    """FLOPs of one forward + backward on one sequence, per token, counted by torch's FlopCounterMode.

    Weights generated once per optimizer step (harness.hooks) are counted once, inside the step hooks, and
    their forward + backward shared out over the step's tokens.

    Attention is counted over the full T×T score matrix (torch's convention on CUDA, mirrored here on CPU),
    so MFU is comparable with the usual 6N + 12·L·T·d accounting. The count depends only on the model's
    code and shape, so it is cached under `cache_key` (entering the counter costs ~2 s of imports).
    """
    cache = _read_json(cache_file) if cache_file and cache_key else {}
    if cache_key in cache:
        return int(cache[cache_key])
    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_fwd,
               aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_bwd}
    # Its own generator: whether the count is cached must not change the global RNG stream of the run.
    x = torch.randint(0, vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    with flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as per_step:
        hooks.begin_step(scored)
    with flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        with autocast(device, autocast_dtype):
            loss, aux = scored(x, x)
        (loss + aux).backward()
    with flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as per_step_backward:
        hooks.end_accumulation(scored, 1)
    scored.zero_grad(set_to_none=True)
    generation = per_step.get_total_flops() + per_step_backward.get_total_flops()
    flops = counter.get_total_flops() // seq_len + generation // (tokens_per_step or seq_len)
    if cache_file and cache_key:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps({**_read_json(cache_file), cache_key: flops}, indent=0))
        os.replace(tmp, cache_file)  # concurrent writers may drop an entry: it is recomputed, never wrong
    return flops


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def calibrate(device: torch.device, repeats: int = 5) -> dict:
    """How fast this machine is right now, off the clock: a fixed matmul and a memory copy on `device` (the
    median of `repeats`), with the system load. Runs of one leaderboard on one kind of machine should agree;
    one far below the others was starved (other jobs, throttling) and its wallclock-bound score is not
    comparable. About 0.3 s on a CPU."""
    cuda = device.type == "cuda"
    n, dtype, copy_numel = (4096, torch.bfloat16, 1 << 28) if cuda else (512, torch.float32, 1 << 23)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device, dtype) for _ in range(2))
    src = torch.randn(copy_numel, generator=g).to(device)
    dst = torch.empty_like(src)
    matmuls = 16 if cuda else 8

    def timed(work) -> float:
        work()  # warm: allocation, kernel selection
        times = []
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            work()
            if cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    def matmul() -> None:
        for _ in range(matmuls):
            torch.mm(a, b)

    matmul_seconds, copy_seconds = timed(matmul), timed(lambda: dst.copy_(src))
    return {"matmul_gflops": round(2 * n**3 * matmuls / matmul_seconds / 1e9, 2),
            "copy_gbps": round(2 * src.numel() * src.element_size() / copy_seconds / 1e9, 2),
            "load_average_1m": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (or their indices)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def worker_env(slot: int, gpus: list[str], devices_per_worker: int = 1) -> dict[str, str]:
    """Environment for the local worker in `slot` (0, 1, ...): its own GPUs, so N one-GPU workers on an N-GPU
    machine do not all land on cuda:0. Workers beyond the GPUs share them round robin. Nothing without GPUs."""
    if not gpus:
        return {}
    n = min(devices_per_worker, len(gpus))
    first = slot * n % len(gpus)
    return {"CUDA_VISIBLE_DEVICES": ",".join(gpus[(first + k) % len(gpus)] for k in range(n))}


def available_memory_bytes(device: torch.device) -> int | None:
    """Memory free for a model on `device` now (CPU: the kernel's MemAvailable), or None where unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


TRAINING_BYTES_PER_PARAMETER = 16  # fp32 weight, gradient and two optimizer moments


def check_model_fits(variant, config, device: torch.device) -> None:
    """Refuse a configuration whose parameters alone, with their gradients and optimizer state, exceed the memory
    free on `device`: sized on the meta device (no memory), so `--model-dim 16384 --num-layers 256` is one line,
    not minutes of swapping or the kernel's out-of-memory killer. A family that cannot build on meta skips it."""
    try:
        with torch.device("meta"):
            numel = sum(p.numel() for p in variant.construct(config).parameters())
    except Exception:
        return
    need, free = numel * TRAINING_BYTES_PER_PARAMETER, available_memory_bytes(device)
    if free is not None and need > free:
        raise UserError(f"this configuration has {numel:,} parameters: {need / 2**30:,.1f} GiB for weights, "
                        f"gradients and optimizer state, more than the {free / 2**30:,.1f} GiB free on {device.type}; "
                        f"make it smaller (--model-dim, --num-layers, ...)")


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def git_state() -> dict:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def environment(device: torch.device, world_size: int) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "hostname": platform.node(), "cpu_count": os.cpu_count(), "device_type": device.type,
            "world_size": world_size, "torch_threads": torch.get_num_threads(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if device.type == "cuda":
        info.update(device_name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    device_count=torch.cuda.device_count())
    else:
        info["device_name"] = platform.processor() or platform.machine()
    return info
