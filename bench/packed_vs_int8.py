"""Benchmark: a run's artifact stored through its variant's codecs (bitnet's packed trits) against the same
exported weights through the challenge's plain int8+zlib export.

    python -m harness run --variant bitnet --budget smoke --max-steps 200 --results-dir /tmp/packed
    python bench/packed_vs_int8.py /tmp/packed/*/model.int8.ptz
    python bench/packed_vs_int8.py --variant bitnet      # default (full) size, every weight random (seed 0)

The artifact is decoded as the round trip does (the weights the restored model loads), then compressed again
as a plain state dict, which sends every tensor down the int8 path; both byte counts are of the model alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    import io
    import zlib

    import torch

    from harness import artifact

    if len(sys.argv) == 3 and sys.argv[1] == "--variant":
        blob = random_full_size(sys.argv[2])
    elif len(sys.argv) == 2 and Path(sys.argv[1]).is_file():
        blob = Path(sys.argv[1]).read_bytes()
    else:
        sys.exit("usage: python bench/packed_vs_int8.py RUN_DIR/model.int8.ptz | --variant NAME[:PRESET]")
    coded = torch.load(io.BytesIO(zlib.decompress(blob)), weights_only=True).get("coded", {})
    state = artifact.decompress(blob)
    plain = artifact.compress(dict(state))  # a plain dict carries no codecs: int8 for every large tensor
    print(f"packed: {len(blob):,} bytes ({len(coded)} tensors through codecs); the same weights through "
          f"int8+zlib: {len(plain):,} bytes ({len(plain) / len(blob):.2f}×)")


def random_full_size(name: str) -> bytes:
    """The variant's artifact at its default size with every parameter drawn at random (std 0.02, seed 0):
    no matrix is zero, as none is once trained."""
    import torch

    from harness import artifact, hooks
    from harness.registry import get_variant

    variant, preset = get_variant(name)
    model = variant.construct(variant.resolve(preset, None, {}))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return artifact.compress(hooks.exported_state(model))


if __name__ == "__main__":
    main()
