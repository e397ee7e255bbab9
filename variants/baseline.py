"""baseline — the parameter-golf reference model (train_gpt.py's simple baseline).

9 blocks at width 512, 8 query / 4 KV heads, relu² MLP ×2, tied 1024-token embedding, U-Net skips, logits
soft-capped at 30: about 17.06M parameters, ~1.22 val_bpb on FineWeb in 10 minutes on 8×H100 per the
challenge's README. Every other variant is measured against it under the same budget.
"""

from harness.model import GPT, GPTConfig
from harness.registry import register

register("baseline", config=GPTConfig, build=GPT, doc=__doc__)
