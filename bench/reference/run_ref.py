#!/usr/bin/python3
"""Runs one paper's own quantizer, from a local clone, on one (W, H) pair on CPU and
prints the JSON object `lowbit qmatrix --json` prints (same keys; "bpw" is null since
the papers' code stores nothing to count, "claimed_bpw" is the paper's figure).

A benchmark, never a test: it needs python3-torch, python3-sklearn, python3-numpy,
python3-yaml (Debian 12) and a clone of the reference repository, which lowbit never
copies. The clone is only imported; the few modules its files import but that only
matter on a GPU / for model loading (transformers, sklearnex, exceptiongroup) are
replaced by empty stand-ins here, and torch.cuda.synchronize by a no-op.

usage: run_ref.py REPO_DIR METHOD W.safetensors H.safetensors [--bits B] [--act-order]
           [--salient F] [--outlierorder X] [--outlier-col-dynamic] [--config NAME]
METHOD: rtn gptq claq pbllm billm. REPO_DIR is the clone of IST-DASLab/gptq (rtn,
gptq), fayuge/CLAQ, hahnyuan/PB-LLM or Aaronhuang-778/BiLLM.
"""
import argparse
import contextlib
import json
import os
import subprocess
import struct
import sys
import tempfile
import time
import types

import numpy as np
import torch
import torch.nn as nn

DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16}


def load_one(spec):
    """FILE or FILE:TENSOR (as lowbit qmatrix takes them)."""
    path, _, want = spec.partition(":") if not os.path.exists(spec) else (spec, "", "")
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    names = [k for k in header if k != "__metadata__"]
    if want:
        names = [k for k in names if k == want]
    if len(names) != 1:
        sys.exit(f"run_ref: {spec} holds {len(names)} matching tensors; want exactly one "
                 "(name it as FILE:TENSOR)")
    t = header[names[0]]
    a, b = t["data_offsets"]
    arr = np.frombuffer(blob[8 + n + a:8 + n + b], dtype=DTYPES[t["dtype"]])
    return arr.reshape(t["shape"]).astype(np.float64)


def stub_modules():
    tr = types.ModuleType("transformers")

    class Conv1D(nn.Module):  # never instantiated: only for isinstance checks
        pass
    tr.Conv1D = Conv1D
    sys.modules.setdefault("transformers", tr)
    eg = types.ModuleType("exceptiongroup")
    eg.catch = lambda *a, **k: None
    sys.modules.setdefault("exceptiongroup", eg)
    sx = types.ModuleType("sklearnex")
    sx.patch_sklearn = lambda *a, **k: None
    sx.config_context = lambda *a, **k: contextlib.nullcontext()
    sys.modules.setdefault("sklearnex", sx)
    torch.cuda.synchronize = lambda *a, **k: None


def repo_commit(repo):
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        url = subprocess.run(["git", "-C", repo, "config", "--get", "remote.origin.url"],
                             capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.path.basename(os.path.abspath(repo)) + "@unknown"
    if "github.com" in url:
        name = "/".join(url.rstrip("/").removesuffix(".git").split("/")[-2:])
    else:  # a local clone or mirror with a path part named owner+name
        parts = [p for p in (url + "/" + os.path.abspath(repo)).split("/") if "+" in p]
        name = parts[0].replace("+", "/") if parts else os.path.basename(os.path.abspath(repo))
    return f"{name}@{head[:12]}"


def make_layer(W):
    layer = nn.Linear(W.shape[1], W.shape[0], bias=False)
    layer.weight.data = torch.tensor(W, dtype=torch.float32)
    layer.global_name = "layer"  # PB-LLM names its saved mask file after it
    return layer


def run(args, W, H):
    """Returns (W_hat float64, params dict, claimed bpw)."""
    Ht = torch.tensor(H, dtype=torch.float32)
    m = args.method
    if m in ("rtn", "gptq"):
        sys.path.insert(0, args.repo)
        from gptq import GPTQ
        from quant import Quantizer
        layer = make_layer(W)
        if m == "rtn":
            q = Quantizer()
            q.configure(args.bits, perchannel=True, sym=False, mse=False)
            Wt = layer.weight.data.float()
            q.find_params(Wt, weight=True)
            t0 = time.time()
            out = q.quantize(Wt)
            return out.double().numpy(), {"wbits": args.bits, "perchannel": True, "sym": False,
                                          "mse": False}, args.bits, time.time() - t0
        g = GPTQ(layer)
        g.H = Ht.clone()
        g.nsamples = 1
        g.quantizer = Quantizer()
        g.quantizer.configure(args.bits, perchannel=True, sym=False, mse=False)
        t0 = time.time()
        g.fasterquant(blocksize=128, percdamp=0.01, groupsize=-1, actorder=args.act_order)
        sec = time.time() - t0
        return layer.weight.data.double().numpy(), {
            "blocksize": 128, "percdamp": 0.01, "perchannel": True, "sym": False, "mse": False,
            "wbits": args.bits, "act_order": args.act_order, "groupsize": -1}, args.bits, sec
    if m == "claq":
        sys.path.insert(0, args.repo)
        from claq import CLAQ
        from quant import Quantizer
        layer = make_layer(W)
        c = CLAQ(layer)
        c.H = Ht.clone()
        c.nsamples = 1
        c.quantizer = Quantizer()
        c.quantizer.configure(args.bits, perchannel=True, sym=False, mse=False)
        # one K-means per column: sklearn's OpenMP pool costs more than the fit on these
        # tiny problems (0.30 s vs 0.008 s per 1024-value fit here), so one thread
        from threadpoolctl import threadpool_limits
        with tempfile.TemporaryDirectory() as log, threadpool_limits(1, user_api="openmp"):
            t0 = time.time()
            c.fasterquant(args.bits, log, "None", ".0.layer", 0, args.outlier_col_dynamic, False,
                          args.outlierorder, 0, None, percdamp=0.01, groupsize=-1,
                          actorder=True)
            sec = time.time() - t0
        claimed = args.outlierorder or args.bits
        if args.outlier_col_dynamic:
            claimed = round(claimed + 0.07, 2)  # the paper's "2.12" for 2.05 + reservation
        return layer.weight.data.double().numpy(), {
            "wbits": args.bits, "act_order": True, "outlierorder": args.outlierorder,
            "outlier_col_dynamic": args.outlier_col_dynamic, "outlier": 0}, claimed, sec
    if m == "pbllm":
        sys.path.insert(0, os.path.join(args.repo, "gptq_pb"))
        from gptq import LowHighGPT
        from high_quant import HighQuantizer
        from low_quant import LowQuantizer
        layer = make_layer(W)
        low = LowQuantizer(layer.weight, method="xnor", groupsize=-1)
        bs = min(128, W.shape[1])
        high = HighQuantizer(8, True, False, False)
        g = LowHighGPT(layer, low, high, salient_metric="hessian", disable_gptq=False)
        g.H = Ht.clone()
        g.nsamples = 1
        with tempfile.TemporaryDirectory() as tmp:  # it saves its masks under ./outputs
            os.makedirs(os.path.join(tmp, "outputs"))
            cwd = os.getcwd()
            os.chdir(tmp)
            try:
                t0 = time.time()
                # its assert needs groupsize (= cols) % blocksize == 0: a matrix narrower
                # than a block is one block either way
                g.fasterquant(1.0 - args.salient, percdamp=0.01, blocksize=bs)
                sec = time.time() - t0
            finally:
                os.chdir(cwd)
        claimed = round((1.0 - args.salient) * 1 + args.salient * 8 + 0.0, 2)
        return layer.weight.data.double().numpy(), {
            "low_quant_method": "xnor", "low_frac": round(1.0 - args.salient, 6), "high_bit": 8,
            "salient_metric": "hessian", "blocksize": bs, "percdamp": 0.01,
            "groupsize": -1}, claimed, sec
    if m == "billm":
        sys.path.insert(0, args.repo)
        from bigptq import BRAGPTQ
        from binary import Binarization
        layer = make_layer(W)
        bq = Binarization(layer.weight, method="braq", groupsize=128)
        g = BRAGPTQ(layer, bq, "hessian", disable_gptq=False)
        g.H = Ht.clone()
        g.nsamples = 1
        t0 = time.time()
        g.fasterquant(blocksize=128, percdamp=0.01, partition=3, orders=(1, 1, 2))
        sec = time.time() - t0
        return layer.weight.data.double().numpy(), {
            "low_quant_method": "braq", "blocksize": 128, "groupsize": 128,
            "salient_metric": "hessian", "percdamp": 0.01, "partition": 3, "orders": [1, 1, 2],
            "up_lim": 50}, 1.08, sec
    sys.exit(f"run_ref: unknown method {m}; use rtn gptq claq pbllm billm")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("repo")
    ap.add_argument("method")
    ap.add_argument("weight")
    ap.add_argument("hessian")
    ap.add_argument("--bits", type=int, default=2)
    ap.add_argument("--act-order", action="store_true")
    ap.add_argument("--salient", type=float, default=0.1)
    ap.add_argument("--outlierorder", type=float, default=0.0)
    ap.add_argument("--outlier-col-dynamic", action="store_true")
    ap.add_argument("--config", default="default", help="label stored in the output")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-npy", help="also write W_hat (float64) to this .npy file")
    args = ap.parse_args()
    if not os.path.isdir(args.repo):
        sys.exit(f"run_ref: {args.repo} is not a directory; pass a clone of the reference repo")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    stub_modules()
    W = load_one(args.weight)
    H = load_one(args.hessian)
    if W.ndim != 2 or H.shape != (W.shape[1], W.shape[1]):
        sys.exit(f"run_ref: shapes W {W.shape} H {H.shape} do not match")
    # the reference code prints progress on stdout: keep stdout for the JSON line
    real_stdout = sys.stdout
    sys.stdout = sys.stderr
    try:
        W_hat, params, claimed, sec = run(args, W, H)
    finally:
        sys.stdout = real_stdout
    if args.save_npy:
        np.save(args.save_npy, W_hat)
    D = W - W_hat
    err = float(np.einsum("ij,ij->", D @ H, D))
    ref = float(np.einsum("ij,ij->", W @ H, W))
    print(json.dumps({
        "method": args.method, "config": args.config, "options": params,
        "weight": args.weight, "hessian": args.hessian,
        "rows": W.shape[0], "cols": W.shape[1], "bpw": None, "claimed_bpw": claimed,
        "err": err, "ref": ref, "rel_err": err / ref, "seconds": round(sec, 4),
        "reference": repo_commit(args.repo)}))


if __name__ == "__main__":
    main()
