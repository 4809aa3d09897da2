#!/usr/bin/python3
"""GPTQ as the paper's reference code runs it (Frantar et al. 2023, Algorithm 1:
lazy batches of 128 columns, upper Cholesky factor of H^-1, per-row asymmetric
min-max grid, 1% mean-diagonal damping, dead columns zeroed), written in float64
NumPy from the paper, for comparing `lowbit qmatrix --method gptq` on the same
(W, H). Not the PyTorch code itself: there is no PyTorch in Debian 12.

usage: gptq_numpy.py FILE.safetensors [--bits B] [--weight W] [--hessian H]
prints one JSON line {"method":"gptq-numpy-ref", "bits", "rel_err", "seconds"}
"""
import argparse
import json
import struct
import time

import numpy as np

DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16}


def load_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        arr = np.frombuffer(blob[8 + n + a:8 + n + b], dtype=DTYPES[t["dtype"]])
        out[name] = arr.reshape(t["shape"]).astype(np.float64)
    return out


def quantize_grid(w, scale, zero, maxq):
    q = np.clip(np.round(w / scale) + zero, 0, maxq)
    return scale * (q - zero)


def row_grids(W, maxq):
    # per-row min-max including 0 (the reference's Quantizer.find_params)
    xmin = np.minimum(W.min(axis=1), 0.0)
    xmax = np.maximum(W.max(axis=1), 0.0)
    same = (xmin == 0) & (xmax == 0)
    xmin[same], xmax[same] = -1.0, 1.0
    scale = (xmax - xmin) / maxq
    zero = np.round(-xmin / scale)
    return scale, zero


def gptq(W, H, bits, blocksize=128, percdamp=0.01):
    W = W.copy()
    H = H.copy()
    rows, cols = W.shape
    maxq = 2 ** bits - 1
    scale, zero = row_grids(W, maxq)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    damp = percdamp * np.mean(np.diag(H))
    H[np.diag_indices(cols)] += damp
    L = np.linalg.cholesky(H)
    Hinv = np.linalg.inv(L).T @ np.linalg.inv(L)   # H^-1
    U = np.linalg.cholesky(Hinv).T                  # upper factor of H^-1
    Q = np.zeros_like(W)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].copy()
        Err1 = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            d = U1[i, i]
            q = quantize_grid(w, scale, zero, maxq)
            Q[:, i1 + i] = q
            err = (w - q) / d
            W1[:, i:] -= np.outer(err, U1[i, i:])
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return Q


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--weight", default="W")
    ap.add_argument("--hessian", default="H")
    a = ap.parse_args()
    t = load_safetensors(a.file)
    W, H = t[a.weight], t[a.hessian]
    t0 = time.time()
    Q = gptq(W, H, a.bits)
    sec = time.time() - t0
    D = W - Q
    err = np.trace(D @ H @ D.T)
    ref = np.trace(W @ H @ W.T)
    print(json.dumps({"method": "gptq-numpy-ref", "bits": a.bits, "rows": W.shape[0],
                      "cols": W.shape[1], "err": err, "rel_err": err / ref,
                      "seconds": round(sec, 3)}))


if __name__ == "__main__":
    main()
