#!/usr/bin/env python3
"""size-check.py [DIR...]: files over 800 lines and functions over 150 lines
(signature to closing brace) in the C sources under DIR (default: every
source folder but tests/). Prints one line per offender; exit 1 if any."""
import os, re, sys

MAX_FILE, MAX_FUNC = 800, 150
dirs = sys.argv[1:] or ["cli", "coordinator", "proto", "worker", "common", "bench"]
bad = 0
for d in dirs:
    for root, _, files in os.walk(d):
        for f in sorted(files):
            if not f.endswith((".c", ".h")):
                continue
            p = os.path.join(root, f)
            lines = open(p, encoding="utf-8", errors="replace").read().split("\n")
            n = len(lines) - (lines[-1] == "")
            if n > MAX_FILE:
                print(f"{p}: {n} lines (file > {MAX_FILE})")
                bad += 1
            for i, line in enumerate(lines):
                if line != "{" or i == 0:
                    continue
                s = i - 1  # walk back to the start of the signature
                while s > 0 and lines[s - 1].strip() and not re.match(r"^(/\*| \*|#|//|}|.*(;|\*/)\s*$)", lines[s - 1]):
                    s -= 1
                e = i
                while e < len(lines) and lines[e] != "}":
                    e += 1
                length = e - s + 1
                if length > MAX_FUNC:
                    name = re.search(r"(\w+)\s*\(", " ".join(lines[s:i]))
                    print(f"{p}:{s + 1}: {name.group(1) if name else '?'} {length} lines (function > {MAX_FUNC})")
                    bad += 1
sys.exit(1 if bad else 0)
