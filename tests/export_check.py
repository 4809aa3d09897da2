#!/usr/bin/env python3
"""Independent float64 dequantizer for lowbit's GPTQ-layout and compressed-tensors
(pack-quantized) exports, written from the formats' documentation (docs/export.md),
not from lowbit's C code. It rebuilds every quantized linear and requires it to
equal, exactly, the same weight in lowbit's dense f32 export of the same checkpoint.

usage: export_check.py gptq|compressed-tensors EXPORT_DIR DENSE_F32_DIR
Prints one JSON line; exit status 0 only when every linear matches bit for bit.
"""
import json
import struct
import sys

import numpy as np

DT = {"F16": np.float16, "BF16": None, "F32": np.float32, "F64": np.float64,
      "I32": np.int32, "I64": np.int64, "U8": np.uint8, "I8": np.int8}


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + hlen])
    base = 8 + hlen
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = data[base + a:base + b]
        if info["dtype"] == "BF16":
            u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = u.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(DT[info["dtype"]]).newbyteorder("<"))
        out[name] = arr.reshape(info["shape"])
    return out


def unpack(packed, bits, n, axis):
    """int32 words -> unsigned values: value i of a word sits at bits [b*i, b*(i+1))."""
    pf = 32 // bits
    u = packed.astype(np.int64) & 0xFFFFFFFF
    parts = [(u >> (bits * i)) & ((1 << bits) - 1) for i in range(pf)]
    st = np.stack(parts, axis=axis + 1)  # word, slot -> consecutive elements
    shape = list(packed.shape)
    shape[axis] *= pf
    full = st.reshape(shape)
    return full.take(np.arange(n), axis=axis)


def dequant_gptq(t, base, qc):
    bits = qc["bits"]
    qweight, qzeros = t[base + ".qweight"], t[base + ".qzeros"]
    scales = t[base + ".scales"].astype(np.float64)
    g_idx = t[base + ".g_idx"].astype(np.int64)
    K, N = g_idx.shape[0], scales.shape[1]
    codes = unpack(qweight, bits, K, 0)  # (K, N)
    # stored zeros are zero - 1 (checkpoint_format "gptq"); loaders add 1 back mod 2^b
    zeros = (unpack(qzeros, bits, N, 1) + 1) & ((1 << bits) - 1)  # (G, N)
    if not qc["desc_act"] and qc["group_size"] > 0:
        assert np.array_equal(g_idx, np.arange(K) // qc["group_size"]), base + ": g_idx"
    W = scales[g_idx, :] * (codes - zeros[g_idx, :])  # (K, N)
    return W.T


def dequant_ct(t, base, qc):
    w = qc["config_groups"]["group_0"]["weights"]
    bits = w["num_bits"]
    off = 1 << (bits - 1)
    N, K = (int(x) for x in t[base + ".weight_shape"])
    q = unpack(t[base + ".weight_packed"], bits, K, 1) - off  # signed (N, K)
    scale = t[base + ".weight_scale"].astype(np.float64)  # (N, G)
    zp = np.zeros_like(scale, dtype=np.int64)
    if base + ".weight_zero_point" in t:
        assert not w["symmetric"]
        zp = unpack(t[base + ".weight_zero_point"], bits, N, 0) - off
    if base + ".weight_g_idx" in t:
        g = t[base + ".weight_g_idx"].astype(np.int64)
    elif w["strategy"] == "group":
        g = np.arange(K) // w["group_size"]
    else:
        g = np.zeros(K, dtype=np.int64)
    return (q - zp[:, g]) * scale[:, g]


def main():
    fmt, exp_dir, dense_dir = sys.argv[1:4]
    cfg = json.load(open(exp_dir + "/config.json"))
    qc = cfg["quantization_config"]
    t = load_safetensors(exp_dir + "/model.safetensors")
    ref = load_safetensors(dense_dir + "/model.safetensors")
    if fmt == "gptq":
        assert qc["quant_method"] == "gptq" and qc["checkpoint_format"] == "gptq"
        assert qc["bits"] in (2, 4, 8)
        assert json.load(open(exp_dir + "/quantize_config.json")) == qc
        suffix, deq = ".qweight", dequant_gptq
    else:
        assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
        suffix, deq = ".weight_packed", dequant_ct
    bases = sorted(n[:-len(suffix)] for n in t if n.endswith(suffix))
    maxdiff, bad = 0.0, []
    for base in bases:
        W = deq(t, base, qc)
        R = ref[base + ".weight"].astype(np.float64)
        if W.shape != R.shape:
            bad.append(base + ": shape")
            continue
        d = float(np.max(np.abs(W - R)))
        maxdiff = max(maxdiff, d)
        if not np.array_equal(W, R):
            bad.append(base)
    # every other dense tensor is present
    dense_names = {n for n in ref if not any(n == b + ".weight" for b in bases)}
    missing = sorted(dense_names - set(t))
    print(json.dumps({"check": "export_dequant", "format": fmt, "linears": len(bases),
                      "bits": qc.get("bits", qc.get("config_groups", {}).get("group_0", {})
                                     .get("weights", {}).get("num_bits")),
                      "max_abs_diff": maxdiff, "mismatched": bad[:5], "missing": missing[:5]}))
    return 0 if bases and not bad and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
