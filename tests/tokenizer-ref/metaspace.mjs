// Writes a Metaspace variant of a SentencePiece-style tokenizer.json (the
// layout of newer LLaMA-2 / Mistral files: no normalizer, pre_tokenizer
// Metaspace with prepend_scheme "first", split false) into OUT_DIR.
// Usage: node metaspace.mjs SRC_DIR OUT_DIR
import { readFileSync, writeFileSync, copyFileSync } from "node:fs";
const [src, out] = process.argv.slice(2);
const j = JSON.parse(readFileSync(`${src}/tokenizer.json`, "utf8"));
j.normalizer = null;
j.pre_tokenizer = { type: "Metaspace", replacement: "\u2581", prepend_scheme: "first", split: false };
writeFileSync(`${out}/tokenizer.json`, JSON.stringify(j));
copyFileSync(`${src}/tokenizer_config.json`, `${out}/tokenizer_config.json`);
