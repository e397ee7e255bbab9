"""Token-attribute prediction, an auxiliary loss dropped at export: from the last block's output, a small head
predicts attributes of the next token read from the tokenizer's byte tables (the same tables the metric counts
bytes with): its byte length (1 … 16, longer pieces in the last class) and whether it starts a word (a leading
space). The head is trained beside the model and never exported."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import UserError
from harness.model import CastedLinear, rms_norm
from harness.techniques import Technique, register
from harness.tune.space import Float

LENGTH_CLASSES = 16


@dataclass
class TokenAttributesConfig:
    token_attributes_weight: float = 0.1  # the length and word-start losses' weight, each

    def check(self) -> None:
        if not 0 <= self.token_attributes_weight <= 10:
            raise UserError(f"--token-attributes-weight must be 0 to 10, got {self.token_attributes_weight}")


class TokenAttributes(Technique):
    needs_hidden = True

    def __init__(self, config, model, model_config):
        super().__init__(config, model, model_config)
        tables = self.context.get("tables")
        if tables is None:
            raise UserError("technique token_attributes needs the tokenizer's byte tables (a run has them)")
        if len(tables.base_bytes) < model_config.vocab_size:
            raise UserError(f"technique token_attributes: the tokenizer has {len(tables.base_bytes)} tokens and "
                            f"the model {model_config.vocab_size}")
        length = torch.as_tensor(tables.base_bytes[:model_config.vocab_size].astype("int64")) + torch.as_tensor(
            tables.has_leading_space[:model_config.vocab_size].astype("int64"))
        self.head = nn.Module()
        self.head.proj = CastedLinear(model_config.model_dim, LENGTH_CLASSES + 1, zero_init=True)
        # targets per token id, moved with the head (buffers, not parameters: nothing to train)
        self.head.register_buffer("length", (length.clamp(1, LENGTH_CLASSES) - 1), persistent=False)
        self.head.register_buffer("word_start", torch.as_tensor(
            tables.has_leading_space[:model_config.vocab_size].astype("float32")), persistent=False)

    def modules(self):
        return {"head": self.head}

    def loss_terms(self, model, x, y, logits, hidden, progress):
        out = self.head.proj(rms_norm(hidden[-1])).float()
        w = self.config.token_attributes_weight
        length = F.cross_entropy(out[..., :LENGTH_CLASSES].reshape(-1, LENGTH_CLASSES),
                                 self.head.length[y].reshape(-1))
        start = F.binary_cross_entropy_with_logits(out[..., LENGTH_CLASSES], self.head.word_start[y])
        return {"length": w * length, "word_start": w * start}


register("token_attributes", config=TokenAttributesConfig, cls=TokenAttributes, doc=__doc__.split("\n\n")[0],
         space={"token_attributes_weight": Float(0.01, 1.0, log=True)}, order=32)
