#!/usr/bin/env python3
"""Turns the quality JSON lines of bench/pipeline.sh into the markdown table of
docs/results.md:  bench/results_table.py bench/results-stories260K.jsonl"""
import json
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
print("| config | command-line options | bpw (exact, all stored bits) | KL vs fp | ppl | top-1 agree |")
print("|---|---|---:|---:|---:|---:|")
for r in rows:
    if r.get("bench") != "quality":
        continue
    print("| %s | `%s` | %.4f | %.4f | %.2f | %.3f |" % (
        r["config"], r.get("args", "(source)"), r["bpw"], r["kl"], r["ppl"], r["top1"]))
