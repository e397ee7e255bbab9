"""Noise in training only: Gaussian noise on the token embeddings (relative to their RMS) and, optionally, token
dropout (a fraction of input positions whose embedding is zeroed) and token replacement (a fraction of input
tokens replaced by random ones); targets are never changed. Evaluation sees clean inputs."""

from dataclasses import dataclass

import torch

from harness.errors import UserError
from harness.techniques import Technique, register, token_embedding
from harness.tune.space import Float


@dataclass
class EmbeddingNoiseConfig:
    embedding_noise_std: float = 0.1      # noise std as a fraction of the embeddings' RMS
    embedding_noise_replace: float = 0.0  # fraction of input tokens replaced by random ones
    embedding_noise_drop: float = 0.0     # fraction of input positions whose embedding is zeroed

    def check(self) -> None:
        if not 0 <= self.embedding_noise_std <= 5:
            raise UserError(f"--embedding-noise-std must be 0 to 5, got {self.embedding_noise_std}")
        if not 0 <= self.embedding_noise_replace < 1:
            raise UserError(f"--embedding-noise-replace must be in [0, 1), got {self.embedding_noise_replace}")
        if not 0 <= self.embedding_noise_drop < 1:
            raise UserError(f"--embedding-noise-drop must be in [0, 1), got {self.embedding_noise_drop}")


class EmbeddingNoise(Technique):
    def attach(self, model):
        embedding = token_embedding(model, self.model_config.vocab_size, "embedding_noise")
        std, drop = self.config.embedding_noise_std, self.config.embedding_noise_drop

        def noisy(module, args, output):
            if not module.training or (std == 0 and drop == 0):
                return None
            if std:
                rms = output.detach().float().pow(2).mean().sqrt().to(output.dtype)
                output = output + std * rms * torch.randn_like(output)
            if drop:
                keep = torch.rand(output.shape[:-1], device=output.device) >= drop
                output = output * keep.unsqueeze(-1).to(output.dtype)
            return output

        embedding.register_forward_hook(noisy)

    def inputs(self, x, y, progress):
        p = self.config.embedding_noise_replace
        if p == 0:
            return x, y
        swap = torch.rand(x.shape, device=x.device) < p
        return torch.where(swap, torch.randint_like(x, self.model_config.vocab_size), x), y


register("embedding_noise", config=EmbeddingNoiseConfig, cls=EmbeddingNoise, doc=__doc__.split("\n\n")[0],
         presets={"replace10": {"embedding_noise_std": 0.0, "embedding_noise_replace": 0.1},
                  "drop10": {"embedding_noise_std": 0.0, "embedding_noise_drop": 0.1}},
         space={"embedding_noise_std": Float(0.01, 0.5, log=True)}, order=10)
