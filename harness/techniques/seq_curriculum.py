"""A sequence-length curriculum at constant tokens per step. `grow`: training starts on short sequences (each
training sequence cut into pieces of seq_len / 2^k) and doubles the length at even steps of progress until the
full length at `--seq-curriculum-until`; the step holds the same tokens throughout. `multiscale`: every step
holds several lengths at once: half its sequences at the full length, the rest cut into halves, quarters, …
(each a separate forward pass, weighted by its share of the step's tokens); techniques that change the input
tokens (token replacement, span corruption) or read the blocks' outputs (mtp, deep supervision, …) act on the
full-length pass. Evaluation is always at the budget's full length. Under torch.compile each new length
compiles once, and the clock charges it."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.errors import UserError
from harness.techniques import Technique, register
from harness.tune.space import Choice, Float, Int


@dataclass
class SeqCurriculumConfig:
    seq_curriculum_mode: str = "grow"      # grow (short to long) or multiscale (several lengths per step)
    seq_curriculum_levels: int = 3         # lengths seq_len/2^levels … seq_len (grow), or that many halvings
    seq_curriculum_until: float = 0.5      # grow: the fraction of training after which the full length is used

    def check(self) -> None:
        if self.seq_curriculum_mode not in ("grow", "multiscale"):
            raise UserError(f"--seq-curriculum-mode must be grow or multiscale, got {self.seq_curriculum_mode!r}")
        if not 1 <= self.seq_curriculum_levels <= 4:
            raise UserError(f"--seq-curriculum-levels must be 1 to 4, got {self.seq_curriculum_levels}")
        if not 0 < self.seq_curriculum_until <= 1:
            raise UserError(f"--seq-curriculum-until must be in (0, 1], got {self.seq_curriculum_until}")


class SeqCurriculum(Technique):
    def __init__(self, config, model, model_config):
        super().__init__(config, model, model_config)
        self.divide = 2 ** config.seq_curriculum_levels if config.seq_curriculum_mode == "grow" else 1
        self.extra = []  # multiscale: (inputs, targets, share of the step's tokens) beside the main pass

    def begin_step(self, model, step, progress):
        """Python state read by the compiled graph: it changes `levels` times in a run (one compile each)."""
        if self.config.seq_curriculum_mode == "grow":
            c = self.config
            stage = min(int(progress / c.seq_curriculum_until * c.seq_curriculum_levels), c.seq_curriculum_levels)
            self.divide = 2 ** (c.seq_curriculum_levels - stage)

    def recompiles(self):
        return self.config.seq_curriculum_levels if self.config.seq_curriculum_mode == "grow" else 0

    def inputs(self, x, y, progress):
        self.extra = []
        rows, length = x.shape
        if self.config.seq_curriculum_mode == "grow":
            piece = length // self.divide
            if piece < 1 or length % self.divide:
                return x, y
            return x.reshape(-1, piece), y.reshape(-1, piece)
        # multiscale: the first half of the rows at full length, then halving shares at halving lengths
        if rows < 2:
            return x, y
        total = rows * length
        groups, start, share = [], rows // 2, rows // 2
        for level in range(1, self.config.seq_curriculum_levels + 1):
            size = max(share // 2, 1) if level < self.config.seq_curriculum_levels else rows - start
            piece = length // 2 ** level
            if size <= 0 or start + size > rows or piece < 1 or length % 2 ** level:
                break
            groups.append((x[start:start + size].reshape(-1, piece), y[start:start + size].reshape(-1, piece),
                           size * length / total))
            start, share = start + size, size
        if not groups or start != rows:  # too few rows to split: the step runs at full length
            return x, y
        self.extra = groups
        self.main_share = (rows // 2) * length / total
        return x[:rows // 2], y[:rows // 2]

    def token_weights(self, logits, y, progress):
        if not self.extra:
            return None
        return torch.full(y.shape, self.main_share, dtype=torch.float32, device=y.device)

    def loss_terms(self, model, x, y, logits, hidden, progress):
        extra, self.extra = self.extra, []
        terms = {}
        for xs, ys, share in extra:
            out = model(xs)
            out = (out[0] if isinstance(out, tuple) else out).float()
            terms[f"len{xs.size(1)}"] = share * F.cross_entropy(out.reshape(-1, out.size(-1)), ys.reshape(-1))
        return terms


register("seq_curriculum", config=SeqCurriculumConfig, cls=SeqCurriculum, doc=__doc__.split("\n\n")[0],
         presets={"grow": {"seq_curriculum_mode": "grow"}, "multiscale": {"seq_curriculum_mode": "multiscale"}},
         space={"seq_curriculum_mode": Choice("grow", "multiscale"), "seq_curriculum_levels": Int(1, 4),
                "seq_curriculum_until": Float(0.1, 0.9)}, order=5)
