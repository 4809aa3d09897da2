#!/usr/bin/env python3
"""bench/simulate.py: replays lowbit's quantize job graph on N workers x C cores
with a bandwidth model, fed by the job durations and artifact bytes of a real
run. Prints JSON lines. Python 3 standard library only.

  # keep the logs of a measured run (embedded + distributed configs)
  LB_BENCH_KEEP=/tmp/m bench/distributed.sh build --layers 2 > /tmp/m/bench.jsonl
  # 1. validate: predict the measured configs from the embedded run's job times
  bench/simulate.py validate --from /tmp/m
  # 2. replay the measured shape on other clusters
  bench/simulate.py replay --from /tmp/m --workers 4 --cores 2 --bandwidth 1.25
  # 3. project to full models (current plan and chunked plan)
  bench/simulate.py project --from /tmp/m --shape llama-7b --nodes 1,2,4,8,16,32,64

The job graph is lowbit's plan (coordinator/lb_plan.h, not true-sequential):
embed propagate (block -1) -> per block b: collect-hessian(b) -> 7
quantize-linear(b) -> propagate(b) (not after the last block) -> merge (on
the coordinator). The chunked plan (issue 10 item 2) replaces collect(b) with
K collect-chunk jobs over calibration windows (each writes partial Hessian
sums) + a reduce job (sums the K partials in a fixed order), and propagate(b)
with K propagate-chunk jobs.

Inputs (--from DIR, what LB_BENCH_KEEP leaves): emb.json (the embedded
`lowbit quantize --json` job lines: per-job compute seconds; quantize-linear at
1 thread, the other jobs at the run's --threads), w*-CFG.json (the workers'
"ran" lines: seconds incl. fetch+publish, bytes_fetched, bytes_published), and
bench.jsonl (bench/distributed.sh output: shape, walls). Missing files are
skipped; the embedded file is required.

Model:
- compute: a job of work W core-seconds on c threads takes W ((1 - p) + p / c)
  (Amdahl; p per job type, --p-collect/--p-propagate/--p-quantize; `validate`
  prints the p the measured runs imply). W comes from the embedded run.
- transfer: a worker fetches the job inputs missing from its cache from the
  coordinator and publishes every output to it (what lowbit does today); every
  byte crosses the coordinator's link, one transfer at a time (the first free
  gap), at --bandwidth GB/s; --item-overhead-s per item (lease, decode, post).
- scheduling: items are queued when their inputs exist, in plan order; the
  worker slot idle longest takes the oldest (Redis stream order, blocked
  XREADGROUP clients served first come first served). --slots S: S items at
  once per worker, cores / S threads each. Embedded: one node,
  quantize-linear jobs 1 thread each side by side, other jobs all threads.
- chunked plan: --chunks K (default nodes x slots); a chunk writes full-size
  partial Hessians; the reduce reads the 4K partials (at 5 GB/s) and writes 4.
- fixed costs: --setup-s (coordinator/embedded start: model fingerprint, plan,
  final verify; default: the measured embedded wall minus its jobs' span) and
  --worker-open-s (a worker opens and fingerprints the model before its first
  item; default: the same as setup).
- projection: work scales with FLOPs (collect: block forward + attention +
  X^T X for the four Hessians; propagate: block forward; quantize-linear:
  out*in^2 + in^3 (GPTQ update + Cholesky/inverse), per linear; merge: bytes),
  artifact bytes with their formulas (Hessians 8 (3 d^2 + ffn^2) per block,
  activations tokens * d * 4, packed linears at --bits).
"""
import argparse
import glob
import heapq
import json
import os
import re
import sys

SHAPES = {  # hidden, ffn, layers, heads, kv heads, vocab
    "tiny": (64, 172, 2, 8, 4, 512),
    "small": (256, 688, 4, 8, 8, 1024),
    "llama-7b": (4096, 11008, 32, 32, 32, 32000),
    "llama-7b-gqa": (4096, 11008, 32, 32, 8, 32000),
    "llama-70b": (8192, 28672, 80, 64, 8, 32000),
}
REDUCE_BPS = 5e9  # a reduce job sums K partial Hessians: memory bound, ~5 GB/s read per node
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
HESS_OF = {"q_proj": 0, "k_proj": 0, "v_proj": 0, "o_proj": 1, "gate_proj": 2, "up_proj": 2,
           "down_proj": 3}  # which of the 4 Hessians a linear's quantize job reads


class Shape:
    def __init__(self, name, layers=None, tokens=2048, ctx=512, bits=3.0):
        d, f, L, h, kv, v = SHAPES[name]
        self.name, self.d, self.ffn, self.heads, self.kv, self.vocab = name, d, f, h, kv, v
        self.layers = layers or L
        self.kvd = d // h * kv
        self.tokens, self.ctx, self.bits = tokens, ctx, bits

    def linear_dims(self, name):  # (out, in)
        d, f, kvd = self.d, self.ffn, self.kvd
        return {"q_proj": (d, d), "k_proj": (kvd, d), "v_proj": (kvd, d), "o_proj": (d, d),
                "gate_proj": (f, d), "up_proj": (f, d), "down_proj": (d, f)}[name]

    def block_params(self):
        return sum(o * i for o, i in map(self.linear_dims, LINEARS))

    def forward_flops(self, tokens):
        return tokens * (2.0 * self.block_params() + 2.0 * self.ctx * self.d)

    def collect_flops(self, tokens):
        return self.forward_flops(tokens) + 2.0 * tokens * (3 * self.d ** 2 + self.ffn ** 2)

    def quantize_flops(self, name):
        o, i = self.linear_dims(name)
        return float(o) * i * i + float(i) ** 3

    def hessian_bytes(self):
        return 8 * (3 * self.d ** 2 + self.ffn ** 2)

    def hessian_parts(self):  # collect writes 4 artifacts: attn_in, attn_out, mlp_in, mlp_act
        return [8 * self.d ** 2] * 3 + [8 * self.ffn ** 2]

    def act_bytes(self, tokens=None):
        return (self.tokens if tokens is None else tokens) * self.d * 4

    def packed_bytes(self, name):
        o, i = self.linear_dims(name)
        return int(o * i * self.bits / 8 + o * 4)  # codes + per-row scales (approximate)


# ---------------------------------------------------------------- measured input

def read_lines(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
    except OSError:
        pass
    return out


class Measured:
    """The embedded job times, the workers' ran records and the bench lines."""

    def __init__(self, d):
        self.dir = d
        emb = read_lines(os.path.join(d, "emb.json"))
        if not emb:
            sys.exit("simulate.py: no %s/emb.json (LB_BENCH_KEEP=DIR bench/distributed.sh ...)" % d)
        self.jobs = [e for e in emb if e.get("event") == "job"]
        done = [e for e in emb if e.get("event") == "done"]
        self.emb_threads = int(done[-1]["threads"]) if done else 2
        self.bench = read_lines(os.path.join(d, "bench.jsonl"))
        conf = next((b for b in self.bench if b.get("config") == "embedded"), {})
        self.preset = conf.get("preset", "llama-7b")
        self.shape = Shape(self.preset, conf.get("layers"), conf.get("nsamples", 4) * conf.get("ctx", 512),
                           conf.get("ctx", 512), conf.get("bits", 3))
        self.emb_wall = conf.get("wall_s")
        span = max(e["elapsed"] for e in self.jobs)
        self.setup_s = (self.emb_wall - span) if self.emb_wall else 0.0
        self.ran = {}  # "WxT" -> [ran records]
        for p in glob.glob(os.path.join(d, "w*-*.json")):
            cfg = re.sub(r"^w\d+-", "", os.path.basename(p))[:-5]
            self.ran.setdefault(cfg, []).extend(e for e in read_lines(p) if e.get("event") == "ran")
        self.walls = {b["config"]: b for b in self.bench if "wall_s" in b and "config" in b}

    def work(self, p):
        """Core-seconds at 1 thread per job key, from the embedded run."""
        w = {}
        T = self.emb_threads
        for e in self.jobs:
            t, b = e["type"], e["block"]
            if t == "quantize-linear":
                lin = e["tensor"].rsplit(".", 2)[-2] if e["tensor"] else "?"
                w[(t, b, lin)] = e["seconds"]  # ran on 1 thread
            else:
                w[(t, b, "")] = e["seconds"] / ((1 - p[t]) + p[t] / T)
        return w


# ---------------------------------------------------------------- job graph

class Job:
    __slots__ = ("key", "type", "block", "work", "p", "inputs", "outputs", "where", "prio",
                 "threads")

    def __init__(self, key, typ, block, work, p, inputs, outputs, where="worker"):
        self.key, self.type, self.block, self.work, self.p = key, typ, block, work, p
        self.inputs, self.outputs, self.where = inputs, outputs, where  # [(artifact, bytes)]
        self.threads = 0


def build_graph(shape, work_of, bytes_of, plan="current", chunks=1):
    """work_of(type, block, linear, part, K) -> core-seconds at 1 thread;
    bytes_of(kind, block, linear, K) -> bytes. Returns jobs in plan order."""
    L, jobs = shape.layers, []
    K = max(1, chunks) if plan == "chunked" else 1
    jobs.append(Job(("propagate", -1, ""), "propagate", -1, work_of("propagate", -1, "", 0, 1), None,
                    [("calib", bytes_of("calib", -1, "", 1))], [("X0", bytes_of("act", 0, "", 1))]))
    x = "X0"
    for b in range(L):
        H = ["H%d.%d" % (b, h) for h in range(4)]
        hb = [bytes_of("hessian", b, h, 1) for h in range(4)]
        if K == 1:
            jobs.append(Job(("collect-hessian", b, ""), "collect-hessian", b,
                            work_of("collect-hessian", b, "", 0, 1), None,
                            [(x, bytes_of("act", b, "", 1))], list(zip(H, hb))))
        else:
            parts = []
            for k in range(K):
                mine = [("%s.part%d" % (h, k), n) for h, n in zip(H, hb)]
                parts += mine
                jobs.append(Job(("collect-chunk", b, str(k)), "collect-hessian", b,
                                work_of("collect-hessian", b, "", k, K), None,
                                [("%s.%d" % (x, k), bytes_of("act", b, "", K))], mine))
            jobs.append(Job(("reduce", b, ""), "reduce", b, work_of("reduce", b, "", 0, K), None,
                            parts, list(zip(H, hb))))
        packed = []
        for lin in LINEARS:
            packed.append(("P%d.%s" % (b, lin), bytes_of("packed", b, lin, 1)))
            jobs.append(Job(("quantize-linear", b, lin), "quantize-linear", b,
                            work_of("quantize-linear", b, lin, 0, 1), None,
                            [(H[HESS_OF[lin]], hb[HESS_OF[lin]])], [packed[-1]]))
        if b < L - 1:
            nx = "X%d" % (b + 1)
            if K == 1:
                jobs.append(Job(("propagate", b, ""), "propagate", b, work_of("propagate", b, "", 0, 1),
                                None, [(x, bytes_of("act", b, "", 1))] + packed,
                                [(nx, bytes_of("act", b + 1, "", 1))]))
            else:
                for k in range(K):
                    jobs.append(Job(("propagate-chunk", b, str(k)), "propagate", b,
                                    work_of("propagate", b, "", k, K), None,
                                    [("%s.%d" % (x, k), bytes_of("act", b, "", K))] + packed,
                                    [("%s.%d" % (nx, k), bytes_of("act", b + 1, "", K))]))
            x = nx
    allp = [("P%d.%s" % (b, lin), bytes_of("packed", b, lin, 1)) for b in range(L) for lin in LINEARS]
    jobs.append(Job(("merge", -1, ""), "merge", -1, work_of("merge", -1, "", 0, 1), None, allp, [],
                    where="coordinator"))
    if K > 1:  # the embed job writes X0 chunked
        jobs[0].outputs = [("X0.%d" % k, bytes_of("act", 0, "", K)) for k in range(K)]
    return jobs


# ---------------------------------------------------------------- the simulator

def simulate(jobs, workers, cores, slots, bandwidth_gbs, p, item_overhead=0.0, setup=0.0,
             worker_open=0.0, embedded=False):
    """Event-driven list scheduling. Distributed: `workers` x `slots` item
    slots, a job gets cores // slots threads, fetches its missing inputs and
    publishes its outputs over the coordinator's link (one transfer at a
    time); merge runs on the coordinator; the slot idle longest takes the next item. Embedded: one node, a pool of
    `cores` job threads (lb_runner), quantize-linear on 1 thread, the other
    jobs on all cores, nothing moves. Returns (wall_s, stats)."""
    producer = {a: i for i, j in enumerate(jobs) for a, _ in j.outputs}
    children = [[] for _ in jobs]
    waiting = []
    for i, j in enumerate(jobs):
        ds = {producer[a] for a, _ in j.inputs if a in producer}
        waiting.append(len(ds))
        for d in ds:
            children[d].append(i)
    bps = bandwidth_gbs * 1e9
    link = []  # the coordinator's link: future busy intervals (start, end), sorted
    caches = [set() for _ in range(workers)]
    opened = [False] * workers
    if embedded:
        workers, slots = 1, cores
    # idle slots in the order they became idle: Redis serves the clients
    # blocked in XREADGROUP first come, first served
    free = [(w, s) for s in range(slots) for w in range(workers)]
    ready = [(setup, i) for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    events = []  # (end, job index, slot or None)
    st = {"compute": 0.0, "transfer": 0.0, "moved": 0, "by_type": {}, "times": [None] * len(jobs)}
    t, done, end_all = setup, 0, setup

    def move(start, nb):
        """Books the first gap of the link at or after start; returns the end."""
        d = nb / bps
        while link and link[0][1] <= t:  # the past does not matter any more
            link.pop(0)
        ts, k = start, 0
        while k < len(link):
            a, b = link[k]
            if ts + d <= a:
                break
            ts = max(ts, b)
            k += 1
        link.insert(k, (ts, ts + d))
        st["transfer"] += d
        st["moved"] += nb
        return ts + d

    while done < len(jobs):
        started = False
        if ready and ready[0][0] <= t:
            _, i = ready[0]
            j = jobs[i]
            if j.where == "coordinator" and not embedded:
                heapq.heappop(ready)
                dur = j.work * ((1 - p[j.type]) + p[j.type] / cores)
                heapq.heappush(events, (t + dur, i, None))
                st["times"][i] = (t, t + dur)
                st["compute"] += dur
                started = True
            elif free:
                heapq.heappop(ready)
                w, s = free.pop(0)
                thr = 1 if embedded and j.type == "quantize-linear" else (cores if embedded else max(1, cores // slots))
                dur = j.work * ((1 - p[j.type]) + p[j.type] / thr)
                st["compute"] += dur
                if embedded:
                    end = t + dur
                else:
                    x = t + item_overhead
                    if not opened[w]:
                        x += worker_open
                        opened[w] = True
                    for a, nb in j.inputs:
                        if a not in caches[w]:
                            x = move(x, nb)
                            caches[w].add(a)
                    x += dur
                    for a, nb in j.outputs:
                        x = move(x, nb)
                        caches[w].add(a)
                    end = x
                heapq.heappush(events, (end, i, (w, s)))
                st["times"][i] = (t, end)
                st["by_type"][j.type] = st["by_type"].get(j.type, 0.0) + (end - t)
                started = True
        if started:
            continue
        # nothing can start now: advance to the next completion (or readiness)
        nxt = [events[0][0]] if events else []
        if ready and ready[0][0] > t:
            nxt.append(ready[0][0])
        if not nxt:
            raise RuntimeError("simulate: stalled (graph error)")
        t = min(nxt)
        while events and events[0][0] <= t:
            end, i, slot = heapq.heappop(events)
            done += 1
            end_all = max(end_all, end)
            if slot is not None:
                free.append(slot)
            for c in children[i]:
                waiting[c] -= 1
                if waiting[c] == 0:
                    heapq.heappush(ready, (end, c))
    st["by_type"] = {k: round(v, 2) for k, v in st["by_type"].items()}
    return end_all, st


def run_embedded(jobs, cores, p, setup):
    return simulate(jobs, 1, cores, 1, 1e9, p, setup=setup, embedded=True)


# ---------------------------------------------------------------- measured-shape graph

def measured_graph(m, p, plan="current", chunks=1, target=None):
    """Jobs for the measured shape (target None) or scaled to `target`."""
    w = m.work(p)
    ms = m.shape
    qlin = {}
    for (t, b, lin), v in w.items():
        if t == "quantize-linear":
            qlin.setdefault(lin, []).append(v)
    qavg = {lin: sum(v) / len(v) for lin, v in qlin.items()}
    coll = [v for (t, b, _), v in w.items() if t == "collect-hessian"]
    prop = [v for (t, b, _), v in w.items() if t == "propagate" and b >= 0]
    embed = [v for (t, b, _), v in w.items() if t == "propagate" and b < 0]
    merge = [v for (t, b, _), v in w.items() if t == "merge"]
    c_avg = sum(coll) / len(coll)
    # a measured run with one layer has no block propagate: a block forward
    # is the collect minus its X^T X part
    p_avg = (sum(prop) / len(prop)) if prop else c_avg * ms.forward_flops(ms.tokens) / ms.collect_flops(ms.tokens)
    sh = target or ms
    tok = sh.tokens

    def work_of(t, b, lin, k, K):
        if t == "collect-hessian":
            return c_avg * sh.collect_flops(tok / K) / ms.collect_flops(ms.tokens)
        if t == "propagate" and b >= 0:
            return p_avg * sh.forward_flops(tok / K) / ms.forward_flops(ms.tokens)
        if t == "propagate":
            return (embed[0] if embed else 0.0) * tok * sh.d / (ms.tokens * ms.d)
        if t == "quantize-linear":
            return qavg[lin] * sh.quantize_flops(lin) / ms.quantize_flops(lin)
        if t == "reduce":  # K partials summed: memory bound, ~ reading them
            return K * sh.hessian_bytes() / REDUCE_BPS
        if t == "merge":
            return (merge[0] if merge else 0.0) * sh.layers * sh.block_params() / (ms.layers * ms.block_params())
        return 0.0

    def bytes_of(kind, b, lin, K):
        if kind == "calib":
            return tok * 4
        if kind == "act":
            return sh.act_bytes(tok // K)
        if kind == "hessian":
            return sh.hessian_parts()[lin]
        if kind == "packed":
            return sh.packed_bytes(lin)
        return 0

    return build_graph(sh, work_of, bytes_of, plan, chunks)


def ran_graph(m, cfg):
    """The measured shape's graph with every job's duration taken from the
    ran records of distributed config cfg (seconds incl. fetch and publish:
    replayed with no extra transfer). quantize-linear records carry no tensor
    name: per block, the durations are matched by rank to the embedded ones."""
    T = int(cfg.split("x")[1])
    recs = m.ran.get(cfg, [])
    by = {}
    for r in recs:
        by.setdefault((r["type"], r["block"]), []).append(r["seconds"])
    emb_q = {}
    for e in m.jobs:
        if e["type"] == "quantize-linear":
            emb_q.setdefault(e["block"], []).append((e["seconds"], e["tensor"].rsplit(".", 2)[-2]))
    dur = {}
    for (t, b), v in by.items():
        if t == "quantize-linear":
            lins = [lin for _, lin in sorted(emb_q.get(b, []), reverse=True)]
            for sec, lin in zip(sorted(v, reverse=True), lins):
                dur[(t, b, lin)] = sec
        else:
            dur[(t, b, "")] = sum(v) / len(v)
    merge = next((e["seconds"] for e in m.jobs if e["type"] == "merge"), 0.0)
    one = {k: 0.0 for k in ("collect-hessian", "propagate", "quantize-linear", "merge", "reduce")}

    def work_of(t, b, lin, k, K):
        if t == "merge":
            return merge
        return dur.get((t, b, lin), 0.0)

    def bytes_of(kind, b, lin, K):
        return 0
    jobs = build_graph(m.shape, work_of, bytes_of)
    return jobs, one, T


def p_of(a):
    return {"collect-hessian": a.p_collect, "propagate": a.p_propagate,
            "quantize-linear": a.p_quantize, "merge": 0.5, "reduce": 0.5}


def implied_p(m):
    """p per type implied by the measured runs: embedded (quantize 1 thread,
    others T) vs the worker ran records at other thread counts."""
    out = {}
    secs = {}
    for cfg, recs in m.ran.items():
        W, T = map(int, cfg.split("x"))
        for r in recs:
            d = secs.setdefault(r["type"], {}).setdefault(T, [0.0, 0])
            d[0] += r["seconds"]
            d[1] += 1
    for t, by in secs.items():
        if 1 in by and 2 in by and by[1][1] == by[2][1]:
            r = by[2][0] / by[1][0]  # t2/t1 = (1-p) + p/2
            out[t] = round(max(0.0, min(1.0, 2 * (1 - r))), 3)
    return out


def cmd_validate(a):
    m = Measured(a.__dict__["from"])
    p = p_of(a)
    setup = a.setup_s if a.setup_s is not None else m.setup_s
    wopen = a.worker_open_s if a.worker_open_s is not None else setup
    jobs = measured_graph(m, p)
    rows = []
    wall, st = run_embedded(jobs, m.emb_threads, p, setup)
    rows.append(("embedded", wall, m.emb_wall, st))
    for cfg, b in sorted(m.walls.items()):
        if cfg == "embedded" or "x" not in cfg:
            continue
        W, T = map(int, cfg.split("x"))
        wall, st = simulate(jobs, W, T, 1, a.bandwidth, p, a.item_overhead_s, setup, wopen)
        rows.append((cfg, wall, b["wall_s"], st))
    for cfg in sorted(m.ran):
        if cfg not in m.walls:
            continue
        W, T = map(int, cfg.split("x"))
        rj, p1, _ = ran_graph(m, cfg)  # p = 0: the records are at the run's threads already
        wall, st = simulate(rj, W, T, 1, 1e6, p1, a.item_overhead_s, setup, wopen)
        rows.append((cfg + " (own ran records)", wall, m.walls[cfg]["wall_s"], st))
    published = sum(nb for j in jobs if j.where == "worker" for _, nb in j.outputs)
    for cfg, pred, meas, st in rows:
        extra = {}
        if "x" in cfg and "own" not in cfg:
            extra = dict(model_fetched_bytes=st["moved"] - published,
                         measured_fetched_bytes=sum(r["bytes_fetched"] for r in m.ran.get(cfg, [])))
        print(json.dumps(dict(bench="simulate", mode="validate", config=cfg, shape=m.shape.name,
                              layers=m.shape.layers, tokens=m.shape.tokens,
                              predicted_wall_s=round(pred, 2), measured_wall_s=meas,
                              error=round(pred / meas - 1, 3) if meas else None,
                              bandwidth_gbs=a.bandwidth, setup_s=round(setup, 2),
                              worker_open_s=round(wopen, 2), p=p, busy=dict(
                                  compute_s=round(st["compute"], 2),
                                  transfer_s=round(st["transfer"], 2),
                                  moved_bytes=st["moved"]), span_by_type=st["by_type"], **extra)))
    ip = implied_p(m)
    meas_bytes = {}
    for cfg, recs in m.ran.items():
        meas_bytes[cfg] = {k: sum(r[k] for r in recs) for k in ("bytes_fetched", "bytes_published")}
    print(json.dumps(dict(bench="simulate", mode="validate", implied_p_from_ran=ip,
                          measured_bytes=meas_bytes,
                          model_published_bytes=sum(nb for j in jobs if j.where == "worker"
                                                    for _, nb in j.outputs))))


def cmd_replay(a):
    m = Measured(a.__dict__["from"])
    p = p_of(a)
    setup = a.setup_s if a.setup_s is not None else m.setup_s
    wopen = a.worker_open_s if a.worker_open_s is not None else setup
    jobs = measured_graph(m, p, a.plan, a.chunks or a.workers * a.slots)
    wall, st = simulate(jobs, a.workers, a.cores, a.slots, a.bandwidth, p, a.item_overhead_s, setup, wopen)
    print(json.dumps(dict(bench="simulate", mode="replay", shape=m.shape.name, layers=m.shape.layers,
                          workers=a.workers, cores=a.cores, slots=a.slots, plan=a.plan,
                          bandwidth_gbs=a.bandwidth, predicted_wall_s=round(wall, 2),
                          compute_s=round(st["compute"], 2), transfer_s=round(st["transfer"], 2),
                          moved_bytes=st["moved"], span_by_type=st["by_type"])))


def phases(jobs, times):
    """Mean per block (blocks 0..L-2, the ones with a propagate): seconds from
    the first start to the last end of each phase, transfers included."""
    per = {}
    for j, (a, b) in zip(jobs, times):
        if j.block < 0:
            continue
        ph = {"collect-chunk": "collect", "collect-hessian": "collect", "reduce": "reduce",
              "quantize-linear": "quantize", "propagate": "propagate",
              "propagate-chunk": "propagate"}[j.key[0]]
        lo, hi = per.setdefault(j.block, {}).get(ph, (a, b))
        per[j.block][ph] = (min(lo, a), max(hi, b))
    full = [v for v in per.values() if "propagate" in v]
    out = {}
    for ph in ("collect", "reduce", "quantize", "propagate"):
        xs = [v[ph][1] - v[ph][0] for v in full if ph in v]
        if xs:
            out[ph] = round(sum(xs) / len(xs), 1)
    return out


def critical_chain(jobs, p, cores):
    """Per block: collect (or chunk + reduce) + the slowest quantize + propagate,
    at full cores with no transfer: the serial chain no N can beat."""
    per = {}
    for j in jobs:
        if j.block < 0:
            continue
        d = j.work * ((1 - p[j.type]) + p[j.type] / cores)
        key = j.key[0]
        per.setdefault(j.block, {}).setdefault(key, []).append(d)
    tot = 0.0
    for b, k in per.items():
        tot += max(k.get("collect-hessian", [0])) + max(k.get("collect-chunk", [0])) + \
            max(k.get("reduce", [0])) + max(k.get("quantize-linear", [0])) + \
            max(k.get("propagate", [0])) + max(k.get("propagate-chunk", [0]))
    return tot


def cmd_project(a):
    m = Measured(a.__dict__["from"])
    p = p_of(a)
    ns, nc = a.tokens.split("x")
    tgt = Shape(a.shape, a.layers, int(ns) * int(nc), int(nc), a.bits)
    nodes = [int(x) for x in a.nodes.split(",")]
    setup = a.setup_s if a.setup_s is not None else m.setup_s
    wopen = a.worker_open_s if a.worker_open_s is not None else setup
    base = None
    emb_jobs = measured_graph(m, p, "current", 1, tgt)
    emb_wall, _ = run_embedded(emb_jobs, a.cores, p, setup)
    for plan in a.plans.split(","):
        for n in nodes:
            K = (a.chunks or n * a.slots) if plan == "chunked" else 1
            jobs = measured_graph(m, p, plan, K, tgt)
            wall, st = simulate(jobs, n, a.cores, a.slots, a.bandwidth, p, a.item_overhead_s, setup, wopen)
            if plan == a.plans.split(",")[0] and n == nodes[0]:
                base = wall
            chain = critical_chain(jobs, p, a.cores // a.slots)
            tr = st["transfer"]
            red = st["by_type"].get("reduce", 0.0)
            # what bounds it: the serial chain's compute (no N shortens it)
            # when it is most of the wall time; else what the rest waits on:
            # the reduce jobs (K partials in, 4 Hessians out) or transfers
            ph = phases(jobs, st["times"])
            if chain >= 0.75 * wall:
                bound = "serial block chain"
            elif ph.get("reduce", 0.0) >= 0.25 * sum(ph.values()):
                bound = "reduce"
            else:
                bound = "transfer"
            print(json.dumps(dict(
                bench="simulate", mode="project", shape=tgt.name, layers=tgt.layers,
                tokens=tgt.tokens, ctx=tgt.ctx, plan=plan, chunks=K, nodes=n, cores=a.cores,
                slots=a.slots, bandwidth_gbs=a.bandwidth, wall_s=round(wall, 1),
                wall_h=round(wall / 3600, 3), speedup_vs_n1=round(base / wall, 2),
                speedup_vs_embedded=round(emb_wall / wall, 2),
                efficiency=round(emb_wall / wall / n, 3), serial_chain_s=round(chain, 1),
                coordinator_link_busy_s=round(tr, 1), reduce_span_s=round(red, 1),
                per_block_s=ph,
                moved_gb=round(st["moved"] / 1e9, 1),
                bound=bound)))
    print(json.dumps(dict(bench="simulate", mode="project", shape=tgt.name, plan="embedded", nodes=1,
                          cores=a.cores, wall_s=round(emb_wall, 1), wall_h=round(emb_wall / 3600, 3))))


def cmd_selftest(a):
    """Hand-computed schedules on a 2-layer graph (p = 0: threads change
    nothing): collect 10 s, 7 quantize 1 s each, propagate 5 s, embed 2 s,
    merge 1 s; activations 1 GB at 1 GB/s, nothing else moves."""
    sh = Shape("tiny", 2)
    w = {"collect-hessian": 10.0, "quantize-linear": 1.0, "propagate": 5.0, "merge": 1.0}

    def work_of(t, b, lin, k, K):
        return 2.0 if (t == "propagate" and b < 0) else w[t]

    def bytes_of(kind, b, lin, K):
        return 1e9 if kind == "act" else 0
    p0 = {k: 0.0 for k in ("collect-hessian", "propagate", "quantize-linear", "merge", "reduce")}
    jobs = build_graph(sh, work_of, bytes_of)
    cases = [
        # 1 worker: 2 + 1 (X0 out) + 10 + 7 + 5 + 1 (X1 out) + 10 + 7 + 1
        ("1 worker", simulate(jobs, 1, 1, 1, 1.0, p0)[0], 44.0),
        # 2 workers: embed on w0 (ends 3); collect on w1, the idle-longest,
        # fetches X0 (ends 14); quantize in 4 rounds (18); propagate on w1 (X0
        # cached, X1 out: 24); collect on w0 fetches X1 (35); quantize (39); merge
        ("2 workers", simulate(jobs, 2, 1, 1, 1.0, p0)[0], 40.0),
        # embedded, 2 cores: quantize 2 at a time, nothing moves
        # 2 + 10 + 4 + 5 + 10 + 4 + 1
        ("embedded 2 cores", run_embedded(jobs, 2, p0, 0.0)[0], 36.0),
    ]
    bad = 0
    for name, got, want in cases:
        ok = abs(got - want) < 1e-6
        bad += not ok
        print(json.dumps(dict(bench="simulate", mode="selftest", case=name, wall_s=got, expected_s=want, ok=ok)))
    sys.exit(1 if bad else 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("selftest", help="hand-computed schedules; exit 1 on a mismatch")
    for name in ("validate", "replay", "project"):
        s = sub.add_parser(name)
        s.add_argument("--from", required=True, help="directory LB_BENCH_KEEP filled")
        s.add_argument("--bandwidth", type=float, default=1.25, help="GB/s per link (default 1.25: 10 GbE)")
        s.add_argument("--p-collect", type=float, default=0.9)
        s.add_argument("--p-propagate", type=float, default=0.9)
        s.add_argument("--p-quantize", type=float, default=0.6)
        s.add_argument("--item-overhead-s", type=float, default=0.05)
        s.add_argument("--setup-s", type=float, default=None)
        s.add_argument("--worker-open-s", type=float, default=None)
        s.add_argument("--slots", type=int, default=1, help="items at once per worker (threads split)")
        if name != "validate":
            s.add_argument("--cores", type=int, default=2)
            s.add_argument("--plan", default="current", choices=["current", "chunked"])
            s.add_argument("--chunks", type=int, default=0, help="chunked plan: K (default: nodes x slots)")
        if name == "replay":
            s.add_argument("--workers", type=int, default=2)
        if name == "project":
            s.add_argument("--shape", default="llama-7b", choices=sorted(SHAPES))
            s.add_argument("--layers", type=int, default=None)
            s.add_argument("--tokens", default="128x2048", help="NSAMPLESxCTX")
            s.add_argument("--bits", type=float, default=3)
            s.add_argument("--nodes", default="1,2,4,8,16,32,64")
            s.add_argument("--plans", default="current,chunked")
    a = ap.parse_args()
    {"validate": cmd_validate, "replay": cmd_replay, "project": cmd_project,
     "selftest": cmd_selftest}[a.cmd](a)


if __name__ == "__main__":
    main()
