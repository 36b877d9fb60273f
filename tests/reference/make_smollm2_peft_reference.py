"""Apply fedsim's SmolLM2 reference adapter with Hugging Face transformers + PEFT.

    cargo run --release --example export_reference -- --smollm2 /tmp/smollm2_adapter
    python3 tests/reference/make_smollm2_peft_reference.py \
        ~/.cache/fedsim/models/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/smollm2_adapter \
        ../shared/testdata/smollm2_reference.json > tests/reference/smollm2_peft_reference.json

    # The IA³ adapter (PEFT reads the method from adapter_config.json):
    cargo run --release --example export_reference -- --smollm2-ia3 /tmp/smollm2_ia3
    python3 tests/reference/make_smollm2_peft_reference.py \
        ~/.cache/fedsim/models/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/smollm2_ia3 \
        ../shared/testdata/smollm2_reference.json \
        "fedsim::model::reference::smollm2_ia3_adapter (IA3 on k/v/down_proj, seed 1357)" \
        > tests/reference/smollm2_ia3_reference.json

    # The DoRA adapter (its magnitudes come from the GGUF's weights):
    cargo run --release --example export_reference -- --smollm2-dora \
        ~/.cache/fedsim/models/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/smollm2_dora
    python3 tests/reference/make_smollm2_peft_reference.py \
        ~/.cache/fedsim/models/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/smollm2_dora \
        ../shared/testdata/smollm2_reference.json \
        "fedsim::model::reference::smollm2_dora_adapter (DoRA r 8 on q/v_proj, seed 3579)" \
        > tests/reference/smollm2_dora_reference.json

The base is the Hugging Face model transformers makes from the same GGUF (dequantised to
float32); the adapter is loaded with `PeftModel.from_pretrained`. For each case of the shared
reference (its token ids and positions) it records the top-10 next-token ids and logits with
the adapter. The test `smollm2::peft_adapter_matches_transformers_and_peft` loads the same
GGUF and adapter in fedsim and compares (within 1e-3). Needs torch, transformers (with gguf),
peft; versions are recorded in the output.
"""
import json
import os
import sys

import peft
import torch
import transformers
from peft import PeftModel
from transformers import AutoModelForCausalLM

gguf, adapter_dir, reference = sys.argv[1], sys.argv[2], sys.argv[3]
described = sys.argv[4] if len(sys.argv) > 4 else (
    "fedsim::model::reference::smollm2_adapter (r 8, alpha 16, q_proj + v_proj, seed 2468)")
torch.set_num_threads(2)
base = AutoModelForCausalLM.from_pretrained(
    os.path.dirname(gguf) or ".", gguf_file=os.path.basename(gguf), dtype=torch.float32
)
model = PeftModel.from_pretrained(base, adapter_dir)
model.eval()
cases = json.load(open(reference))["cases"]
out = []
with torch.no_grad():
    for case in cases:
        logits = model(torch.tensor([case["input_ids"]])).logits[0]
        positions = []
        for p in case["positions"]:
            top = torch.topk(logits[p["position"]], 10)
            positions.append({
                "position": p["position"],
                "top10_ids": top.indices.tolist(),
                "top10_logits": [round(x, 6) for x in top.values.tolist()],
            })
        out.append({"name": case["name"], "positions": positions})
print(json.dumps({
    "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    "model_file": os.path.basename(gguf),
    "adapter": described,
    "cases": out,
}, indent=1))
