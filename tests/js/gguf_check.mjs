// gguf_check.mjs FILE ALIGNMENT VALUES.json: reads a GGUF file that tests/test_gguf.c wrote (its
// "rich" file) with @huggingface/gguf, an independent reader, and checks every metadata key, value
// and type, every tensor's name, ggml shape, type and offset, and the tensor data (decoded here
// from the file's bytes at the data offset the package reports) against the float values the file
// was written from. Exits non-zero with a message on the first difference.
import { gguf, GGUFValueType as T } from "@huggingface/gguf";
import { readFileSync } from "node:fs";

const [path, alignArg, valuesPath] = process.argv.slice(2);
const align = Number(alignArg);
const fail = (msg) => { console.error(`gguf_check: ${path}: ${msg}`); process.exit(1); };
const same = (a, b) => JSON.stringify(a, (k, v) => (typeof v === "bigint" ? `${v}n` : v)) ===
                       JSON.stringify(b, (k, v) => (typeof v === "bigint" ? `${v}n` : v));

const { metadata, typedMetadata, tensorInfos, tensorDataOffset } =
    await gguf(path, { allowLocalFile: true, typedMetadata: true });

// what test_gguf.c's write_rich adds, in order: [key, type, value(, element type)]
const want = [
    ["general.architecture", T.STRING, "moelm"],
    ...(align !== 32 ? [["general.alignment", T.UINT32, align]] : []),
    ["t.u8", T.UINT8, 200], ["t.i8", T.INT8, -100], ["t.u16", T.UINT16, 65535], ["t.i16", T.INT16, -32768],
    ["t.u32", T.UINT32, 4000000000], ["t.i32", T.INT32, -7], ["t.f32", T.FLOAT32, Math.fround(0.1)],
    ["t.bool", T.BOOL, true], ["t.u64", T.UINT64, 1n << 40n], ["t.i64", T.INT64, -(1n << 63n)],
    ["t.f64", T.FLOAT64, -1 / 3],
    ["t.strs", T.ARRAY, ["<unk>", "", "h\u00e9llo", "a b"], T.STRING],
    ["t.i32s", T.ARRAY, [-1, 0, 2147483647, -2147483648], T.INT32],
    ["t.f32s", T.ARRAY, [1.5, -0, Math.fround(3e38)], T.FLOAT32],
    ["t.bools", T.ARRAY, [true, false, true], T.BOOL],
    ["t.u64s", T.ARRAY, [0n, (1n << 64n) - 1n], T.UINT64],
    ["t.empty", T.ARRAY, [], T.UINT8],
    ["t.nostrs", T.ARRAY, [], T.STRING],
];
if (metadata.version !== 3) fail(`version ${metadata.version}`);
if (metadata.kv_count !== BigInt(want.length)) fail(`kv_count ${metadata.kv_count}, want ${want.length}`);
if (metadata.tensor_count !== 4n) fail(`tensor_count ${metadata.tensor_count}`);
const keys = Object.keys(metadata).filter((k) => !["version", "tensor_count", "kv_count"].includes(k));
if (!same(keys, want.map((w) => w[0]))) fail(`keys ${keys} (order or set differs)`);
for (const [key, type, value, sub] of want) {
    const got = typedMetadata[key];
    if (got.type !== type) fail(`${key}: type ${got.type}, want ${type}`);
    if (sub !== undefined && got.subType !== sub) fail(`${key}: element type ${got.subType}, want ${sub}`);
    if (!same(got.value, value) || (Object.is(value, -0) !== Object.is(got.value, -0)))
        fail(`${key}: value ${String(got.value)}, want ${String(value)}`);
}

// tensors: ggml order (ne[0] first), types, offsets packed at the alignment
const tensors = [["f32.weight", [5n, 3n], 0, 15 * 4], ["f16.weight", [4n, 3n, 2n], 1, 24 * 2],
                 ["bf16.bias", [7n], 30, 7 * 2], ["blk.0.ffn_up.weight", [96n, 5n], 8, 5 * 3 * 34]];
let off = 0n;
for (let i = 0; i < tensors.length; i++) {
    const [name, shape, dtype, bytes] = tensors[i], t = tensorInfos[i];
    if (t.name !== name || !same(t.shape, shape) || t.dtype !== dtype || t.offset !== off || t.n_dims !== shape.length)
        fail(`tensor ${i}: ${t.name} ${t.shape} type ${t.dtype} offset ${t.offset}, want ${name} ${shape} ${dtype} ${off}`);
    off += (BigInt(bytes) + BigInt(align) - 1n) / BigInt(align) * BigInt(align);
}
if (tensorDataOffset % BigInt(align) !== 0n) fail(`data offset ${tensorDataOffset} not aligned to ${align}`);

// data, decoded here: F32 exact, F16 / BF16 within their rounding, Q8_0 by ggml's rule
const file = readFileSync(path), values = JSON.parse(readFileSync(valuesPath, "utf8"));
const half = (h) => {
    const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 31, m = h & 1023;
    return e === 0 ? s * m * 2 ** -24 : e === 31 ? (m ? NaN : s * Infinity) : s * (1024 + m) * 2 ** (e - 25);
};
const at = (i) => Number(tensorDataOffset + tensorInfos[i].offset);
const x32 = values["f32.weight"];
for (let k = 0; k < x32.length; k++)
    if (file.readFloatLE(at(0) + 4 * k) !== Math.fround(x32[k])) fail(`f32.weight[${k}]`);
const x16 = values["f16.weight"];
for (let k = 0; k < x16.length; k++) {
    const v = half(file.readUInt16LE(at(1) + 2 * k));
    if (Math.abs(v - x16[k]) > Math.abs(x16[k]) * 2 ** -11) fail(`f16.weight[${k}] = ${v}, from ${x16[k]}`);
}
const xb = values["bf16.bias"];
for (let k = 0; k < xb.length; k++) {
    const buf = Buffer.alloc(4);
    buf.writeUInt16LE(file.readUInt16LE(at(2) + 2 * k), 2);
    const v = buf.readFloatLE(0);
    if (Math.abs(v - xb[k]) > Math.abs(xb[k]) * 2 ** -8) fail(`bf16.bias[${k}] = ${v}, from ${xb[k]}`);
}
const xq = values["blk.0.ffn_up.weight"];
for (let b = 0; b < xq.length / 32; b++) {
    const base = at(3) + 34 * b, d = half(file.readUInt16LE(base));
    const blk = xq.slice(32 * b, 32 * b + 32), amax = Math.max(...blk.map(Math.abs));
    let qmax = 0;
    for (let j = 0; j < 32; j++) {
        const q = file.readInt8(base + 2 + j), v = d * q;
        qmax = Math.max(qmax, Math.abs(q));
        if (Math.abs(v - blk[j]) > amax / 254 + 127 * Math.max(amax / 127 * 2 ** -11, 2 ** -25))
            fail(`blk.0.ffn_up.weight block ${b}[${j}] = ${v}, from ${blk[j]}`);
    }
    if (qmax !== (amax > 0 ? 127 : 0)) fail(`block ${b}: max |q| ${qmax}`);
}
console.log(`gguf_check: ${path}: ${want.length} keys, 4 tensors and their data as written`);
