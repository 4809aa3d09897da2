// Second LLaMA-1/2 reference: llama-tokenizer-js (its own SentencePiece-style
// BPE with the LLaMA vocabulary embedded; it ships no tokenizer.json).
// Encodes each line (with its \n) without BOS, as ref.mjs --lines.
// Usage: node ref-llamajs.mjs TEXT_FILE OUT.u32
import { readFileSync, writeFileSync } from "node:fs";
import llamaTokenizer from "llama-tokenizer-js";
const [textPath, outPath] = process.argv.slice(2);
const text = readFileSync(textPath).toString("utf8");
const ids = [];
for (const line of text.split(/(?<=\n)/)) if (line.length) ids.push(...llamaTokenizer.encode(line, false, true));
writeFileSync(outPath, Buffer.from(new Uint32Array(ids).buffer));
