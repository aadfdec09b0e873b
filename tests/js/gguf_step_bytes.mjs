// gguf_step_bytes.mjs FILE.gguf: the bytes of weights one generated token reads as moelm runs the file
// (`moelm generate -m` / `moelm bench -m`), counted from the file's tensor table as @huggingface/gguf (an
// independent reader) gives it. moelm keeps a Q8_0 matrix as its blocks (34 bytes: an fp16 scale and 32
// int8 values) and reads every other tensor as float32 (F16 and BF16 are widened at load, and so is a
// router, blk.N.ffn_gate_inp, of any type). A token reads: one row of token_embd; every tensor of every
// block whole, except the stacked experts (blk.N.ffn_*_exps), of which it reaches expert_used_count of
// expert_count; output_norm; and output, or the whole token_embd again when there is none (a tied head).
// Prints the count.
import { gguf } from "@huggingface/gguf";

const path = process.argv[2];
const { metadata: m, tensorInfos } = await gguf(path, { allowLocalFile: true });
const num = (v) => (typeof v === "bigint" ? Number(v) : v);
const Q8_0 = 8;   // ggml's GGML_TYPE_Q8_0
// bytes of n values of tensor t as moelm holds them
const bytes = (t, n) => (t.dtype === Q8_0 && !t.name.includes("ffn_gate_inp") ? (n / 32) * 34 : 4 * n);
const used = num(m["llama.expert_used_count"] ?? 0), experts = num(m["llama.expert_count"] ?? 0);
let total = 0;
const tied = !tensorInfos.some((t) => t.name === "output.weight");
for (const t of tensorInfos) {
    const shape = t.shape.map(num), n = shape.reduce((a, b) => a * b, 1);
    if (t.name === "token_embd.weight") total += bytes(t, shape[0]) + (tied ? bytes(t, n) : 0);
    else if (/_exps\.weight$/.test(t.name)) total += (bytes(t, n) / experts) * used;
    else total += bytes(t, n);
}
console.log(total);
