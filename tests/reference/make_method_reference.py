"""Score, step and generate from a fedsim adapter fixture with Hugging Face transformers + PEFT.

    cargo run --release --example export_reference -- --ia3 /tmp/ia3_fixture
    python3 tests/reference/make_method_reference.py /tmp/ia3_fixture > tests/reference/ia3_reference.json
    cargo run --release --example export_reference -- --dora /tmp/dora_fixture
    python3 tests/reference/make_method_reference.py /tmp/dora_fixture > tests/reference/dora_reference.json
    cargo run --release --example export_reference -- --prompt /tmp/prompt_fixture
    python3 tests/reference/make_method_reference.py /tmp/prompt_fixture > tests/reference/prompt_reference.json
    cargo run --release --example export_reference -- --prefix /tmp/prefix_fixture
    python3 tests/reference/make_method_reference.py /tmp/prefix_fixture > tests/reference/prefix_reference.json

Each fixture is a small random Llama base (HF layout) and an adapter of one method (IA³ on every
projection with up_proj and down_proj as feed-forward modules; DoRA r 4 on every projection;
prompt tuning with 5 virtual tokens; prefix tuning with 4),
written by fedsim in PEFT's format and loaded here with `PeftModel.from_pretrained`. Recorded:
logits without and with the adapter (and with right padding), the gradient of the mean
next-token loss over both sequences with respect to every trainable tensor, those tensors after
one `torch.optim.AdamW` step (lr 1e-2, PyTorch's defaults otherwise, as candle's), and a greedy
continuation. PEFT's prompt tuning returns logits for the virtual positions too: they are cut
off, so every method's logits are those of the real tokens. The tests in `tests/peft_methods.rs` compare. Needs torch, transformers, peft
(versions are recorded).
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
LR = 1e-2

d = sys.argv[1]
torch.manual_seed(0)
base = AutoModelForCausalLM.from_pretrained(f"{d}/base_model", dtype=torch.float32)
base.eval()
ids = torch.tensor(INPUT_IDS)
with torch.no_grad():
    base_logits = base(ids).logits
config = peft.PeftConfig.from_pretrained(d)
# PEFT loads a prompt learning adapter for inference only: its one tensor is made trainable here.
model = PeftModel.from_pretrained(base, d, is_trainable=not config.is_prompt_learning)
if config.is_prompt_learning:
    for p in model.prompt_encoder.parameters():
        p.requires_grad_(True)
model.eval()  # no dropout anywhere
# Prompt tuning's output has a row per virtual token in front.
cut = config.num_virtual_tokens if config.peft_type == peft.PeftType.PROMPT_TUNING else 0


def real(logits):
    return logits[:, cut:]


with torch.no_grad():
    peft_logits = real(model(ids).logits)
    padded = torch.tensor([INPUT_IDS[0], INPUT_IDS[1][:7] + [0] * 5])
    mask = torch.tensor([[1] * 12, [1] * 7 + [0] * 5])
    padded_logits = real(model(padded, attention_mask=mask).logits)
    # Greedy decoding by PEFT's forward over the whole sequence, no cache: the model PEFT
    # defines. PEFT 0.21.2's `generate` under transformers 5.25 disagrees with that forward for
    # prompt learning (prefix tuning: transformers drops the prefix cache, "Both
    # `past_key_values` and `cache` are set", and returns the base model's continuation;
    # prompt tuning: it diverges after the first token), so its output is recorded apart.
    seq = INPUT_IDS[0][:6]
    for _ in range(8):
        seq = seq + [int(real(model(torch.tensor([seq])).logits)[0, -1].argmax())]
    greedy = seq[6:]
    peft_generate = model.generate(
        input_ids=ids[:1, :6], attention_mask=torch.ones(1, 6, dtype=torch.long),
        max_new_tokens=8, do_sample=False, pad_token_id=0,
    )[0].tolist()[-8:]

# The mean next-token loss over every position of both sequences (fedsim's prompt length 1).
params = {n: p for n, p in model.named_parameters() if p.requires_grad}
logits = real(model(ids).logits)
loss = torch.nn.functional.cross_entropy(
    logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
)
opt = torch.optim.AdamW(params.values(), lr=LR)
opt.zero_grad()
loss.backward()
grads = {n: p.grad.flatten().tolist() for n, p in params.items()}
opt.step()
stepped = {n: p.detach().flatten().tolist() for n, p in params.items()}


def key(name):
    """PEFT's parameter name → the key in adapter_model.safetensors."""
    if name.startswith("prompt_encoder."):
        return "prompt_embeddings"
    name = name.replace("lora_magnitude_vector.default.weight", "lora_magnitude_vector")
    return name.replace(".default", "")


print(json.dumps({
    "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    "input_ids": INPUT_IDS,
    "vocab_slice": VOCAB_SLICE,
    "lr": LR,
    "loss": loss.item(),
    "base_logits": base_logits[:, :, :VOCAB_SLICE].tolist(),
    "peft_logits": peft_logits[:, :, :VOCAB_SLICE].tolist(),
    "padded_second_row_first7": padded_logits[1, :7, :VOCAB_SLICE].tolist(),
    "grads": {key(n): g for n, g in grads.items()},
    "stepped": {key(n): v for n, v in stepped.items()},
    "greedy_prompt": INPUT_IDS[0][:6],
    "greedy": greedy,
    "peft_generate": peft_generate,
}))
