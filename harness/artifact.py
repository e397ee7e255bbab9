"""The artifact that must fit the cap: the state dict exported by a scheme (int8 + zlib by default), plus code bytes.

int8-zlib, the default, is the challenge's export: 2-D float tensors get per-row int8 with a 99.99984th-percentile
clip and fp16 scales (floored at 1/127, as there); other large float tensors per-tensor int8; tensors of ≤ 65,536
elements are kept as fp16 (control tensors such as scales, mixes, gains and skip weights as fp32); non-float
tensors pass through. The object is saved with torch.save and compressed with zlib level 9, as in
parameter-golf's train_gpt.py, so byte counts are comparable. Loading back uses torch.load(weights_only=True):
plain tensors and containers only, never arbitrary pickled objects.

The other export schemes (EXPORT_SCHEMES; a run picks one) follow the records that took the challenge from 1.22
to about 1.06 bpb largely through how the model is stored. They keep every tensor int8-zlib keeps and quantise the
same tensors, but 2-D ones per row to fewer bits (harness/quantize.py: codes in int8 containers, fp16 scales,
no scale floor), and compress harder:
  int6-lzma, int6-zstd  every matrix int6 (codes in [−31, 31]), clip at the row's absmax; xz (preset 9 extreme)
                        or zstd level 22
  gptq-zstd             int6, each row's clip chosen by a search for the least squared error
  gptq-hessian-zstd     int6 by GPTQ against H = XᵀX of the matrix's inputs (collect_hessians: a few batches
                        through the trained model); a matrix without a Hessian takes gptq-zstd's search
  mixed-zstd            by the key's dotted parts: the embedding "tok_emb" (tied to the head) int8, "attn"
                        matrices int6, "mlp" matrices int5 (codes in [−15, 15]), any other matrix int6
Large tensors that are not 2-D take int8-zlib's per-tensor int8 under every scheme. The saved object has
int8-zlib's layout (format "lowbit_per_row_v1", each matrix's bits in its qmeta), so one decoder reads all; the
blob is HEADER + the scheme's name + "\n" + the compressed stream, while an int8-zlib blob stays a bare zlib
stream. decompress recognises the scheme from the blob and refuses a damaged one, or one of a scheme it does not
know, with a ValueError naming what is wrong. fake_quantize gives, for quantisation-aware training, the values the
round trip would give, by the same code (for the gptq schemes, those of the plain int6 clip).

Variant-owned storage: a model's `export_tensors` hook (harness/hooks.py) may name tensors that a storage codec
below stores instead of int8, losslessly, under every scheme: the exported state is then a CodedState, a dict
that also maps those keys to their codec. Their encodings go under "coded" in the same saved object, so the same
compressed stream and the same byte count hold them; decompress decodes them, and the rebuilt model loads what
the trained one exported. Codecs: "ternary", a tensor whose values are all in {−a, 0, +a}, stored as five base-3
digits a byte (1.6 bits a number) plus a as one fp32 scale. A state without codecs is saved exactly as before,
byte for byte.
"""

from __future__ import annotations

import ast
import functools
import inspect
import io
import lzma
import pickle
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import zstandard
from torch import Tensor, nn

from harness import quantize
from harness.errors import UserError
from harness.model import CONTROL_TENSOR_PATTERNS, EXPORT_SCHEMES  # the names, declared with the config

TORCH_DIR = Path(torch.__file__).resolve().parent
KEEP_FLOAT_MAX_NUMEL = 65_536
CLIP_QUANTILE = 99.99984 / 100.0
FORMAT = "int8_clean_per_row_v1"
LOWBIT_FORMAT = "lowbit_per_row_v1"
HEADER = b"golf:"      # + scheme name + b"\n", before the compressed stream of every scheme but int8-zlib
HEADER_MAX_BYTES = 40
ZSTD_LEVEL = 22
LZMA_PRESET = 9 | lzma.PRESET_EXTREME


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


def is_quantized(t: Tensor) -> bool:
    """Whether the export rounds this tensor to integers (every scheme alike): a float tensor over
    KEEP_FLOAT_MAX_NUMEL elements. The rest are kept as fp16 or fp32, or passed through."""
    return t.is_floating_point() and t.numel() > KEEP_FLOAT_MAX_NUMEL


def matrix_bits(scheme: str, name: str) -> int:
    """Bits of a 2-D tensor's codes under a low-bit scheme. mixed-zstd decides by the state-dict key's dotted
    parts: a part "tok_emb" (the embedding, tied to the head) 8, else "attn" 6, else "mlp" 5, else 6."""
    if scheme != "mixed-zstd":
        return 6
    parts = name.split(".")
    return 8 if "tok_emb" in parts else 6 if "attn" in parts else 5 if "mlp" in parts else 6


def quantize_tensor(name: str, t: Tensor, scheme: str, hessian: Tensor | None = None) -> tuple[Tensor, Tensor, dict]:
    """(codes, scales, qmeta entry) of one tensor that is_quantized. int8-zlib, and tensors that are not 2-D
    under every scheme, take the challenge's int8 (_quantize); 2-D tensors under the other schemes take
    harness/quantize.py's per-row codes: plain clip (int6-*, mixed-zstd), clip search (gptq-zstd, and
    gptq-hessian-zstd without a Hessian for this tensor) or GPTQ (gptq-hessian-zstd)."""
    if scheme == "int8-zlib" or t.ndim != 2:
        q, s = _quantize(t)
        return q, s, {"scheme": "per_row", "axis": 0} if s.ndim > 0 else {}
    w, bits = t.float(), matrix_bits(scheme, name)
    if scheme == "gptq-hessian-zstd" and hessian is not None:
        q, s = quantize.gptq(w, hessian, bits)
    elif scheme.startswith("gptq-"):
        q, s = quantize.search(w, bits)
    else:
        q, s = quantize.plain(w, bits)
    return q.contiguous(), s.contiguous(), {"scheme": "per_row", "axis": 0, "bits": bits}


def dequantize(q: Tensor, s: Tensor, dtype: torch.dtype) -> Tensor:
    """Codes times their per-row (or single) scale, in the original dtype: the one formula for every scheme."""
    if s.ndim > 0:
        return (q.float() * s.float().view(q.shape[0], *([1] * (q.ndim - 1)))).to(dtype).contiguous()
    return (q.float() * float(s.item())).to(dtype).contiguous()


def quantize_state_dict(state: dict[str, Tensor], control_patterns=CONTROL_TENSOR_PATTERNS,
                        scheme: str = "int8-zlib", hessians: dict[str, Tensor] | None = None) -> dict:
    quantized, scales, dtypes, passthrough, orig_dtypes, qmeta = {}, {}, {}, {}, {}, {}
    for name, tensor in state.items():
        t = tensor.detach().to("cpu").contiguous()
        if not t.is_floating_point():
            passthrough[name] = t
        elif not is_quantized(t):
            if any(p in name for p in control_patterns):
                passthrough[name] = t.float().contiguous()
            else:
                if t.dtype in (torch.float32, torch.bfloat16):
                    orig_dtypes[name] = str(t.dtype).removeprefix("torch.")
                passthrough[name] = t.to(torch.float16).contiguous()
        else:
            hessian = (hessians or {}).get(name)
            q, s, meta = quantize_tensor(name, t, scheme, None if hessian is None else hessian.detach().cpu())
            if meta:
                qmeta[name] = meta
            quantized[name], scales[name] = q, s
            dtypes[name] = str(t.dtype).removeprefix("torch.")
    obj = {"__quant_format__": FORMAT if scheme == "int8-zlib" else LOWBIT_FORMAT, "quantized": quantized,
           "scales": scales, "dtypes": dtypes, "passthrough": passthrough}
    if qmeta:
        obj["qmeta"] = qmeta
    if orig_dtypes:
        obj["passthrough_orig_dtypes"] = orig_dtypes
    return obj


def dequantize_state_dict(obj: dict) -> dict[str, Tensor]:
    out = {}
    for name, q in obj["quantized"].items():
        out[name] = dequantize(q, obj["scales"][name], getattr(torch, obj["dtypes"][name]))
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


def encode_state_dict(state: dict[str, Tensor], scheme: str = "int8-zlib",
                      hessians: dict[str, Tensor] | None = None) -> dict:
    """The object torch.save writes: quantize_state_dict's, plus "coded" for a CodedState's codec tensors (stored
    by their codec under every scheme)."""
    codecs = getattr(state, "codecs", {})
    obj = quantize_state_dict({k: v for k, v in state.items() if k not in codecs}, scheme=scheme, hessians=hessians)
    if codecs:
        obj["coded"] = {k: CODECS[codec][0](k, state[k]) for k, codec in codecs.items()}
    return obj


def _zstd_compress(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compress(raw)


def _zstd_decompress(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(data)


# compressor name → (compress, decompress, the errors its decompress raises on a damaged stream)
COMPRESSORS = {
    "zlib": (functools.partial(zlib.compress, level=9), zlib.decompress, (zlib.error,)),
    "lzma": (functools.partial(lzma.compress, preset=LZMA_PRESET), lzma.decompress, (lzma.LZMAError,)),
    "zstd": (_zstd_compress, _zstd_decompress, (zstandard.ZstdError,)),
}


def check_scheme(scheme: str) -> str:
    if scheme not in EXPORT_SCHEMES:
        raise UserError(f"export scheme {scheme!r} is not one of {', '.join(EXPORT_SCHEMES)}")
    return scheme


def needs_hessians(scheme: str) -> bool:
    """Whether compress(state, scheme) uses Hessians from collect_hessians (without them it falls back)."""
    return check_scheme(scheme) == "gptq-hessian-zstd"


def compress(state: dict[str, Tensor], scheme: str = "int8-zlib", hessians: dict[str, Tensor] | None = None) -> bytes:
    """The artifact's model bytes. int8-zlib is a plain zlib stream, byte for byte the challenge's format; every
    other scheme is HEADER + its name + "\n" + its compressor's stream (the name's last part)."""
    buf = io.BytesIO()
    torch.save(encode_state_dict(state, check_scheme(scheme), hessians), buf)
    if scheme == "int8-zlib":
        return zlib.compress(buf.getvalue(), level=9)
    return HEADER + scheme.encode("ascii") + b"\n" + COMPRESSORS[scheme.rsplit("-", 1)[1]][0](buf.getvalue())


class RefusedArtifact(ValueError, pickle.UnpicklingError):
    """torch.load(weights_only=True) refused what the artifact holds: a ValueError like every artifact that cannot
    be read, and still the UnpicklingError torch raises."""


def decompress(blob: bytes) -> dict[str, Tensor]:
    """The state dict an artifact of any scheme holds, the scheme read from the blob itself. A damaged blob, or
    one of an unknown scheme, raises ValueError naming what is wrong; nothing in it is ever executed."""
    scheme = "int8-zlib"
    if blob.startswith(HEADER):
        end = blob.find(b"\n", len(HEADER), HEADER_MAX_BYTES)
        scheme = blob[len(HEADER):end].decode("ascii", "replace") if end > 0 else "(no end of header)"
        if scheme not in EXPORT_SCHEMES[1:]:
            raise ValueError(f"artifact header names export scheme {scheme!r}, which this harness cannot read "
                             f"(it reads {', '.join(EXPORT_SCHEMES)})")
        payload = blob[end + 1:]
    elif blob[:1] == b"\x78":  # a zlib stream's first byte (deflate, 32 KiB window)
        payload = blob
    else:
        raise ValueError(f"not an artifact of this harness: it starts with {blob[:8]!r}, neither a zlib stream "
                         f"(int8-zlib) nor a {HEADER.decode()}<scheme> header")
    compressor = scheme.rsplit("-", 1)[1]
    _, unpack, errors = COMPRESSORS[compressor]
    try:
        raw = unpack(payload)
    except errors as err:
        raise ValueError(f"{scheme} artifact is damaged: its {compressor} stream does not decompress ({err})") from err
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise RefusedArtifact(f"{scheme} artifact refused: torch.load(weights_only=True) will not load what it "
                              f"holds ({str(err).splitlines()[0]})") from err
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"{scheme} artifact is damaged: its decompressed bytes are not a saved state ({err})") from err
    try:
        return dequantize_state_dict(obj)
    except (KeyError, TypeError, AttributeError, RuntimeError) as err:
        raise ValueError(f"{scheme} artifact is damaged: its saved state lacks or garbles {err}") from err


@torch.no_grad()
def fake_quantize(state: dict[str, Tensor], scheme: str) -> dict[str, Tensor]:
    """For late quantisation-aware training: every tensor the scheme rounds to integers, as the round trip gives
    it back (the same quantize_tensor and dequantize as compress and decompress, on the tensors' own device);
    tensors the scheme keeps, and a CodedState's codec tensors, are absent. The two gptq schemes give the plain
    int6 clip's values (int6-zstd's), not their export's: the clip search costs 8 passes over every matrix a
    step, GPTQ needs Hessians, and both only move the clip or the rounding that training adapts to (the
    2026-03-22 record trained with the plain clip too)."""
    check_scheme(scheme)
    rounding = "int6-zstd" if scheme.startswith("gptq-") else scheme
    codecs = getattr(state, "codecs", {})
    return {name: dequantize(*quantize_tensor(name, t.detach(), rounding)[:2], t.dtype)
            for name, t in state.items() if name not in codecs and is_quantized(t)}


@torch.no_grad()
def collect_hessians(model: nn.Module, batches: Iterable[Tensor], keys: set[str]) -> dict[str, Tensor]:
    """H = XᵀX / (number of rows of X), fp32, of the inputs X of every nn.Linear whose `<module>.weight` is in
    `keys`, over the batches of input ids (on the model's device; model(batch) in eval mode, training mode
    restored after). Returns {weight key: H} on the CPU, for the keys whose module ran. A module that runs
    several times a forward (shared or repeated layers) accumulates every call. Pass the uncompiled model."""
    owners: dict[nn.Module, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        key = f"{name}.weight" if name else "weight"
        if isinstance(module, nn.Linear) and key in keys:
            owners.setdefault(module, []).append(key)
    sums: dict[nn.Module, Tensor] = {}
    rows: dict[nn.Module, int] = {}

    def accumulate(module: nn.Module, args: tuple, output) -> None:
        x = args[0].detach().reshape(-1, module.in_features).float()
        if module not in sums:
            sums[module], rows[module] = x.new_zeros(x.shape[1], x.shape[1]), 0
        with torch.autocast(x.device.type, enabled=False):  # the caller's autocast would sum in bf16
            sums[module].addmm_(x.T, x)
        rows[module] += x.shape[0]

    handles = [module.register_forward_hook(accumulate) for module in owners]
    training = model.training
    model.eval()
    try:
        for batch in batches:
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    return {key: (sums[module] / rows[module]).cpu() for module, keys_of in owners.items() if module in sums
            for key in keys_of}


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


def harness_imports(path: Path, anywhere: bool = False) -> set[Path]:
    """The harness modules `path` imports (read from its source): at module level, or `anywhere` (inside
    functions too)."""
    root = Path(__file__).resolve().parent.parent
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    found: set[Path] = set()
    for node in ast.walk(tree) if anywhere else tree.body:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "harness":
                base = root.joinpath(*name.split("."))
                found |= {p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()}
    return found


@functools.cache
def trainer_source_files() -> tuple[Path, ...]:
    """The harness modules a run needs to train and score a model: harness/train.py and everything it imports at
    module level, transitively (read from the source, not from what happens to be loaded)."""
    seen: set[Path] = set()
    todo = [Path(__file__).resolve().parent / "train.py"]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += harness_imports(path)
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


def measure(blob: bytes, model_files: list[Path], counted: str = "submission",
            script: tuple[int, tuple[Path, ...]] | None = None) -> ArtifactSize:
    """Bytes of the artifact and of its code. The challenge counts its whole training script (train_gpt.py,
    47,642 bytes for the baseline), so `submission` counts the nearest equivalent: with `script` = (its size, the
    files it embeds), the one self-contained script that reproduces the run (harness/submission.py, what
    `export` writes); without, the model's files and the harness's trainer. `model` counts only the files that
    define the model."""
    if counted not in CODE_COUNTS:
        raise ValueError(f"code bytes count {counted!r}, not one of {CODE_COUNTS}")
    model_files = sorted({Path(p).resolve() for p in model_files})

    def size(files) -> int:
        return sum(len(p.read_bytes()) for p in files)

    if script is not None:
        submission_bytes, submission = script[0], sorted(script[1])
    else:
        submission = sorted(set(model_files) | set(trainer_source_files()))
        submission_bytes = size(submission)
    files = submission if counted == "submission" else model_files
    code_bytes = submission_bytes if counted == "submission" else size(model_files)
    return ArtifactSize(len(blob), code_bytes, tuple(str(p) for p in files), size(model_files), submission_bytes,
                        counted)
