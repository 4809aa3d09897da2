#!/usr/bin/env python3
"""Markdown tables from the JSON lines of bench/kl_bpw.sh:

  bench/kl_bpw_table.py front  docs/kl-bpw-stories260K.jsonl   # the Pareto front
  bench/kl_bpw_table.py rotate docs/kl-bpw-stories260K.jsonl   # rotation, per config
  bench/kl_bpw_table.py method docs/kl-bpw-stories260K.jsonl   # rotation, per method

front: the runs no other run beats on both honest bpw and KL (lower or equal bpw and
lower KL), all seeds included. rotate: KL without and with --rotate hadamard (seed 0,
and the mean/min/max over all seeds run). method: the mean KL change over a method's
configurations, and how many configurations it helped (mean over seeds < none)."""
import json
import sys
from collections import OrderedDict

what, path = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(path) if l.strip().startswith("{")]
ok = [r for r in rows if "error" not in r and r["config"] != "fp32"]


def rot(r):
    return "hadamard s%d" % r["seed"] if r["rotate"] == "hadamard" else r["rotate"]


if what == "front":
    front, best = [], float("inf")
    for r in sorted(ok, key=lambda r: (r["bpw"], r["kl"])):
        if r["kl"] < best:
            front.append(r)
            best = r["kl"]
    print("| config | rotate | bpw | KL | ppl | top-1 |")
    print("|---|---|---:|---:|---:|---:|")
    for r in front:
        print("| %s | %s | %.4f | %.4f | %.2f | %.3f |" % (r["config"], rot(r), r["bpw"], r["kl"],
                                                         r["ppl"], r["top1"]))
    sys.exit(0)

cfg = OrderedDict()
for r in ok:
    c = cfg.setdefault(r["config"], dict(method=r["args"].split("--method ")[1].split()[0],
                                         none=None, had={}))
    if r["rotate"] == "hadamard":
        c["had"][r["seed"]] = r
    elif r["rotate"] == "none":
        c["none"] = r

if what == "rotate":
    print("| config | bpw none / hadamard | KL none | KL hadamard s0 | ΔKL s0 | seeds | ΔKL mean (min..max) |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name, c in cfg.items():
        n, h = c["none"], c["had"]
        if n is None or 0 not in h:
            continue
        d = [h[s]["kl"] - n["kl"] for s in sorted(h)]
        spread = "%+.3f (%+.3f..%+.3f)" % (sum(d) / len(d), min(d), max(d)) if len(d) > 1 else ""
        print("| %s | %.4f / %.4f | %.4f | %.4f | %+.3f | %d | %s |" % (
            name, n["bpw"], h[0]["bpw"], n["kl"], h[0]["kl"], d[0], len(d), spread))
elif what == "method":
    per = OrderedDict()
    for name, c in cfg.items():
        n, h = c["none"], c["had"]
        if n is None or not h:
            continue
        d = sum(h[s]["kl"] for s in h) / len(h) - n["kl"]
        per.setdefault(c["method"], []).append(d)
    print("| method | configs | helped | mean ΔKL | range of ΔKL |")
    print("|---|---:|---:|---:|---|")
    for m, ds in per.items():
        print("| %s | %d | %d | %+.3f | %+.3f..%+.3f |" % (m, len(ds), sum(1 for d in ds if d < 0),
                                                         sum(ds) / len(ds), min(ds), max(ds)))
else:
    sys.exit("kl_bpw_table: first argument is front, rotate or method")
