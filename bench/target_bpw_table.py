#!/usr/bin/env python3
"""Markdown tables for docs/results-target-bpw.md from bench/target_bpw.py's JSON lines.
usage: bench/target_bpw_table.py RESULTS.jsonl [UNIFORM.jsonl]
With UNIFORM (docs/kl-bpw-stories260K.jsonl: every uniform setting, both rotations,
all seeds), each target row is compared with the uniform points: the cheapest one
that stores at least as many bits and reaches at most the target's KL."""
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
    kl = all("kl_proxy" in r for r in pairs)  # the kl proxy (proxy-v2 measurements)
    print("| tensor | candidate | bpw | KL | rel_err | out_err | out_abs | block_err | block_abs |"
          + (" kl (proxy) |" if kl else ""))
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if kl else ""))
    for r in pairs:
        print("| %s | `%s` | %.3f | %.4f | %.4g | %.4g | %.4g | %.4g | %.4g |" % (
            r["tensor"].replace("model.layers.", "L").replace(".weight", ""), r["candidate"],
            r["bpw"], r["kl"], r["rel_err"], r["out_err"], r["out_abs"], r["block_err"],
            r["block_abs"]) + (" %.4g |" % r["kl_proxy"] if kl else ""))
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
    print()
cost = [r for r in rows if r["kind"] == "cost"]
if cost:
    print("| rep | build | measure jobs | measure-job seconds | block 0 | block L-1 |")
    print("|---:|---|---:|---:|---:|---:|")
    for rep in sorted({r["rep"] for r in cost}):
        for b in ("build", "base"):
            c = [r for r in cost if r["rep"] == rep and r["binary"] == b]
            if c:
                print("| %d | %s | %d | %.1f | %.1f | %.1f |" % (
                    rep, b, sum(r["jobs"] for r in c), sum(r["measure_seconds"] for r in c),
                    c[0]["measure_seconds"], c[-1]["measure_seconds"]))

if len(sys.argv) > 2:
    uni = [json.loads(l) for l in open(sys.argv[2]) if l.startswith("{")]
    uni = [u for u in uni if u["config"] != "fp32"]
    print("| proxy | rotate | target | bpw | KL | cheapest uniform with bpw >= and KL <= | its bpw | its KL |")
    print("|---|---|---:|---:|---:|---|---:|---:|")
    for r in [r for r in rows if r["kind"] == "target"]:
        m = sorted((u for u in uni if u["bpw"] >= r["bpw"] - 1e-9 and u["kl"] <= r["kl"]),
                   key=lambda u: (u["bpw"], u["kl"]))
        w = ("%s, rotate %s, seed %d | %.4f | %.4f" % (m[0]["config"], m[0]["rotate"],
             m[0]["seed"], m[0]["bpw"], m[0]["kl"]) if m else "none | |")
        print("| %s | %s | %g | %.4f | %.4f | %s |" % (r["proxy"], r["rotate"], r["target"],
                                                      r["bpw"], r["kl"], w))
