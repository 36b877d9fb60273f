"""Reference values for fedsim's packed base weights (tests/precision.rs), from gguf-py (the
llama.cpp project's Python package, independent of candle):

1. rows of the SmolLM2 GGUF's tensors dequantised by gguf-py (Q8_0 embedding, Q4_1 projections),
   in the file's own row order;
2. a seeded matrix quantised and dequantised by gguf-py's reference quantisers (Q8_0, Q4_1,
   BF16), which fedsim's requantisation must reproduce.

Run: python tests/reference/make_quant_reference.py GGUF > tests/reference/quant_reference.json
"""
import json
import sys

import numpy as np
from gguf import GGUFReader, quants
from gguf import GGMLQuantizationType as T


def seeded(rows, cols):
    # The same formula as tests/precision.rs: sin(0.37·i)·2 + 0.1·cos(1.3·i).
    i = np.arange(rows * cols, dtype=np.float64)
    return (np.sin(i * 0.37) * 2 + 0.1 * np.cos(i * 1.3)).astype(np.float32).reshape(rows, cols)


def main():
    reader = GGUFReader(sys.argv[1])
    tensors = {t.name: t for t in reader.tensors}
    file_rows = []
    for name, rows in [
        ("token_embd.weight", [0, 1, 100, 49151]),
        ("blk.0.attn_q.weight", [0, 1, 575]),
        ("blk.0.ffn_down.weight", [0, 7, 575]),
        ("blk.29.ffn_gate.weight", [3, 1535]),
    ]:
        t = tensors[name]
        full = quants.dequantize(t.data, t.tensor_type)
        for r in rows:
            file_rows.append(
                {
                    "tensor": name,
                    "type": t.tensor_type.name,
                    "row": r,
                    "values": [float(v) for v in full[r]],
                }
            )
    x = seeded(8, 64)
    requantised = {}
    for t in [T.Q8_0, T.Q4_1, T.BF16]:
        d = quants.dequantize(quants.quantize(x, t), t)
        requantised[t.name] = [float(v) for v in d.reshape(-1)]
    json.dump(
        {
            "generator": "tests/reference/make_quant_reference.py (gguf-py)",
            "file_rows": file_rows,
            "seeded_shape": [8, 64],
            "requantised": requantised,
        },
        sys.stdout,
    )


main()
