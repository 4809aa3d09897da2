#!/usr/bin/python3
"""lowbit against the papers' code: for every recorded reference figure (the shared
refcases/reference-results.jsonl and bench/reference/cases.jsonl) runs
`lowbit qmatrix --json` with the matching options on the same (W, H) and prints one JSON
line per (case, method, config) with both sides; --markdown prints the table of
docs/results-reference.md instead. A benchmark (seconds are wall clock of the
quantizer alone, on whatever the machine is doing; compare ratios from one run).

usage: compare.py WORK_DIR [--markdown] [--threads N] [--case PREFIX] [--big]
       compare.py --table FILE.jsonl      (markdown from lines printed before)
WORK_DIR holds the regenerated synth pairs (make_cases.sh writes them there; missing ones
are regenerated with bench_refcase_gen). 4096-wide cases only with --big.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# reference (method, config) -> lowbit qmatrix options; the test tests/numeric/
# test_refcases.c holds the same table
OPTIONS = {
    ("rtn", "w3"): ["--method", "rtn", "--bits", "3"],
    ("gptq", "w2"): ["--method", "gptq", "--bits", "2"],
    ("gptq", "w3"): ["--method", "gptq", "--bits", "3"],
    ("gptq", "w3-act"): ["--method", "gptq", "--bits", "3", "--act-order"],
    ("pbllm", "s0.1"): ["--method", "pbllm", "--salient", "0.1", "--salient-bits", "8"],
    ("pbllm", "s0.2"): ["--method", "pbllm", "--salient", "0.2", "--salient-bits", "8"],
    ("billm", "default"): ["--method", "billm"],
    ("claq", "w2"): ["--method", "claq", "--bits", "2", "--act-order", "--outlier-keep", "0,0"],
    ("claq", "ap2.1"): ["--method", "claq", "--bits", "2.1", "--act-order", "--outlier-keep",
                        "0,0", "--outlier-hessian-score"],
    ("claq", "ap2.05+or"): ["--method", "claq", "--bits", "2.05", "--act-order",
                            "--outlier-hessian-score"],
}
LABEL = {("rtn", "w3"): "RTN 3", ("gptq", "w2"): "GPTQ 2", ("gptq", "w3"): "GPTQ 3",
         ("gptq", "w3-act"): "GPTQ 3 act", ("pbllm", "s0.1"): "PB-LLM 10%",
         ("pbllm", "s0.2"): "PB-LLM 20%", ("billm", "default"): "BiLLM",
         ("claq", "w2"): "CLAQ 2", ("claq", "ap2.1"): "CLAQ 2.1",
         ("claq", "ap2.05+or"): "CLAQ \"2.12\""}


def pair(case, work, build, shared):
    if case == "refcases/syn-outlier-1024":
        p = os.path.join(shared, "refcases", "syn-outlier-1024")
        return p + ".weight.safetensors", p + ".hessian.safetensors"
    if case.startswith("synth:"):
        shape, seed = case[6:].split(":")
        rows, cols = shape.split("x")
        pre = os.path.join(work, f"synth-{rows}x{cols}-s{seed}")
        if not os.path.exists(pre + ".hessian.safetensors"):
            subprocess.run([os.path.join(build, "bench_refcase_gen"), "--rows", rows, "--cols",
                            cols, "--seed", seed, "--out", pre], check=True,
                           stdout=subprocess.DEVNULL)
        return pre + ".weight.safetensors", pre + ".hessian.safetensors"
    if case.startswith("stories260K:"):
        layer, lin = case[12:].split(":")
        f = os.path.join(HERE, "cases", f"stories260K-L{layer}-{lin}.safetensors")
        return f + ":W", f + ":H"
    sys.exit(f"compare: unknown case {case}")


def table(out):
    print("| case | method | lowbit rel_err | reference rel_err | lowbit / ref | "
          "lowbit bpw (counted) | reference bpw (claimed) | lowbit s | reference s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in out:
        lb, rf = r["lowbit"], r["reference"]
        print(f"| {r['case']} | {LABEL[(r['method'], r['config'])]} | "
              f"{lb['rel_err']:.5f} | {rf['rel_err']:.5f} | "
              f"{lb['rel_err'] / rf['rel_err']:.3f} | {lb['bpw']:.3f} | "
              f"{rf['claimed_bpw']} | {lb['seconds']:.2f} | {rf['seconds']:.2f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work", nargs="?")
    ap.add_argument("--table", help="print the markdown table of saved output lines")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--case", default="")
    ap.add_argument("--big", action="store_true")
    args = ap.parse_args()
    if args.table:
        table([json.loads(x) for x in open(args.table) if x.strip()])
        return
    if not args.work:
        ap.error("WORK_DIR is required")
    build = os.environ.get("BUILD", os.path.join(ROOT, "build"))
    shared = os.environ.get("LOWBIT_SHARED", os.path.join(ROOT, "..", "shared"))
    recs = []
    for line in open(os.path.join(shared, "refcases", "reference-results.jsonl")):
        d = json.loads(line)
        d["case"] = "refcases/syn-outlier-1024"
        d["reference"] = d.pop("ref")
        recs.append(d)
    for line in open(os.path.join(HERE, "cases.jsonl")):
        if line.strip():
            recs.append(json.loads(line))
    out = []
    for d in recs:
        c = d["case"]
        if not c.startswith(args.case):
            continue
        if c.startswith("synth:") and not args.big:
            r, k = c[6:].split(":")[0].split("x")
            if int(k) >= 4096 or int(r) * int(k) > (1 << 21):
                continue
        key = (d["method"], d["config"])
        w, h = pair(c, args.work, build, shared)
        cmd = [os.path.join(build, "lowbit"), "qmatrix", "--weight", w, "--hessian", h,
               "--json", "--threads", str(args.threads)] + OPTIONS[key]
        lb = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                       text=True).stdout)
        row = {"case": c, "method": key[0], "config": key[1],
               "lowbit_options": " ".join(OPTIONS[key]),
               "lowbit": {"rel_err": lb["rel_err"], "bpw": lb["bpw"],
                          "seconds": lb["seconds"]},
               "reference": {"rel_err": d["rel_err"], "claimed_bpw": d.get("claimed_bpw"),
                             "seconds": d.get("seconds"), "commit": d["reference"]}}
        out.append(row)
        if not args.markdown:
            print(json.dumps(row), flush=True)
    if args.markdown:
        table(out)


if __name__ == "__main__":
    main()
