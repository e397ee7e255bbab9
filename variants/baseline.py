"""baseline — the parameter-golf reference model (train_gpt.py's simple baseline).

9 blocks at width 512, 8 query / 4 KV heads, relu² MLP ×2, tied 1024-token embedding, U-Net skips, logits
soft-capped at 30: about 17.06M parameters, ~1.22 val_bpb on FineWeb in 10 minutes on 8×H100 per the
challenge's README. Every other variant is measured against it under the same budget.

Its shared model options (harness/model.py: MLP activation, norm, residual scales, QK-norm, partial RoPE,
CoPE) are flags of every family. Presets: `mha`, one KV head per query head at width 480 so the stored numbers
stay near the baseline's (17,099,592 vs 17,059,912; at width 512 MHA stores 19.42M and its trained artifact would
not fit the cap), and `mqa`, one KV head at the baseline's width (15,290,440 numbers, 1.77M fewer). The default
is GQA with 4 KV heads. `record-stack` is a recent record's recipe (harness/model.py RECORD_STACK): 11 layers,
MLP ×3 with leaky-relu², a quarter of each head rotated, Muon and Adam weight decay, late QAT, a clip-searched
int6 export and score-first test-time training on sliding windows. Every family takes it by name
(`--variant mla --preset record-stack`), so a family's own change is measured on that stack in one command.
"""

from harness.model import GPT, RECORD_STACK, GPTConfig
from harness.registry import register

register("baseline", config=GPTConfig, build=GPT, doc=__doc__,
         presets={"mha": {"num_kv_heads": 0, "model_dim": 480}, "mqa": {"num_kv_heads": 1},  # 0: one per query head
                  "record-stack": RECORD_STACK})
