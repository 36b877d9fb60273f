// Greedy generation with llama.cpp (through the npm package node-llama-cpp and its prebuilt
// CPU binaries) on the same GGUF fedsim reads, for `benches/precision.sh`.
//
// Usage: node benches/llama_cpp_generate.mjs GGUF THREADS TOKENS "PROMPT"
// Prints one JSON line: prompt tokens, new tokens, seconds, tokens/s after the first token.
// Needs `npm install node-llama-cpp` in (a parent of) the working directory or NODE_PATH.
import { getLlama, LlamaCompletion } from "node-llama-cpp";

const [gguf, threads, tokens, prompt] = process.argv.slice(2);
const llama = await getLlama({ gpu: false, build: "never" });
const model = await llama.loadModel({ modelPath: gguf });
const context = await model.createContext({ contextSize: 512, threads: Number(threads) });
const completion = new LlamaCompletion({ contextSequence: context.getSequence() });
const input = model.tokenize(prompt);
const want = Number(tokens);
let n = 0;
let first = 0;
const start = performance.now();
await completion.generateCompletion(prompt, {
  maxTokens: want,
  temperature: 0,
  customStopTriggers: [],
  onToken(chunk) {
    if (n === 0) first = performance.now();
    n += chunk.length;
  },
});
const end = performance.now();
console.log(
  JSON.stringify({
    tool: "llama.cpp (node-llama-cpp)",
    threads: Number(threads),
    prompt_tokens: input.length,
    new_tokens: n,
    seconds: (end - start) / 1000,
    tokens_per_s: (n - 1) / ((end - first) / 1000),
  }),
);
process.exit(0);
