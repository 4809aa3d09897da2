// JS reference: tokenizes a text file with @huggingface/tokenizers (pure JS)
// and writes the ids as raw little-endian uint32.
// Usage: node ref.mjs TOKENIZER_DIR TEXT_FILE OUT.u32 [--no-special] [--lines] [--bench]
// --lines encodes each line (with its \n) on its own, without special tokens,
// and concatenates the ids (the llama2 file has no pre-tokenizer, so the
// whole file is one BPE word, which takes this reference minutes).
// The text is read as Node reads UTF-8 (invalid bytes become U+FFFD).
// --bench prints one JSON line with tokens/s (load time excluded).
import { readFileSync, writeFileSync, existsSync } from "node:fs";
import { Tokenizer } from "@huggingface/tokenizers";

const [dir, textPath, outPath, ...flags] = process.argv.slice(2);
if (!dir || !textPath || !outPath) {
  console.error("usage: node ref.mjs TOKENIZER_DIR TEXT_FILE OUT.u32 [--no-special] [--bench]");
  process.exit(2);
}
const json = JSON.parse(readFileSync(`${dir}/tokenizer.json`, "utf8"));
const cfgPath = `${dir}/tokenizer_config.json`;
const cfg = existsSync(cfgPath) ? JSON.parse(readFileSync(cfgPath, "utf8")) : {};
const tok = new Tokenizer(json, cfg);
const text = readFileSync(textPath).toString("utf8");
const addSpecial = !flags.includes("--no-special");
const t0 = process.hrtime.bigint();
const c0 = process.cpuUsage();
let ids;
if (flags.includes("--lines")) {
  ids = [];
  for (const line of text.split(/(?<=\n)/)) ids.push(...tok.encode(line, { add_special_tokens: false }).ids);
} else {
  ids = tok.encode(text, { add_special_tokens: addSpecial }).ids;
}
const dt = Number(process.hrtime.bigint() - t0) / 1e9;
const cu = process.cpuUsage(c0);
const dc = (cu.user + cu.system) / 1e6; // all of node's threads (GC included)
const out = new Uint32Array(ids.length);
for (let i = 0; i < ids.length; i++) out[i] = ids[i];
writeFileSync(outPath, Buffer.from(out.buffer));
if (flags.includes("--bench"))
  console.log(JSON.stringify({ bench: "tokenize", impl: "js:@huggingface/tokenizers@0.2.0",
    tokenizer: dir.split("/").slice(-2).join("/"), mode: flags.includes("--lines") ? "lines" : "whole",
    bytes: Buffer.byteLength(text), tokens: ids.length, seconds: +dt.toFixed(4),
    cpu_seconds: +dc.toFixed(4), tokens_per_s: Math.round(ids.length / dt),
    tokens_per_cpu_s: Math.round(ids.length / dc), threads: 1 }));
