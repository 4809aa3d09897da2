#!/usr/bin/env python3
"""Writes the seed corpora of tests/fuzz/corpus/<target>/ (seed-*) from the
real fixtures ($LOWBIT_SHARED, default ../shared) and the hostile cases of the
unit tests. Deterministic; rerun after a format change. Findings of the fuzzers
are kept beside the seeds as finding-* files (never regenerated).
job/ and result/ seeds come from tests/proto/test_job.c (LB_PROTO_WRITE_CORPUS).
Usage: tests/fuzz/make_seeds.py [SHARED_DIR]"""
import json, os, struct, sys, hashlib

root = os.path.dirname(os.path.abspath(__file__))
src = os.path.dirname(os.path.dirname(root))
shared = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
    "LOWBIT_SHARED", os.path.join(src, "..", "shared"))
corpus = os.path.join(root, "corpus")


def put(target, name, data):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def st(header, data=b""):
    h = header if isinstance(header, bytes) else header.encode()
    return struct.pack("<Q", len(h)) + h + data


def st_header_of(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def shrink(hdr, dtype_size={"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I8": 1, "U8": 1,
                            "I32": 4, "I64": 8}):
    """Same names/dtypes/ranks, every dim 1 or 2, offsets recomputed."""
    out, off = {}, 0
    for name, t in hdr.items():
        if name == "__metadata__":
            out[name] = t
            continue
        shape = [min(d, 2) for d in t["shape"]]
        n = dtype_size.get(t["dtype"], 4)
        for d in shape:
            n *= d
        out[name] = {"dtype": t["dtype"], "shape": shape, "data_offsets": [off, off + n]}
        off += n
    return json.dumps(out, separators=(",", ":")), off


# ---- st_header: real headers (shrunk, and truncated), valid small files, hostile cases
real = os.path.join(shared, "models/stories260K/model.safetensors")
h = st_header_of(real)
hj, n = shrink(h)
put("st_header", "stories260K-shrunk.safetensors", st(hj, bytes(range(256)) * (n // 256) + bytes(n % 256)))
with open(real, "rb") as f:
    raw = f.read(8)
    hn = struct.unpack("<Q", raw)[0]
    put("st_header", "stories260K-header-only.safetensors", raw + f.read(hn))
for ref in ("syn-outlier-1024.weight", "syn-outlier-1024.hessian"):
    hj, n = shrink(st_header_of(os.path.join(shared, "refcases", ref + ".safetensors")))
    put("st_header", ref + "-shrunk.safetensors", st(hj, b"\x3f\x80\x00\x00" * (n // 4)))
f32 = struct.pack("<4f", 1.0, -2.0, 0.5, 3.0)
put("st_header", "f32-2x2-meta.safetensors",
    st('{"__metadata__":{"format":"pt","lowbit":"1"},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}', f32))
put("st_header", "f16-bf16-f64.safetensors",
    st('{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[4,8]},'
       '"c":{"dtype":"F64","shape":[1],"data_offsets":[8,16]},"d":{"dtype":"I8","shape":[0],"data_offsets":[16,16]}}',
       b"\x00\x3c\x00\xc0\x80\x3f\x00\x40" + struct.pack("<d", 1.5)))
put("st_header", "nan.safetensors",
    st('{"w":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]}}', b"\x00\x00\xc0\x7f\x00\x00\x80\x7f"))
put("st_header", "scalar.safetensors", st('{"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}', f32[:4]))
hostile = [
    ('{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}', 8),
    ('{"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}}', 8),
    ('{"a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]}}', 8),
    ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', 16),
    ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}', 16),
    ('{"a":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,2],"data_offsets":[0,8]}}', 8),
    ('{"a":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}}', 8),
    ('{"__metadata__": {"k": 5}}', 0),
    ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551615]}}', 8),
]
for i, (hdr, dl) in enumerate(hostile):
    put("st_header", "hostile-%02d.safetensors" % i, st(hdr, bytes(dl)))
put("st_header", "absurd-header-len.safetensors", struct.pack("<Q", 2**64 - 4) + b"{}")
put("st_header", "deep-nesting.safetensors", st('{"a":' + "[" * 5000))

# ---- st_index (shards written by the target: a.weight in 00001, b.weight in 00002)
put("st_index", "two-shards.index.json", json.dumps({
    "metadata": {"total_size": 48},
    "weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                   "b.weight": "model-00002-of-00002.safetensors"}}))
put("st_index", "missing-tensor.index.json", json.dumps({
    "weight_map": {"c.weight": "model-00001-of-00002.safetensors"}}))
put("st_index", "path-escape.index.json", json.dumps({
    "weight_map": {"a.weight": "../model-00001-of-00002.safetensors",
                   "b.weight": "/etc/passwd"}}))
put("st_index", "no-map.index.json", '{"metadata": {}}')
put("st_index", "not-string.index.json", '{"weight_map": {"a.weight": 7}}')

# ---- config
for name in ("models/stories260K/config.json",):
    with open(os.path.join(shared, name), "rb") as f:
        cfg = json.loads(f.read())
        put("config", "stories260K.json", json.dumps(cfg, indent=2))
for mt, extra in (("mistral", {"sliding_window": 4096}), ("qwen2", {"use_sliding_window": False}),
                  ("llama", {"rope_scaling": {"type": "linear", "factor": 2.0}}),
                  ("llama", {"hidden_act": "gelu"}), ("llama", {"num_key_value_heads": 3}),
                  ("llama", {"hidden_size": 2**40}), ("llama", {"rms_norm_eps": -1}),
                  ("llama", {"eos_token_id": [2, 3]}), ("llama", {"torch_dtype": "bfloat16" * 4})):
    c = dict(cfg)
    c["model_type"] = mt
    c.update(extra)
    put("config", "%s-%s.json" % (mt, "-".join(extra)), json.dumps(c))

# ---- tokens
with open(os.path.join(shared, "data/stories260K-eval.u32"), "rb") as f:
    ids = f.read(4096)
put("tokens_u32", "stories260K-eval-head.u32", ids)
put("tokens_u32", "odd-length.u32", ids[:7])
put("tokens_u32", "empty.u32", b"")
put("tokens_u32", "big-ids.u32", struct.pack("<4I", 0, 511, 512, 2**32 - 1))


def npy(descr, shape, data, version=1, fortran=False):
    h = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (
        descr, "True" if fortran else "False", str(tuple(shape)))
    hl = 4 if version >= 2 else 2
    pad = (64 - (10 + hl - 2 + len(h) + 1) % 64) % 64
    h = h + " " * pad + "\n"
    size = struct.pack("<I", len(h)) if version >= 2 else struct.pack("<H", len(h))
    return b"\x93NUMPY" + bytes([version, 0]) + size + h.encode() + data


u = struct.unpack("<64I", ids[:256])
put("tokens_npy", "u4-1d.npy", npy("<u4", [64], ids[:256]))
put("tokens_npy", "u2-2d.npy", npy("<u2", [4, 16], struct.pack("<64H", *u)))
put("tokens_npy", "i4-v2.npy", npy("<i4", [64], ids[:256], version=2))
put("tokens_npy", "i8-v3.npy", npy("<i8", [2, 32], struct.pack("<64q", *u), version=3))
put("tokens_npy", "negative-i8.npy", npy("<i8", [1], struct.pack("<q", -1)))
put("tokens_npy", "fortran.npy", npy("<u4", [2, 2], ids[:16], fortran=True))
put("tokens_npy", "huge-shape.npy", npy("<u4", [2**62, 4], ids[:16]))
put("tokens_npy", "shape-overflow.npy", npy("<u4", [2**40, 2**40], ids[:16]))
put("tokens_npy", "f4.npy", npy("<f4", [4], ids[:16]))
put("tokens_npy", "3d.npy", npy("<u4", [1, 2, 2], ids[:16]))

# ---- redis_url
for i, u in enumerate(["redis://127.0.0.1:6379/0", "redis://worker:s3cr%40t@redis.example:6380/2",
                       "redis://:onlypassword@[::1]:6379", "unix:///run/redis/redis.sock?db=3",
                       "unix://user:pw@/tmp/r.sock", "redis://host:99999/0", "redis://host/-1",
                       "redis://user:pa:ss@host", "redis://%zz@host", "redis://[::1", "redis:/x",
                       "rediss://host", "redis://host:6379/2147483648"]):
    put("redis_url", "%02d.txt" % i, u)

# ---- claim (the lease claim of a PUT, lb_dist_lease_parse_claim)
for i, c in enumerate(["job=d1 entry=1712345678901-0 worker=w1@host-17",
                       "worker=wA entry=1-0 job=demo", "job= entry=1-0 worker=",
                       "job=d1  entry=1-0 x=y worker=" + "0" * 199 + "7", "=== =="]):
    put("claim", "%02d.txt" % i, c)

# ---- override
for i, o in enumerate([r"model\.layers\.[0-4]\.mlp\..*=gptq:bits=3,group_size=32",
                       r".*q_proj.*=rtn", r"lm_head\.weight=billm", r".*=claq:bits=2,outlier_keep=0.01",
                       r"(a{100}){100}=rtn", r"[=gptq", r"x=nosuchmethod", r"x=gptq:bits=99",
                       r"x=gptq:unknown=1", r"=gptq", r"a=b=c:d=e", r"x{1,}=pbllm:bits=1"]):
    put("override", "%02d.txt" % i, o)

# ---- xfer_frame: header (128) + frames as [u16 len][bytes]
def xhdr(cmd, status=0, seq=1, nframes=0, size=0, sha=None, idhex=b""):
    return (b"LBXF" + struct.pack("<HHiIQQ", 1, cmd, status, nframes, seq, size)
            + (sha or hashlib.sha256(b"").digest()) + idhex.ljust(64, b"\0"))


payload = b"lowbit artifact bytes " * 8
aid = hashlib.sha256(payload).hexdigest().encode()
put("xfer_frame", "ping", xhdr(1))
put("xfer_frame", "put-ok", xhdr(3, nframes=2, size=len(payload), sha=hashlib.sha256(payload).digest(), idhex=aid)
    + struct.pack("<H", 100) + payload[:100] + struct.pack("<H", len(payload) - 100) + payload[100:])
put("xfer_frame", "get-reply", xhdr(2, nframes=1, size=len(payload), sha=hashlib.sha256(payload).digest(), idhex=aid)
    + struct.pack("<H", len(payload)) + payload)
put("xfer_frame", "announce-100GB", xhdr(3, nframes=1, size=100 * 10**9, idhex=aid) + b"\x04\x00abcd")
put("xfer_frame", "bad-sha", xhdr(3, nframes=1, size=4, idhex=aid) + b"\x04\x00abcd")
put("xfer_frame", "error-reply", xhdr(2, status=-5, nframes=0, idhex=aid))
put("xfer_frame", "bad-magic", b"LBXG" + xhdr(1)[4:])
put("xfer_frame", "bad-id", xhdr(4, idhex=b"Z" * 64))
put("xfer_frame", "short", xhdr(1)[:100])
print("seeds written under", corpus)

# ---- manifest: variants of seed-valid.json (written by the target itself:
# LB_FUZZ_MANIFEST_SEED=tests/fuzz/corpus/manifest/seed-valid.json build/fuzz_manifest_replay x)
valid = os.path.join(corpus, "manifest", "seed-valid.json")
if os.path.exists(valid):
    m = json.load(open(valid))
    def variant(name, fn):
        v = json.loads(json.dumps(m))
        fn(v)
        put("manifest", name + ".json", json.dumps(v))
    variant("packed-entry", lambda v: v["tensors"].__setitem__("a.weight", {
        "stored": "packed", "prefix": "a.q", "fields": [{"sha256": "0" * 64}], "sha256": "0" * 64,
        "bytes": 4, "bpw": 2.0}))
    variant("file-escape", lambda v: v["files"].__setitem__("../x", {"bytes": 1, "sha256": "0" * 64}))
    variant("file-dot", lambda v: v["files"].__setitem__(".", {"bytes": 4096, "sha256": "0" * 64}))
    variant("wrong-format", lambda v: v.__setitem__("lowbit_format", 2))
    variant("extra-tensor", lambda v: v["tensors"].__setitem__("zz", {"stored": "plain", "sha256": "0" * 64}))
    variant("huge-bytes", lambda v: v["quantized"].__setitem__("bytes", 2**63 - 1))
    variant("lm-head", lambda v: v["quantized"].__setitem__("lm_head_included", True))
