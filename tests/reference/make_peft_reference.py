"""Score fedsim's exported fixture with Hugging Face transformers + PEFT.

    cargo run --release --example export_reference -- /tmp/fixture
    python3 tests/reference/make_peft_reference.py /tmp/fixture > tests/reference/peft_reference.json

Needs torch, transformers, peft (versions are recorded in the output). The test
`model::forward_matches_transformers_and_peft` rebuilds the same fixture and compares.
"""
import json
import sys

import peft
import torch
import transformers
from peft import PeftModel
from transformers import AutoModelForCausalLM

INPUT_IDS = [
    [1, 17, 250, 3, 99, 42, 42, 7, 180, 299, 0, 64],
    [5, 6, 7, 8, 9, 10, 200, 201, 202, 13, 14, 2],
]
VOCAB_SLICE = 64

d = sys.argv[1]
base = AutoModelForCausalLM.from_pretrained(f"{d}/base_model", torch_dtype=torch.float32)
base.eval()
ids = torch.tensor(INPUT_IDS)
with torch.no_grad():
    base_logits = base(ids).logits
    model = PeftModel.from_pretrained(base, d)
    model.eval()
    peft_logits = model(ids).logits
    # Right padding: the second sequence cut to 7 tokens, padded with 0, with an attention mask.
    padded = torch.tensor([INPUT_IDS[0], INPUT_IDS[1][:7] + [0] * 5])
    mask = torch.tensor([[1] * 12, [1] * 7 + [0] * 5])
    padded_logits = model(padded, attention_mask=mask).logits

print(json.dumps({
    "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    "input_ids": INPUT_IDS,
    "vocab_slice": VOCAB_SLICE,
    "base_logits": base_logits[:, :, :VOCAB_SLICE].tolist(),
    "peft_logits": peft_logits[:, :, :VOCAB_SLICE].tolist(),
    "padded_second_row_first7": padded_logits[1, :7, :VOCAB_SLICE].tolist(),
}))
