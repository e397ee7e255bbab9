"""Latent planning tokens in training only: after every `--planning-tokens-every` input tokens, learned vectors
(`--planning-tokens-count` of them, owned by the technique) are inserted into the embedded sequence; later tokens
attend to them, nothing is predicted at them, and they are removed again before the loss (and from the block
outputs other techniques read). At inference no token is inserted: the vectors are never exported. The
sequence is longer in training (by count/every), so each step costs that much more, and positions shift by as
much: the model learns with the planning slots and is scored without them, which is the idea's bet."""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from harness.errors import UserError
from harness.techniques import Technique, register, token_embedding
from harness.tune.space import Int


@dataclass
class PlanningTokensConfig:
    planning_tokens_every: int = 32  # input tokens between insertions
    planning_tokens_count: int = 1   # vectors inserted each time

    def check(self) -> None:
        if not 2 <= self.planning_tokens_every <= 4096:
            raise UserError(f"--planning-tokens-every must be 2 to 4096, got {self.planning_tokens_every}")
        if not 1 <= self.planning_tokens_count <= 16:
            raise UserError(f"--planning-tokens-count must be 1 to 16, got {self.planning_tokens_count}")


class PlanningTokens(Technique):
    def __init__(self, config, model, model_config):
        super().__init__(config, model, model_config)
        self.embedding = token_embedding(model, model_config.vocab_size, "planning_tokens")
        std = getattr(model_config, "tied_embed_init_std", 0.005)
        self.vectors = nn.Parameter(torch.randn(config.planning_tokens_count, self.embedding.embedding_dim) * std)
        self.holder = nn.Module()
        self.holder.vectors = self.vectors
        self.inserted: tuple[int, Tensor] | None = None  # (the longer length, the model's own positions in it)
        self.used = False  # whether this step's forward inserted any

    def modules(self):
        return {"vectors": self.holder}

    def attach(self, model):
        self.embedding.register_forward_hook(self.insert)
        model.register_forward_hook(self.remove_from_output)

    def insert(self, module, args, output):
        self.inserted = None
        if not module.training or output.dim() != 3:
            return None
        k, n = self.config.planning_tokens_every, self.config.planning_tokens_count
        bsz, length, dim = output.shape
        groups = length // k
        if groups == 0:
            return None
        plan = self.vectors.to(output.dtype).expand(bsz, groups, n, dim)
        body = torch.cat((output[:, :groups * k].reshape(bsz, groups, k, dim), plan), dim=2)
        longer = torch.cat((body.reshape(bsz, groups * (k + n), dim), output[:, groups * k:]), dim=1)
        index = torch.arange(length, device=output.device)
        self.inserted = (longer.size(1), index + (index // k) * n)
        self.used = True
        return longer

    def inputs(self, x, y, progress):
        self.used = False
        return x, y

    def loss_terms(self, model, x, y, logits, hidden, progress):
        # sequences shorter than the interval get no planning token: the vectors still get a (zero) gradient, as
        # data-parallel training needs of every trained parameter
        return {} if self.used else {"unused": 0.0 * self.vectors.sum()}

    def positions(self, hidden):
        if self.inserted is not None and hidden.dim() == 3 and hidden.size(1) == self.inserted[0]:
            return hidden[:, self.inserted[1]]
        return hidden

    def remove_from_output(self, module, args, output):
        if self.inserted is None:
            return None
        logits, rest = (output[0], output[1:]) if isinstance(output, tuple) else (output, None)
        logits = self.positions(logits)
        self.inserted = None
        return logits if rest is None else (logits, *rest)


register("planning_tokens", config=PlanningTokensConfig, cls=PlanningTokens, doc=__doc__.split("\n\n")[0],
         space={"planning_tokens_every": Int(8, 128, log=True), "planning_tokens_count": Int(1, 4)},
         order=11)  # after embedding_noise: its hook sees the token embeddings only, not the inserted slots
