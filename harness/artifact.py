"""The artifact that must fit the cap: the challenge's int8 + zlib export of the state dict, plus code bytes.

2-D float tensors get per-row int8 with a 99.99984th-percentile clip and fp16 scales; other large float tensors
per-tensor int8; tensors of ≤ 65,536 elements are kept as fp16 (control tensors such as scales, mixes, gains
and skip weights as fp32); non-float tensors pass through. The object is saved with torch.save and compressed
with zlib level 9, as in parameter-golf's train_gpt.py, so byte counts are comparable. Loading back uses
torch.load(weights_only=True): plain tensors and containers only, never arbitrary pickled objects.

Variant-owned storage: a model's `export_tensors` hook (harness/hooks.py) may name tensors that a storage codec
below stores instead of int8, losslessly: the exported state is then a CodedState, a dict that also maps those
keys to their codec. Their encodings go under "coded" in the same saved object, so the same zlib stream and the
same byte count hold them; decompress decodes them, and the rebuilt model loads what the trained one exported.
Codecs: "ternary", a tensor whose values are all in {−a, 0, +a}, stored as five base-3 digits a byte (1.6 bits
a number) plus a as one fp32 scale. A state without codecs is saved exactly as before, byte for byte.
"""

from __future__ import annotations

import ast
import functools
import inspect
import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from harness.model import CONTROL_TENSOR_PATTERNS

TORCH_DIR = Path(torch.__file__).resolve().parent
KEEP_FLOAT_MAX_NUMEL = 65_536
CLIP_QUANTILE = 99.99984 / 100.0
FORMAT = "int8_clean_per_row_v1"


def _quantize(t: Tensor) -> tuple[Tensor, Tensor]:
    t32 = t.float()
    if t32.ndim == 2:
        clip = torch.quantile(t32.abs(), CLIP_QUANTILE, dim=1) if t32.numel() else torch.empty(t32.shape[0])
        clipped = torch.maximum(torch.minimum(t32, clip[:, None]), -clip[:, None])
        scale = (clip / 127.0).clamp_min(1.0 / 127.0)
        q = torch.clamp(torch.round(clipped / scale[:, None]), -127, 127).to(torch.int8)
        return q.contiguous(), scale.to(torch.float16).contiguous()
    flat = t32.abs().flatten()
    clip = float(torch.quantile(flat, CLIP_QUANTILE).item()) if 0 < flat.numel() <= 2**24 else float(
        flat.max().item() if flat.numel() else 0.0)
    scale = torch.tensor(clip / 127.0 if clip > 0 else 1.0, dtype=torch.float32)
    q = torch.clamp(torch.round(torch.clamp(t32, -clip, clip) / scale), -127, 127).to(torch.int8)
    return q.contiguous(), scale


def quantize_state_dict(state: dict[str, Tensor], control_patterns=CONTROL_TENSOR_PATTERNS) -> dict:
    quantized, scales, dtypes, passthrough, orig_dtypes, qmeta = {}, {}, {}, {}, {}, {}
    for name, tensor in state.items():
        t = tensor.detach().to("cpu").contiguous()
        if not t.is_floating_point():
            passthrough[name] = t
        elif t.numel() <= KEEP_FLOAT_MAX_NUMEL:
            if any(p in name for p in control_patterns):
                passthrough[name] = t.float().contiguous()
            else:
                if t.dtype in (torch.float32, torch.bfloat16):
                    orig_dtypes[name] = str(t.dtype).removeprefix("torch.")
                passthrough[name] = t.to(torch.float16).contiguous()
        else:
            q, s = _quantize(t)
            if s.ndim > 0:
                qmeta[name] = {"scheme": "per_row", "axis": 0}
            quantized[name], scales[name] = q, s
            dtypes[name] = str(t.dtype).removeprefix("torch.")
    obj = {"__quant_format__": FORMAT, "quantized": quantized, "scales": scales, "dtypes": dtypes,
           "passthrough": passthrough}
    if qmeta:
        obj["qmeta"] = qmeta
    if orig_dtypes:
        obj["passthrough_orig_dtypes"] = orig_dtypes
    return obj


def dequantize_state_dict(obj: dict) -> dict[str, Tensor]:
    out = {}
    for name, q in obj["quantized"].items():
        dtype = getattr(torch, obj["dtypes"][name])
        s = obj["scales"][name]
        if s.ndim > 0:
            out[name] = (q.float() * s.float().view(q.shape[0], *([1] * (q.ndim - 1)))).to(dtype).contiguous()
        else:
            out[name] = (q.float() * float(s.item())).to(dtype).contiguous()
    orig = obj.get("passthrough_orig_dtypes", {})
    for name, t in obj["passthrough"].items():
        out[name] = t.to(getattr(torch, orig[name])).contiguous() if name in orig else t.contiguous()
    for name, entry in obj.get("coded", {}).items():
        out[name] = CODECS[entry["codec"]][1](entry)
    return out


class CodedState(dict):
    """An exported state dict that also names the tensors a storage codec stores: codecs = {key: codec name}."""

    def __init__(self, state: dict[str, Tensor], codecs: dict[str, str]):
        super().__init__(state)
        unknown = sorted(set(codecs.values()) - set(CODECS))
        if unknown or not set(codecs) <= set(state):
            raise ValueError(f"storage codecs {unknown or sorted(set(codecs) - set(state))[:3]}: unknown codec or "
                             f"a key the state does not hold (codecs: {', '.join(CODECS)})")
        self.codecs = dict(codecs)


TRIT_PLACES = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int32)


def pack_trits(trits: Tensor) -> Tensor:
    """Values in {−1, 0, 1} → uint8, five base-3 digits a byte (3⁵ = 243 ≤ 256), the last byte zero-padded."""
    digits = (trits.detach().cpu().flatten().to(torch.int32) + 1)
    digits = torch.cat((digits, digits.new_zeros(-len(digits) % 5))).view(-1, 5)
    return (digits * TRIT_PLACES).sum(dim=1).to(torch.uint8)


def unpack_trits(packed: Tensor, count: int) -> Tensor:
    """pack_trits inverted: the first `count` trits, as int8 values in {−1, 0, 1}."""
    digits = packed.to(torch.int32)[:, None] // TRIT_PLACES % 3
    return (digits.flatten()[:count] - 1).to(torch.int8)


def _encode_ternary(name: str, t: Tensor) -> dict:
    t = t.detach().to("cpu").contiguous()
    scale = t.float().abs().max() if t.numel() else torch.zeros(())
    trits = (t.float() / scale).round() if scale > 0 else torch.zeros(t.shape)
    if not torch.equal((trits * scale).to(t.dtype), t):
        raise ValueError(f"{name} is not ternary (values other than 0 and ±{float(scale):g}): the ternary codec "
                         f"stores only such tensors")
    return {"codec": "ternary", "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
            "trits": pack_trits(trits), "scale": scale.float().reshape(())}


def _decode_ternary(entry: dict) -> Tensor:
    count = 1
    for n in entry["shape"]:
        count *= n
    trits = unpack_trits(entry["trits"], count).view(entry["shape"])
    return (trits.float() * entry["scale"]).to(getattr(torch, entry["dtype"])).contiguous()


CODECS = {"ternary": (_encode_ternary, _decode_ternary)}  # name → (encode(key, tensor), decode(entry))


def encode_state_dict(state: dict[str, Tensor]) -> dict:
    """The object torch.save writes: quantize_state_dict's, plus "coded" for a CodedState's codec tensors."""
    codecs = getattr(state, "codecs", {})
    obj = quantize_state_dict({k: v for k, v in state.items() if k not in codecs})
    if codecs:
        obj["coded"] = {k: CODECS[codec][0](k, state[k]) for k, codec in codecs.items()}
    return obj


def compress(state: dict[str, Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save(encode_state_dict(state), buf)
    return zlib.compress(buf.getvalue(), level=9)


def decompress(blob: bytes) -> dict[str, Tensor]:
    return dequantize_state_dict(torch.load(io.BytesIO(zlib.decompress(blob)), map_location="cpu",
                                            weights_only=True))


def restore(build, config, blob: bytes) -> nn.Module:
    """A new model built from the config under a different RNG state and loaded from the artifact alone.

    Anything the artifact does not hold must be rebuilt from the config (a stored seed), or it comes out
    different here and the round-trip score shows it. Declared training-only tensors may be missing.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0x5EED_0F_A17)
        model = build(config)
    state = decompress(blob)
    result = model.load_state_dict(state, strict=False)
    drop = tuple(getattr(model, "training_only", ()))
    missing = [k for k in result.missing_keys if not (drop and k.startswith(drop))]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"artifact does not match the model: missing {missing[:5]}, "
                           f"unexpected {result.unexpected_keys[:5]}")
    return model


@torch.no_grad()
def copy_tensors(dst: nn.Module, src: nn.Module) -> None:
    """Copy every parameter and buffer, persistent or not, from src into dst (same architecture, any device)."""
    src_tensors = {**dict(src.named_parameters()), **dict(src.named_buffers())}
    for name, t in [*dst.named_parameters(), *dst.named_buffers()]:
        t.copy_(src_tensors[name])
    dst.train(dst.training)  # drops weights cached from the old values


def unstored_tensors(model: nn.Module) -> dict[str, Tensor]:
    """Tensors the model holds that no artifact can: plain tensor attributes and non-persistent buffers."""
    out = {}
    for prefix, module in model.named_modules():
        held = [(attr, v) for attr, v in vars(module).items()
                if isinstance(v, Tensor) and not isinstance(v, nn.Parameter)]
        held += [(name, module._buffers[name]) for name in module._non_persistent_buffers_set
                 if module._buffers.get(name) is not None]
        out.update((f"{prefix}.{attr}" if prefix else attr, value) for attr, value in held)
    return out


def differing_unstored(a: nn.Module, b: nn.Module) -> list[str]:
    """Names of the unstored tensors (above) that differ between two models of the same architecture."""
    theirs = unstored_tensors(b)
    names = []
    for name, t in unstored_tensors(a).items():
        other = theirs.get(name)
        if other is None or other.shape != t.shape or not torch.equal(other.detach().cpu(), t.detach().cpu()):
            names.append(name)
    return names


def stored_numel(state: dict[str, Tensor]) -> int:
    """Numbers the artifact stores: every element of every floating-point tensor it holds."""
    return sum(t.numel() for t in state.values() if t.is_floating_point())


def model_source_files(model: nn.Module, variant_file: Path | None) -> list[Path]:
    """The source that defines the model: the variant file, every module defining a class in the model, and
    every module those import that is not the standard library, an installed package or the harness's trainer
    (a helper module beside a variant holds model code as much as the variant file does)."""
    files = {Path(variant_file).resolve()} if variant_file else set()
    for module in model.modules():
        src = inspect.getsourcefile(type(module))
        if src and not Path(src).resolve().is_relative_to(TORCH_DIR):
            files.add(Path(src).resolve())
    return sorted(files | {f for path in files for f in imported_files(path)})


@functools.cache
def _outside_roots() -> tuple[Path, ...]:
    import sysconfig

    paths = sysconfig.get_paths()
    return tuple({Path(paths[k]).resolve() for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths})


def imported_files(path: Path) -> set[Path]:
    """Source files of the modules `path` imports, anywhere in it, transitively, that are the user's code: not
    the standard library, not an installed package (an editable install of this repository aside: its harness
    modules are the trainer's, counted as such) and not compiled extensions."""
    import importlib.util
    import sys

    harness_dir = Path(__file__).resolve().parent
    seen: set[Path] = set()
    todo = [Path(path).resolve()]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            tree = ast.parse(current.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.ImportFrom) and node.level > 0:  # from . import x / from .m import y
                base = current.parent
                for _ in range(node.level - 1):
                    base = base.parent
                stems = [node.module] if node.module else [a.name for a in node.names]
                todo += [p for stem in stems for p in (base.joinpath(*stem.split(".")).with_suffix(".py"),
                                                       base.joinpath(*stem.split("."), "__init__.py")) if p.is_file()]
                continue
            else:
                continue
            for name in names:
                module = sys.modules.get(name)
                origin = getattr(module, "__file__", None)
                if origin is None and module is None and "." not in name:
                    try:
                        spec = importlib.util.find_spec(name)
                    except (ImportError, ValueError):
                        spec = None
                    origin = spec.origin if spec is not None and spec.has_location else None
                if not origin or not origin.endswith(".py"):
                    continue
                file = Path(origin).resolve()
                if (file.is_relative_to(harness_dir) or file.is_relative_to(TORCH_DIR)
                        or any(file.is_relative_to(root) for root in _outside_roots())):
                    continue
                todo.append(file)
    seen.discard(Path(path).resolve())
    return seen


@functools.cache
def trainer_source_files() -> tuple[Path, ...]:
    """The harness modules a run needs to train and score a model: harness/train.py and everything it imports at
    module level, transitively (read from the source, not from what happens to be loaded)."""
    root = Path(__file__).resolve().parent.parent
    seen: set[Path] = set()
    todo = [root / "harness" / "train.py"]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            for name in names:
                if name.split(".")[0] == "harness":
                    base = root.joinpath(*name.split("."))
                    todo += [p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()]
    return tuple(sorted(seen))


CODE_COUNTS = ("submission", "model")


@dataclass(frozen=True)
class ArtifactSize:
    model_bytes: int
    code_bytes: int                # the figure the cap checks: model_code_bytes or submission_code_bytes
    code_files: tuple[str, ...]    # the files behind code_bytes
    model_code_bytes: int          # the files that define the model (the variant's and the classes it uses)
    submission_code_bytes: int     # those plus the harness modules that train and score it
    code_counted: str = "submission"

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.code_bytes


def measure(blob: bytes, model_files: list[Path], counted: str = "submission") -> ArtifactSize:
    """Bytes of the artifact and of its code. The challenge counts its whole training script (train_gpt.py,
    47,642 bytes for the baseline), so `submission` counts the model's files and the harness's trainer, the
    nearest equivalent; `model` counts only the files that define the model."""
    if counted not in CODE_COUNTS:
        raise ValueError(f"code bytes count {counted!r}, not one of {CODE_COUNTS}")
    model_files = sorted({Path(p).resolve() for p in model_files})
    submission = sorted(set(model_files) | set(trainer_source_files()))

    def size(files) -> int:
        return sum(len(p.read_bytes()) for p in files)

    files = submission if counted == "submission" else model_files
    return ArtifactSize(len(blob), size(files), tuple(str(p) for p in files), size(model_files), size(submission),
                        counted)
