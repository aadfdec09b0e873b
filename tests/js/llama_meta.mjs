// llama_meta.mjs FILE.gguf CONFIG.json: reads a GGUF file moelm exported (moelm export --format gguf) with
// @huggingface/gguf, an independent reader, and checks llama.cpp's architecture keys against the model's
// Hugging Face config.json, the tokenizer arrays' lengths, and the tensors' names and ggml shapes.
// Exits non-zero with a message on the first difference.
import { gguf } from "@huggingface/gguf";
import { readFileSync } from "node:fs";

const [path, cfgPath] = process.argv.slice(2);
const fail = (msg) => { console.error(`llama_meta: ${path}: ${msg}`); process.exit(1); };
const c = JSON.parse(readFileSync(cfgPath, "utf8"));
const { metadata: m, tensorInfos } = await gguf(path, { allowLocalFile: true });
const num = (v) => (typeof v === "bigint" ? Number(v) : v);
const hd = c.hidden_size / c.num_attention_heads;
const want = {
    "general.architecture": "llama", "llama.embedding_length": c.hidden_size, "llama.block_count": c.num_hidden_layers,
    "llama.feed_forward_length": c.intermediate_size, "llama.attention.head_count": c.num_attention_heads,
    "llama.attention.head_count_kv": c.num_key_value_heads, "llama.context_length": c.max_position_embeddings,
    "llama.rope.dimension_count": hd, "llama.vocab_size": c.vocab_size, "tokenizer.ggml.model": "llama",
    "llama.expert_count": c.num_local_experts, "llama.expert_used_count": c.num_experts_per_tok,
};
for (const [k, v] of Object.entries(want)) if (num(m[k]) !== v) fail(`${k} = ${m[k]}, the config says ${v}`);
const close = (a, b) => Math.abs(a - b) <= 1e-6 * Math.abs(b);
if (!close(m["llama.rope.freq_base"], c.rope_theta)) fail(`rope.freq_base ${m["llama.rope.freq_base"]}`);
if (!close(m["llama.attention.layer_norm_rms_epsilon"], c.rms_norm_eps)) fail("layer_norm_rms_epsilon");
for (const k of ["tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"])
    if (!m[k] || m[k].length !== c.vocab_size) fail(`${k} has ${m[k] && m[k].length} entries, not ${c.vocab_size}`);
const bytes = m["tokenizer.ggml.tokens"].filter((t) => /^<0x[0-9A-F]{2}>$/.test(t)).length;
if (bytes !== 256) fail(`${bytes} byte pieces, not 256`);
const E = c.num_local_experts, H = c.intermediate_size, C = c.hidden_size;
const shapes = { "token_embd.weight": [C, c.vocab_size], "output.weight": [C, c.vocab_size], "output_norm.weight": [C],
    "blk.0.attn_q.weight": [C, C], "blk.0.attn_k.weight": [C, c.num_key_value_heads * hd],
    "blk.0.ffn_gate_inp.weight": [C, E], "blk.0.ffn_gate_exps.weight": [C, H, E],
    "blk.0.ffn_up_exps.weight": [C, H, E], "blk.0.ffn_down_exps.weight": [H, C, E] };
for (const [n, s] of Object.entries(shapes)) {
    const t = tensorInfos.find((x) => x.name === n);
    if (!t) fail(`no tensor ${n}`);
    const got = t.shape.map(num);
    if (JSON.stringify(got) !== JSON.stringify(s)) fail(`${n} has ggml shape ${got}, not ${s}`);
}
const perLayer = 10;   // norms 2, q k v o, router, 3 stacked expert tensors
if (tensorInfos.length !== 3 + perLayer * c.num_hidden_layers) fail(`${tensorInfos.length} tensors`);
console.log(`llama_meta: ${path}: ${Object.keys(want).length + 2} keys, ${tensorInfos.length} tensors as the config says`);
