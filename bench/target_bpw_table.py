#!/usr/bin/env python3
"""Markdown tables for docs/results-target-bpw.md from bench/target_bpw.py's JSON lines.
usage: bench/target_bpw_table.py bench/results-target-bpw.jsonl"""
import json, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
floor = [r for r in rows if r["kind"] == "pair" and not r["tensor"]]
pairs = [r for r in rows if r["kind"] == "pair" and r["tensor"]]
if floor:
    print("Floor (every linear RTN 8): KL %.4f, ppl %.2f\n" % (floor[0]["kl"], floor[0]["ppl"]))
corr = [r for r in rows if r["kind"] == "corr"]
if corr:
    print("| proxy | Spearman vs KL | Pearson vs KL | pairs |\n|---|---:|---:|---:|")
    for r in corr:
        print("| %s | %.3f | %.3f | %d |" % (r["proxy"], r["spearman"], r["pearson"], r["n"]))
    print()
if pairs:
    print("| tensor | candidate | bpw | KL | rel_err | out_err | out_abs | block_err | block_abs |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in pairs:
        print("| %s | `%s` | %.3f | %.4f | %.4g | %.4g | %.4g | %.4g | %.4g |" % (
            r["tensor"].replace("model.layers.", "L").replace(".weight", ""), r["candidate"],
            r["bpw"], r["kl"], r["rel_err"], r["out_err"], r["out_abs"], r["block_err"],
            r["block_abs"]))
    print()
tg = [r for r in rows if r["kind"] in ("target", "uniform")]
if tg:
    print("| run | proxy | rotate | target | honest bpw | KL | ppl | top-1 | measure jobs run |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    seen = set()
    for r in tg:
        key = (r["kind"], r.get("proxy"), r.get("rotate"), r.get("target"), r.get("config"))
        if key in seen:  # the 2.5 run of the default proxy appears in two steps
            continue
        seen.add(key)
        if r["kind"] == "target":
            print("| --target-bpw | %s | %s | %g | %.4f | %.4f | %.2f | %.3f | %s |" % (
                r["proxy"], r["rotate"], r["target"], r["bpw"], r["kl"], r["ppl"], r["top1"],
                r["measure_jobs_run"]))
        else:
            print("| uniform `%s` | | | | %.4f | %.4f | %.2f | %.3f | |" % (
                r["config"], r["bpw"], r["kl"], r["ppl"], r["top1"]))
