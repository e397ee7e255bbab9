"""The shared family: a module shared by several layers is stored once, and trains on the sum of its uses' gradients."""

import conformance as cf
import torch

from harness import artifact, hooks
from harness.model import GPT


def test_a_shared_model_is_the_baseline_with_tied_copies_and_sums_their_gradients():
    variant, c = cf.tiny("shared", "albert", num_layers=3)
    shared, copies = cf.build(variant, c), GPT(c)

    def owner(name: str) -> str:  # a block's attention or MLP tensor → block 0's, which albert shares
        rest = name.split(".", 2)[2] if name.startswith("blocks.") else name
        return f"blocks.0.{rest}" if rest.startswith(("attn.", "mlp.")) else name

    with torch.no_grad():
        for p in shared.parameters():  # random values: the zero-initialised projections would hide a use
            p.copy_(torch.randn_like(p) * 0.1)
        for name, p in copies.named_parameters():
            p.copy_(shared.get_parameter(owner(name)))
    x, y = cf.copy_pairs(c, 2, seed=0)
    for model in (shared, copies):
        torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    with torch.no_grad():
        assert torch.allclose(shared(x), copies(x), atol=1e-6)
    for name, p in shared.named_parameters():
        uses = [q.grad for n, q in copies.named_parameters() if owner(n) == name]
        assert torch.allclose(p.grad, sum(uses), atol=1e-5), name
        assert len(uses) == (3 if name.startswith(("blocks.0.attn.", "blocks.0.mlp.")) else 1)


def test_each_shared_tensor_is_stored_once_at_full_size():
    variant, _ = cf.get_variant("shared")
    for preset, saved_mlps, saved_attns in ((None, 4, 0), ("albert", 8, 8)):
        model = cf.build(variant, variant.resolve(preset, None, {}))
        state = hooks.exported_state(model)
        mlp, attention = 2 * 512 * 1024, 2 * 512 * 512 + 2 * 512 * 256 + 8
        expected = 17_059_912 - saved_mlps * mlp - saved_attns * attention
        assert artifact.stored_numel(state) == sum(p.numel() for p in model.parameters()) == expected
