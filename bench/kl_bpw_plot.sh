#!/usr/bin/env bash
# bench/kl_bpw_plot.sh: draws the JSON lines of bench/kl_bpw.sh with gnuplot
# (bench/kl_bpw.gp; Debian gnuplot-nox, in deploy/install-deps.sh).
#
#   bench/kl_bpw_plot.sh [JSONL [PNG]]   (default docs/kl-bpw-stories260K.jsonl / .png)
#
# Writes the gnuplot data next to the PNG (same name, .dat: bpw, KL, ppl, top-1, label),
# then the PNG (GNUPLOT names another gnuplot binary). Rows with an error, and fp32 (KL 0, no place on a log axis), are left out.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
JSONL=${1:-$SRC/docs/kl-bpw-stories260K.jsonl}
PNG=${2:-${JSONL%.jsonl}.png}
DAT=${PNG%.png}.dat
[[ -r $JSONL ]] || { echo "kl_bpw_plot: $JSONL not readable (make it with bench/kl_bpw.sh BUILD > $JSONL)" >&2; exit 1; }
nfam=$(python3 - "$JSONL" "$DAT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
rows = [r for r in rows if "error" not in r and r.get("family") != "fp32" and r.get("kl", 0) > 0]
fams = []
for r in rows:
    if r["family"] not in fams:
        fams.append(r["family"])
out = ["# bench/kl_bpw_plot.sh from %s: blocks per family (rotate none, then hadamard "
       "seed 0), then the extra rotation seeds; columns: bpw KL ppl top1 label" % sys.argv[1]]
def block(title, sel):
    out.append('"%s"' % title)
    sel = sorted(sel, key=lambda r: r["bpw"])
    if not sel:
        out.append("NaN NaN NaN NaN \"-\"")
    for r in sel:
        out.append('%.6f %.6f %.4f %.4f "%s"' % (r["bpw"], r["kl"], r["ppl"], r["top1"],
                                                  r["config"] + " seed %d" % r["seed"]))
    out.append("")
    out.append("")
for f in fams:
    block(f + " (none)", [r for r in rows if r["family"] == f and r["rotate"] != "hadamard"])
    block(f + " (hadamard)", [r for r in rows if r["family"] == f and r["rotate"] == "hadamard"
                              and r["seed"] == 0])
block("hadamard, other seeds", [r for r in rows if r["rotate"] == "hadamard" and r["seed"] != 0])
open(sys.argv[2], "w").write("\n".join(out))
print(len(fams))
PY
)
GNUPLOT=${GNUPLOT:-gnuplot}
if ! command -v "$GNUPLOT" >/dev/null 2>&1; then
    echo "kl_bpw_plot: gnuplot not found, wrote $DAT but no PNG (install gnuplot-nox: deploy/install-deps.sh)" >&2
    exit 1
fi
"$GNUPLOT" -e "dat='$DAT'; png='$PNG'; nfam=$nfam" "$SRC/bench/kl_bpw.gp"
echo "kl_bpw_plot: $PNG ($nfam families) from $DAT"
