#!/bin/sh
# bench/reference/run.sh REPO_DIR METHOD W.safetensors H.safetensors [options]
# Runs a paper's own code from a local clone on one (W, H) pair on CPU and prints the
# JSON `lowbit qmatrix --json` prints. A benchmark, not a test. Needs the Debian 12
# packages python3-torch python3-sklearn python3-numpy python3-yaml (see
# bench/reference/README.md); options: see run_ref.py --help.
set -eu
if [ $# -lt 4 ]; then
    sed -n '2,6p' "$0" >&2
    exit 2
fi
exec /usr/bin/python3 "$(dirname "$0")/run_ref.py" "$@"
