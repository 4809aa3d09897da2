#!/usr/bin/env python3
"""Markdown tables for docs/results-distributed.md from the JSON lines of
bench/faults.sh and bench/simulate.py:
    bench/dist_tables.py FILE.jsonl...   (each line goes to its table)"""
import json
import sys

rows = []
for path in sys.argv[1:]:
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))

trials = [r for r in rows if r.get("bench") == "faults" and "trial" in r]
if trials:
    print("| trial | seed | fault | at s | wall s | clean s | extra s | identical |")
    print("|---:|---:|---|---:|---:|---:|---:|---|")
    for r in trials:
        at = "-" if r["at_s"] is None else "%.1f" % r["at_s"]
        note = (" (%s)" % r["note"]) if r.get("note") else ""
        print("| %d | %d | %s | %s | %.1f | %.1f | %.1f | %s%s |" % (
            r["trial"], r["seed"], r["fault"], at, r["wall_s"], r["clean_wall_s"], r["extra_s"],
            "yes" if r["identical"] else "**no**", note))
    print()
for r in rows:
    if r.get("bench") == "faults" and r.get("summary"):
        print("| fault | trials | median extra s | max extra s |")
        print("|---|---:|---:|---:|")
        for k, v in r["by_fault"].items():
            print("| %s | %d | %.1f | %.1f |" % (k, v["n"], v["median_extra_s"], v["max_extra_s"]))
        print("| **all** | %d | %.1f | %.1f |" % (r["trials"], r["median_extra_s"], r["max_extra_s"]))
        print("\nall identical: %s; coordinator failures: %d; faults that missed the run: %d\n" % (
            r["all_identical"], r["failed"], r["missed"]))

val = [r for r in rows if r.get("bench") == "simulate" and r.get("mode") == "validate" and "config" in r]
if val:
    print("| run | measured wall s | predicted wall s | error |")
    print("|---|---:|---:|---:|")
    for r in val:
        print("| %s | %.1f | %.1f | %+.1f%% |" % (r["config"], r["measured_wall_s"], r["predicted_wall_s"],
                                              100 * r["error"]))
    print()

proj = [r for r in rows if r.get("bench") == "simulate" and r.get("mode") == "project" and "nodes" in r
        and r.get("plan") != "embedded"]
shapes = []
for r in proj:
    if (r["shape"], r["bandwidth_gbs"], r["cores"]) not in shapes:
        shapes.append((r["shape"], r["bandwidth_gbs"], r["cores"]))
for sh, bw, cores in shapes:
    rs = [r for r in proj if (r["shape"], r["bandwidth_gbs"], r["cores"]) == (sh, bw, cores)]
    emb = next((r for r in rows if r.get("mode") == "project" and r.get("plan") == "embedded"
                and r.get("shape") == sh), None)
    r0 = rs[0]
    print("%s, %d layers, %d tokens (ctx %d), %d cores per node, %.2f GB/s per link%s:\n" % (
        sh, r0["layers"], r0["tokens"], r0["ctx"], r0["cores"], r0["bandwidth_gbs"],
        ", embedded on one node %.1f h" % emb["wall_h"] if emb else ""))
    print("| plan | N | wall h | speed-up vs embedded | efficiency | serial chain h | link busy h | moved GB | per block s: collect / reduce / quantize / propagate | bound |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rs:
        pb = r.get("per_block_s", {})
        print("| %s%s | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.0f | %s | %s |" % (
            r["plan"], " (K=%d)" % r["chunks"] if r["plan"] == "chunked" else "", r["nodes"],
            r["wall_h"], r["speedup_vs_embedded"], r["efficiency"], r["serial_chain_s"] / 3600,
            r["coordinator_link_busy_s"] / 3600, r["moved_gb"],
            " / ".join("%.0f" % pb[k] if k in pb else "-" for k in ("collect", "reduce", "quantize", "propagate")),
            r["bound"]))
    print()
