#!/usr/bin/env python3
"""bench/kl_bpw_targets.py: the --target-bpw rows of bench/target_bpw.py's results
(one proxy, default kl) as bench/kl_bpw.sh lines, family "target-bpw", so that
bench/kl_bpw_plot.sh draws them beside the uniform settings:

  python3 bench/kl_bpw_targets.py bench/results-target-bpw-kl.jsonl [PROXY] \
      >> docs/kl-bpw-stories260K.jsonl
  bench/kl_bpw_plot.sh

Each (target, rotate) pair appears once (the results file may repeat a run)."""
import json
import sys

src = sys.argv[1]
proxy = sys.argv[2] if len(sys.argv) > 2 else "kl"
seen = set()
for line in open(src):
    if not line.strip().startswith("{"):
        continue
    r = json.loads(line)
    if r.get("kind") != "target" or r.get("proxy") != proxy:
        continue
    key = (r["target"], r["rotate"])
    if key in seen:
        continue
    seen.add(key)
    print(json.dumps({"bench": "kl_bpw", "model": "stories260K", "family": "target-bpw",
                      "config": "target %g (%s)" % (r["target"], proxy),
                      "rotate": r["rotate"], "seed": 0,
                      "args": "--target-bpw %g%s" % (r["target"],
                                                     " --rotate hadamard"
                                                     if r["rotate"] == "hadamard" else ""),
                      "bpw": r["bpw"], "kl": r["kl"], "ppl": r["ppl"], "top1": r["top1"],
                      "source": src}))
