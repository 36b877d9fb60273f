"""Score FinGPT's FPB test items with Hugging Face transformers (+ PEFT), as fedsim's
constrained scoring does: the summed log-probability of each class word's tokens as the
continuation " <word>" after the prompt (the context with its trailing space removed), the
prompt and the word tokenised separately, no special tokens added.

Two uses:

1. The parity file for `smollm2::fpb_label_logprobs_match_transformers` (5 items, the
   pretrained model):

       python3 tests/reference/make_fpb_reference.py \
           ~/.cache/fedsim/models/SmolLM2-135M-Instruct.Q4_1.gguf \
           ../shared/data/finance/fpb_test.jsonl --first 5 > tests/reference/fpb_reference.json

2. Agreement with a run's accuracy: `sim eval --run DIR --task fpb --data fpb_test.jsonl
   --subset 300` writes the scored item indices into eval.json; score the same items here with
   the run's adapter (PeftModel.from_pretrained) and compare accuracies:

       python3 tests/reference/make_fpb_reference.py GGUF fpb_test.jsonl \
           --adapter DIR --items DIR/eval.json

The base is the model transformers builds from the same GGUF (dequantised to float32).
"""
import argparse
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

WORDS = ["negative", "neutral", "positive"]

ap = argparse.ArgumentParser()
ap.add_argument("gguf")
ap.add_argument("data")
ap.add_argument("--first", type=int, default=None)
ap.add_argument("--adapter", default=None)
ap.add_argument("--items", default=None, help="an eval.json whose task item indices to score")
a = ap.parse_args()
torch.set_num_threads(2)
folder, name = os.path.dirname(a.gguf) or ".", os.path.basename(a.gguf)
tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
if a.adapter:
    import peft
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, a.adapter)
model.eval()
rows = [json.loads(l) for l in open(a.data) if l.strip()]
if a.items:
    evald = json.load(open(a.items))
    indices = next(m["task"]["items"] for m in evald["models"] if m.get("task"))
elif a.first:
    indices = list(range(a.first))
else:
    indices = list(range(len(rows)))
label_ids = [tok(" " + w, add_special_tokens=False)["input_ids"] for w in WORDS]


def logprobs(prompt_ids):
    out = []
    for ids in label_ids:
        full = torch.tensor([prompt_ids + ids])
        with torch.no_grad():
            lp = torch.log_softmax(model(full).logits[0].double(), dim=-1)
        n = len(prompt_ids)
        out.append(sum(lp[n - 1 + j, t].item() for j, t in enumerate(ids)))
    return out


items, right = [], 0
for k, i in enumerate(indices):
    prompt = rows[i]["context"].rstrip()
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    lp = logprobs(prompt_ids)
    pred = WORDS[max(range(3), key=lambda c: lp[c])]
    right += pred == rows[i]["target"]
    if a.first:
        items.append({
            "index": i, "prompt": prompt, "prompt_ids": prompt_ids, "target": rows[i]["target"],
            "labels": [{"word": w, "ids": ids, "logprob": round(v, 6)}
                       for w, ids, v in zip(WORDS, label_ids, lp)],
        })
    if (k + 1) % 50 == 0:
        print(f"{k + 1}/{len(indices)}", file=sys.stderr)
versions = {"torch": torch.__version__, "transformers": transformers.__version__}
if a.adapter:
    versions["peft"] = peft.__version__
print(json.dumps({
    "versions": versions,
    "model_file": name,
    "adapter": a.adapter,
    "scored": len(indices),
    "accuracy": right / len(indices),
    "items": items,
}, indent=1))
