// Tokenizes TEXT with the vocabulary of a GGUF (llama.cpp through node-llama-cpp)
// and detokenizes the ids again; prints {"ids": [...], "text": "..."}.
// usage: node tokenize.mjs MODEL.gguf TEXT
import {getLlama} from "node-llama-cpp";

const [model, text] = process.argv.slice(2);
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const m = await llama.loadModel({modelPath: model, gpuLayers: 0});
const ids = m.tokenize(text);
console.log(JSON.stringify({ids: Array.from(ids), text: m.detokenize(ids), vocab: m.tokens.length ?? null}));
await m.dispose();
