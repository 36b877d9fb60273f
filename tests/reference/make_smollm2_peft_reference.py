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

    # Prompt and prefix tuning (PEFT's forward gives logits for prompt tuning's virtual
    # positions too: they are cut off; a greedy continuation of the first case is recorded):
    cargo run --release --example export_reference -- --smollm2-prompt /tmp/smollm2_prompt
    python3 tests/reference/make_smollm2_peft_reference.py \
        ~/.cache/fedsim/models/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/smollm2_prompt \
        ../shared/testdata/smollm2_reference.json \
        "fedsim::model::reference::smollm2_prompt_adapter (8 virtual tokens, 0.1 N(0, 1), seed 2223)" \
        > tests/reference/smollm2_prompt_reference.json
    cargo run --release --example export_reference -- --smollm2-prefix /tmp/smollm2_prefix
    python3 tests/reference/make_smollm2_peft_reference.py \
        ~/.cache/fedsim/models/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/smollm2_prefix \
        ../shared/testdata/smollm2_reference.json \
        "fedsim::model::reference::smollm2_prefix_adapter (8 virtual tokens per layer, N(0, 1), seed 2425)" \
        > tests/reference/smollm2_prefix_reference.json

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
config = model.active_peft_config
cut = config.num_virtual_tokens if config.peft_type == peft.PeftType.PROMPT_TUNING else 0
cases = json.load(open(reference))["cases"]
out = []
greedy = None
with torch.no_grad():
    if config.is_prompt_learning:
        # Greedy decoding by PEFT's forward over the whole sequence, no cache (PEFT 0.21.2's
        # generate disagrees with its own forward for prompt learning: see
        # make_method_reference.py).
        seq = list(cases[0]["input_ids"])
        for _ in range(8):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
        greedy = {"prompt": cases[0]["input_ids"], "ids": seq[len(cases[0]["input_ids"]):]}
    for case in cases:
        logits = model(torch.tensor([case["input_ids"]])).logits[0, cut:]
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
    **({"greedy": greedy} if greedy else {}),
}, indent=1))
