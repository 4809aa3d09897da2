// Writes a smaller BPE tokenizer derived from a SentencePiece-style
// tokenizer.json with byte fallback: the first merges in rank order (a BPE
// stopped after K merges is itself a valid BPE), keeping the special and
// <0xXX> byte ids, until the vocabulary has V pieces. Used to give a
// synthetic model (vocab V) a real tokenizer.
// Usage: node truncate.mjs SRC_DIR OUT_DIR V
import { readFileSync, writeFileSync, copyFileSync } from "node:fs";
const [src, out, vs] = process.argv.slice(2);
const V = Number(vs);
const j = JSON.parse(readFileSync(`${src}/tokenizer.json`, "utf8"));
const old = j.model.vocab;
const vocab = {};
let next = 0;
for (const [k, id] of Object.entries(old))
  if (id < 3 || /^<0x[0-9A-F]{2}>$/.test(k)) { vocab[k] = id; next = Math.max(next, id + 1); }
const merges = [];
for (const m of j.model.merges) {
  const [a, b] = Array.isArray(m) ? m : m.split(" ");
  const need = [a, b, a + b].filter((x, i, arr) => !(x in vocab) && arr.indexOf(x) === i);
  if (next + need.length > V) break;
  for (const x of need) vocab[x] = next++;
  merges.push(m);
}
j.model.vocab = vocab;
j.model.merges = merges;
writeFileSync(`${out}/tokenizer.json`, JSON.stringify(j));
copyFileSync(`${src}/tokenizer_config.json`, `${out}/tokenizer_config.json`);
console.log(JSON.stringify({ vocab: next, merges: merges.length }));
