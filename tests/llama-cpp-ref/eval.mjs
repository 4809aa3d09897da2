// Loads a GGUF with node-llama-cpp (llama.cpp, CPU) and writes, for each window of
// ctx token ids, log p(v | prefix) for positions 0..ctx-2 as float32 (ctx-1, vocab).
// usage: node eval.mjs MODEL.gguf TOKENS.u32 CTX WINDOWS OUT.f32
import {getLlama} from "node-llama-cpp";
import fs from "node:fs";

const [model, tokPath, ctxS, winS, out] = process.argv.slice(2);
const ctx = Number(ctxS), windows = Number(winS);
const buf = fs.readFileSync(tokPath);
const ids = new Uint32Array(buf.buffer, buf.byteOffset, Math.floor(buf.length / 4));
if (ids.length < ctx * windows)
    throw new Error(`${tokPath}: ${ids.length} tokens, need ${ctx * windows}`);

const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const m = await llama.loadModel({modelPath: model, gpuLayers: 0});
const vocab = m.tokens.length ?? m.fileInfo.metadata.llama.vocab_size;
// LB_LLAMA_EXACT=1: F32 KV cache, no flash attention (llama.cpp's default keeps K/V
// and the attention products in F16)
const exact = process.env.LB_LLAMA_EXACT === "1";
const c = await m.createContext({contextSize: ctx, batchSize: ctx, threads: 1,
    ...(exact ? {flashAttention: false, experimentalKvCacheKeyType: "F32",
                 experimentalKvCacheValueType: "F32"} : {})});
const fd = fs.openSync(out, "w");
const seq = c.getSequence();
for (let w = 0; w < windows; w++) {
    await seq.clearHistory(); // every window starts from an empty KV cache
    const input = [];
    for (let p = 0; p < ctx; p++)
        input.push(p < ctx - 1 ? [ids[w * ctx + p], {generateNext: {probabilities: true}}]
                               : ids[w * ctx + p]);
    const res = await seq.controlledEvaluate(input);
    const lp = new Float32Array((ctx - 1) * vocab);
    for (let p = 0; p < ctx - 1; p++) {
        const probs = res[p]?.next?.probabilities;
        if (!probs || probs.size !== vocab)
            throw new Error(`window ${w} position ${p}: ${probs ? probs.size : 0} probabilities, want ${vocab}`);
        for (const [tok, pr] of probs)
            lp[p * vocab + tok] = Math.log(pr);
    }
    fs.writeSync(fd, Buffer.from(lp.buffer));
}
seq.dispose();
fs.closeSync(fd);
console.log(JSON.stringify({model, ctx, windows, vocab}));
await c.dispose();
await m.dispose();
