"""Which scaled-dot-product attention kernel a run uses: flash pinned on CUDA, as train_gpt.py does, and a
recorded fallback where a variant's shapes cannot use it.

One eager forward is watched (a TorchFunctionMode sees every F.scaled_dot_product_attention call, so a variant
needs no cooperation). On CUDA PyTorch itself says whether flash can run each call; elsewhere the same rules
are applied to the shapes, so a CPU run already tells whether the family would fall back on a GPU. If every
call can use flash, flash alone is enabled, as in the challenge; otherwise the efficient and math kernels are
enabled beside it for the calls flash cannot take, and the record says so instead of hiding it.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

FLASH_MAX_HEAD_DIM = 256


def flash_blockers(query: Tensor, key: Tensor, value: Tensor, attn_mask=None, dropout_p: float = 0.0,
                   is_causal: bool = False, scale=None, enable_gqa: bool = False) -> list[str]:
    """Why flash attention cannot run this call on a GPU (empty: it can), judged from shapes and arguments."""
    if query.is_cuda:
        from torch.backends.cuda import SDPAParams, can_use_flash_attention

        dtype = torch.bfloat16 if query.dtype == torch.float32 else query.dtype  # autocast makes them bf16
        params = SDPAParams(query.to(dtype), key.to(dtype), value.to(dtype), attn_mask, dropout_p, is_causal,
                            enable_gqa)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if can_use_flash_attention(params, True):
                return []
        return [str(w.message).split("(Triggered internally")[0].strip() for w in caught] or ["flash unavailable"]
    problems = []
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        problems.append(f"inputs are {query.dim()}-D, flash takes 4-D (batch, heads, seq, head dim)")
    dims = (query.size(-1), key.size(-1), value.size(-1))
    if len(set(dims)) > 1 or dims[0] > FLASH_MAX_HEAD_DIM:
        problems.append(f"head dims q {dims[0]}, k {dims[1]}, v {dims[2]}: flash needs them equal and at most "
                        f"{FLASH_MAX_HEAD_DIM}")
    if attn_mask is not None:
        problems.append("an explicit attn_mask (flash takes only is_causal)")
    if is_causal and query.dim() == 4 and key.dim() == 4 and query.size(-2) != key.size(-2):
        problems.append(f"causal with {query.size(-2)} queries and {key.size(-2)} keys")
    return problems


class _WatchAttention(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls: list[list[str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.calls.append(flash_blockers(*args, **kwargs))
        return func(*args, **kwargs)


@torch.no_grad()
def probe(model: nn.Module, vocab_size: int, seq_len: int, device: torch.device,
          autocast_dtype: torch.dtype | None) -> dict:
    """Watch one forward of one sequence: how many attention calls, how many flash can take, and why not."""
    from harness.metric import autocast

    x = torch.randint(0, vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    model.eval()
    watch = _WatchAttention()
    with watch, autocast(device, autocast_dtype):
        model(x)
    model.train(was_training)
    reasons: dict[str, int] = {}
    for blockers in watch.calls:
        for reason in blockers:
            reasons[reason] = reasons.get(reason, 0) + 1
    flash_calls = sum(1 for blockers in watch.calls if not blockers)
    return {"calls": len(watch.calls), "flash_calls": flash_calls,
            "fallback_reasons": [f"{reason} (×{n})" for reason, n in reasons.items()],
            "checked_by": "torch" if device.type == "cuda" else "shape rules"}


def pin(device: torch.device, found: dict) -> str:
    """Enable the kernels the run may use; returns the record's name for them."""
    if device.type != "cuda":
        return "cpu (PyTorch's choice)" if found["calls"] else "none"
    from torch.backends.cuda import enable_cudnn_sdp, enable_flash_sdp, enable_math_sdp, enable_mem_efficient_sdp

    fallback = found["flash_calls"] < found["calls"]
    enable_cudnn_sdp(False)
    enable_flash_sdp(True)
    enable_mem_efficient_sdp(fallback)
    enable_math_sdp(fallback)
    if not found["calls"]:
        return "none"
    return "flash+fallback (efficient, math)" if fallback else "flash"
