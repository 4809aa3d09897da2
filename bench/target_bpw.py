#!/usr/bin/env python3
"""--target-bpw proxy study and target sweep on stories260K (docs/results-target-bpw.md).

usage: bench/target_bpw.py BUILD WORKDIR [steps...]
  steps: pairs targets sweep uniform (default: all four); corr (not in the default):
  the correlations of the current measurement's proxies with the pair KLs recorded in
  $PAIRS (default bench/results-target-bpw.jsonl) - the pairs are deterministic, so
  a new proxy needs no rerun of the 40 single-tensor quantizations; cost (not in the
  default): measure-job seconds per block for a 2-entry menu with this build and,
  when $BASE_BIN is set, with that lowbit binary (e.g. one built before the kl
  proxy), run one after the other (noisy on a shared machine: compare the ratio);
  scaled (not in the default): how far a cheap depth factor gets - base proxy x s_b,
  s_b = the median of kl / base over block b's measurements (fitted on the kl
  measurement itself, an upper bound for a per-block factor), vs the pair KLs in
  $PAIRS (a corr step's output)

Prints JSON lines (stdout):
  {"kind":"pair", tensor, candidate, kl, ppl, <every proxy of the measurement>}
      one tensor quantized with one candidate, every other linear RTN 8 (the
      "floor" line: all RTN 8), KL(fp || model) on stories260K-eval.u32
  {"kind":"corr", proxy, spearman, pearson, n}   proxy vs (kl - floor) over the pairs
  {"kind":"target", proxy, target, rotate, bpw, kl, ppl, top1}
  {"kind":"uniform", config, bpw, kl, ppl, top1}   one setting for every linear
The measurement is the one --target-bpw itself runs (WORKDIR/t*/.lowbit/measurement.json).
Fixtures: $LOWBIT_SHARED or ../shared. Single runs on a shared 2-core machine: timings
are not reported; KL/ppl/bpw are deterministic."""
import json, math, os, re, shutil, subprocess, sys

build, work = sys.argv[1], sys.argv[2]
steps = sys.argv[3:] or ["pairs", "targets", "sweep", "uniform"]
here = os.path.dirname(os.path.abspath(__file__))
shared = os.environ.get("LOWBIT_SHARED", os.path.join(here, "..", "..", "shared"))
if not os.path.isdir(shared):
    shared = "/work/shared"
model = os.path.join(shared, "models/stories260K")
calib = os.path.join(shared, "data/stories260K-calib.u32")
evalt = os.path.join(shared, "data/stories260K-eval.u32")
bin_ = os.path.join(build, "lowbit")
base = ["--model", model, "--calib", calib, "--ctx", "256", "--threads", "2", "--json"]
PROXIES = ["rel_err", "out_err", "out_abs", "block_err", "block_abs", "kl"]
os.makedirs(work, exist_ok=True)


def emit(o):
    print(json.dumps(o, sort_keys=True), flush=True)


def run(args):
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("failed: %s\n%s" % (" ".join(args), r.stderr[-2000:] + r.stdout[-2000:]))
    return [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]


def evaluate(out):
    e = run([bin_, "eval", "--model", out, "--tokens", evalt, "--ctx", "256", "--ref", model,
             "--threads", "2", "--json"])[-1]
    return {"kl": e["kl"], "ppl": e["ppl"], "top1": e.get("top1")}


def quantize(out, extra):
    lines = run([bin_, "quantize", "--out", out, "--force"] + base + extra)
    done = [l for l in lines if l.get("event") == "done"][-1]
    meas = [l for l in lines if l.get("event") == "measurement"]
    return done, (meas[0]["measure_jobs_run"] if meas else None)


def target(out, b, proxy, rotate):
    extra = ["--target-bpw", str(b), "--proxy", proxy] + (["--rotate", rotate] if rotate else [])
    done, ran = quantize(out, extra)
    r = {"kind": "target", "target": b, "proxy": proxy, "rotate": rotate or "none",
         "bpw": done["bpw"], "measure_jobs_run": ran}
    r.update(evaluate(out))
    emit(r)
    return r


def rank(v):
    order = sorted(range(len(v)), key=lambda i: v[i])
    r = [0.0] * len(v)
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2.0
        i = j + 1
    return r


def pearson(x, y):
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sx = math.sqrt(sum((a - mx) ** 2 for a in x))
    sy = math.sqrt(sum((b - my) ** 2 for b in y))
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / (sx * sy)


def pk(k):
    """key of proxy k in a pair line ("kl" there is the pair's end-to-end KL)"""
    return "kl_proxy" if k == "kl" else k


def correlations(rows, floor):
    dk = [r["kl"] - floor["kl"] for r in rows]
    for k in PROXIES:
        x = [r[pk(k)] for r in rows]
        emit({"kind": "corr", "proxy": k, "n": len(rows), "pearson": pearson(x, dk),
              "spearman": pearson(rank(x), rank(dk))})


t = os.path.join(work, "t")
if "pairs" in steps:
    target(t, 2.5, "block_err", None)  # runs (or reuses) the measurement
    meas = json.load(open(os.path.join(t, ".lowbit", "measurement.json")))["tensors"]
    names = sorted(meas)
    p = os.path.join(work, "pair")
    quantize(p, ["--method", "rtn", "--bits", "8"])
    floor = evaluate(p)
    emit(dict(kind="pair", tensor="", candidate="floor: all rtn 8", **floor))
    rows = []
    for i in range(40):  # 40 pairs spread over tensors and candidates, deterministic
        name = names[(i * 8) % len(names)]
        cands = meas[name]
        c = cands[(i * 7 + i // len(names)) % len(cands)]
        if c["candidate"] == "rtn:bits=8":
            c = cands[0]
        ovr = re.escape(name) + "=" + c["candidate"]
        quantize(p, ["--method", "rtn", "--bits", "8", "--override", ovr])
        r = dict(kind="pair", tensor=name, candidate=c["candidate"], bpw=c["bpw"],
                 **{pk(k): c[k] for k in PROXIES}, **evaluate(p))
        emit(r)
        rows.append(r)
    shutil.rmtree(p, ignore_errors=True)
    correlations(rows, floor)
if "corr" in steps:
    target(t, 2.5, "block_err", None)  # runs (or reuses) the measurement
    meas = json.load(open(os.path.join(t, ".lowbit", "measurement.json")))["tensors"]
    old = [json.loads(l) for l in open(os.environ.get(
        "PAIRS", os.path.join(here, "results-target-bpw.jsonl")))]
    old = [r for r in old if r.get("kind") == "pair"]
    floor = [r for r in old if r["tensor"] == ""][0]
    emit(floor)
    rows = []
    p = os.path.join(work, "pair")
    for r in old:
        if not r["tensor"]:
            continue
        c = [c for c in meas[r["tensor"]] if c["candidate"] == r["candidate"]]
        r = {k: v for k, v in r.items() if k == "kl" or k not in PROXIES + ["kl_proxy"]}
        if not c:  # the menu entry changed since (pbllm got salient-group=128): rerun
            c = [c for c in meas[r["tensor"]] if c["candidate"].startswith(r["candidate"] + ",")]
            ovr = re.escape(r["tensor"]) + "=" + c[0]["candidate"]
            quantize(p, ["--method", "rtn", "--bits", "8", "--override", ovr])
            r.update(evaluate(p), candidate=c[0]["candidate"], bpw=c[0]["bpw"], rerun=True)
        r.update({pk(k): c[0][k] for k in PROXIES})
        emit(r)
        rows.append(r)
    shutil.rmtree(p, ignore_errors=True)
    correlations(rows, floor)
if "cost" in steps:
    bins = [("build", bin_)] + ([("base", os.environ["BASE_BIN"])] if "BASE_BIN" in os.environ else [])
    for rep in range(int(os.environ.get("REPS", "1"))):
        for tag, b in bins:
            d = os.path.join(work, "cost-" + tag)
            shutil.rmtree(d, ignore_errors=True)
            lines = run([b, "quantize", "--out", d] + base +
                        ["--target-bpw", "3", "--candidates", "gptq:bits=2;gptq:bits=4"])
            per = {}
            for l in lines:
                if l.get("event") == "job" and l.get("type") == "measure":
                    s_, n_ = per.get(l["block"], (0.0, 0))
                    per[l["block"]] = (s_ + l["seconds"], n_ + 1)
            for blk in sorted(per):
                emit({"kind": "cost", "binary": tag, "rep": rep, "block": blk,
                      "measure_seconds": per[blk][0], "jobs": per[blk][1]})
            shutil.rmtree(d, ignore_errors=True)
if "scaled" in steps:
    import statistics
    meas = json.load(open(os.path.join(t, ".lowbit", "measurement.json")))["tensors"]
    rows = [json.loads(l) for l in open(os.environ["PAIRS"])]
    rows += [json.loads(l) for l in open(os.path.join(here, "results-target-bpw.jsonl"))
             if '"floor: ' in l]
    rows = [r for r in rows if r.get("kind") == "pair"]
    floor = [r for r in rows if r["tensor"] == ""][0]
    rows = [r for r in rows if r["tensor"]]
    blk = lambda n: int(re.search(r"layers\.(\d+)\.", n).group(1))
    for b0 in ("rel_err", "out_err", "block_err"):
        sb = {}
        for n, cs in meas.items():
            for c in cs:
                if c[b0] > 0 and c["kl"] > 0:
                    sb.setdefault(blk(n), []).append(math.log(c["kl"] / c[b0]))
        sb = {b: math.exp(statistics.median(v)) for b, v in sb.items()}
        x = [r[b0] * sb[blk(r["tensor"])] for r in rows]
        dk = [r["kl"] - floor["kl"] for r in rows]
        emit({"kind": "corr", "proxy": b0 + "*s_b", "s_b": [sb[b] for b in sorted(sb)],
              "n": len(rows), "pearson": pearson(x, dk), "spearman": pearson(rank(x), rank(dk))})
if "targets" in steps:
    for b in [float(x) for x in os.environ.get("TARGETS", "2.5").split(",")]:
        for k in PROXIES:
            target(t, b, k, None)
if "sweep" in steps:
    proxy = os.environ.get("PROXY", "block_err")
    for rot in (None, "hadamard"):
        d = t if rot is None else os.path.join(work, "sweep-" + rot)
        for b in (2.0, 2.25, 2.5, 3.0, 4.0):
            target(d, b, proxy, rot)
if "uniform" in steps:
    u = os.path.join(work, "uniform")
    for cfg in ("gptq:bits=2,group-size=32", "qbb:bits=1,bases=2", "claq:bits=2.1",
                "claq:bits=2", "gptq:bits=3", "gptq:bits=3,rotate=hadamard"):
        m, _, o = cfg.partition(":")
        args = ["--method", m]
        for kv in o.split(","):
            k, _, v = kv.partition("=")
            args += ["--" + k, v]
        done, _ = quantize(u, args)
        r = {"kind": "uniform", "config": cfg, "bpw": done["bpw"]}
        r.update(evaluate(u))
        emit(r)
    shutil.rmtree(u, ignore_errors=True)
