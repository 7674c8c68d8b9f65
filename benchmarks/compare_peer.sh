#!/usr/bin/env bash
# One HGAD level, hgad against the PyTorch peer (../shared/peers/torch-reference), measured in one
# sitting: the two programs run in turn, `rounds` times, and the table gives each figure's median
# over the rounds and the ratio hgad / peer.
#
#   benchmarks/compare_peer.sh [BUILD_DIR] [ROUNDS]      (default build/release, 3 rounds)
#
# BUILD_DIR must hold benchmarks/bench_train_step (configure with -DHGAD_BUILD_BENCHMARKS=ON).
# The peer runs with Debian's python3-torch and libopenblas0-openmp. OpenBLAS 0.3.21 does not know
# this machine's CPU model and falls back to its generic "Prescott" kernels, about 7x slower than
# its AVX-512 ones; the script pins OPENBLAS_CORETYPE=Cooperlake (AVX-512, the newest kernel set of
# that release) so the peer is measured at its best. Raw outputs are kept in BUILD_DIR/compare_peer/.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/release}
rounds=${2:-3}
peer=../shared/peers/torch-reference/bench_torch_step.py
out=$build/compare_peer
bench=$build/benchmarks/bench_train_step
[ -x "$bench" ] || { echo "compare_peer: $bench is missing (build with -DHGAD_BUILD_BENCHMARKS=ON)" >&2; exit 1; }
[ -f "$peer" ] || { echo "compare_peer: $peer is missing" >&2; exit 1; }
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.jsonl
export OMP_WAIT_POLICY=PASSIVE
for r in $(seq 1 "$rounds"); do
  echo "== round $r/$rounds: hgad" >&2
  "$bench" --benchmark_min_time=3 --benchmark_format=json --benchmark_out="$out/hgad_$r.json" \
    --benchmark_out_format=json > /dev/null
  echo "== round $r/$rounds: peer" >&2
  env -u OPENBLAS_L2_SIZE OPENBLAS_CORETYPE=Cooperlake /usr/bin/python3 "$peer" \
    --configs d256_n8192,hgad_d200_n8192 > "$out/peer_$r.jsonl"
done

python3 - "$out" "$rounds" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
ours, peer = {}, {}
for r in range(1, rounds + 1):
    for b in json.load(open(f"{out}/hgad_{r}.json"))["benchmarks"]:
        ours.setdefault(b["name"].replace("/real_time", ""), []).append(b)
    for line in open(f"{out}/peer_{r}.jsonl"):
        line = line.strip()
        if not line.startswith("{"):
            continue
        d = json.loads(line)
        for mode in ("train", "infer"):
            key = f"{mode}/{d['config']}/threads:{d['threads']}"
            peer.setdefault(key, []).append({"rate": d[f"{mode}_vec_per_s"], "rss": d["peak_rss_mb_train"]})
med = statistics.median
print(f"{'benchmark':44} {'hgad vec/s':>11} {'peer vec/s':>11} {'ratio':>6} {'tensors MB':>10} {'RSS MB':>7} {'peer RSS':>8}")
for name, runs in ours.items():
    parts = name.split("/")
    key = "/".join([parts[0], parts[1], parts[-1]])
    rate = med(b["items_per_second"] for b in runs)
    tensors = med(b.get("tensor_peak_MB", float("nan")) for b in runs)
    rss = med(b.get("maxrss_MB", float("nan")) for b in runs)
    p = peer.get(key)
    prate = med(x["rate"] for x in p) if p else float("nan")
    pmb = med(x["rss"] for x in p) if p and parts[0] == "train" else float("nan")
    print(f"{name:44} {rate:11.0f} {prate:11.0f} {rate / prate:6.2f} {tensors:10.0f} {rss:7.0f} {pmb:8.0f}")
print(f"(medians over {rounds} rounds. tensors MB: the largest tensor storage hgad held during the timed"
      " training steps; RSS MB: hgad's process peak so far, which includes earlier benchmarks of the run;"
      " peer RSS: the peer's peak RSS of its training step)")
EOF
