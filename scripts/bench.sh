#!/usr/bin/env bash
# Runs the criterion benches (frame codec, Ping round trip) with bounded
# times and prints a compact summary: the hardware, then per stack the
# CPU cost per call on a current-thread runtime, the throughput of 16
# concurrent connections and of 64 pipelined requests on one connection,
# each as a ratio to the raw echo of the same run; with several runs, each
# run's ratios and their spread (min/median/max).
#
# Usage: scripts/bench.sh [rpc|codec|all]       (default: all)
# Environment:
#   BENCH_WARMUP=1    criterion warm-up seconds per benchmark
#   BENCH_MEASURE=3   criterion measurement seconds per benchmark
#   BENCH_RUNS=1      runs of the RPC bench; the table shows the median of the runs
# Figures and method: docs/BENCHMARKS.md.
set -euo pipefail

cd "$(dirname "$0")/.."
what="${1:-all}"
warmup="${BENCH_WARMUP:-1}"
measure="${BENCH_MEASURE:-3}"
runs="${BENCH_RUNS:-1}"
criterion_dir="${CARGO_TARGET_DIR:-target}/criterion"
results="$(mktemp -d)"
trap 'rm -rf "$results"' EXIT

case "$what" in
    all | rpc | codec) ;;
    *) echo "usage: $0 [rpc|codec|all]" >&2; exit 2 ;;
esac

echo "== hardware"
echo "cpus:   $(nproc) ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'))"
echo "kernel: $(uname -r)"
echo "rustc:  $(rustc --version)"
echo "load:   $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min; other work on the machine skews every figure)"
echo

# point estimate (ns) of `mean` or `median` in a criterion estimates.json
estimate() {
    sed -E "s/.*\"$2\":\{\"confidence_interval\":\{[^}]*\},\"point_estimate\":([0-9.eE+-]+).*/\1/" "$1"
}

bench() {
    local name="$1"
    rm -rf "$criterion_dir/${name}_"*
    cargo bench -q -p arcbox-agent-suite --bench "$name" -- \
        --warm-up-time "$warmup" --measurement-time "$measure" --noplot >"$results/$name.log" 2>&1 || {
        cat "$results/$name.log" >&2
        exit 1
    }
}

if [[ "$what" != rpc ]]; then
    bench frame_codec
    echo "== frame codec: encode + decode of one frame (13-byte trace id)"
    printf '%-8s %10s %14s %12s\n' payload "wire" "time/frame" "throughput"
    for size in 0B 64B 4KiB 1MiB; do
        f="$criterion_dir/frame_codec_encode_decode/$size/new/estimates.json"
        wire=$(grep -oE '"Bytes":[0-9]+' "$criterion_dir/frame_codec_encode_decode/$size/new/benchmark.json" |
            cut -d: -f2)
        mean=$(estimate "$f" mean)
        awk -v s="$size" -v m="$mean" -v w="${wire:-0}" 'BEGIN {
            t = (m >= 1000) ? sprintf("%.2f us", m / 1000) : sprintf("%.1f ns", m);
            printf "%-8s %8d B %14s %9.2f GiB/s\n", s, w, t, (w / (m / 1e9)) / (1024 ^ 3) }'
    done
    echo
fi

if [[ "$what" != codec ]]; then
    stacks="raw_echo arcbox arcbox_owned ttrpc tonic"
    groups="cost_current_thread conn16_current_thread conn16_multi_thread2 pipelined64_current_thread"
    for run in $(seq 1 "$runs"); do
        bench rpc_roundtrip
        grep -m1 'Ping exchange' "$results/rpc_roundtrip.log" >"$results/shape" || true
        for group in $groups; do
            for stack in $stacks; do
                f="$criterion_dir/rpc_roundtrip_$group/$stack/new/estimates.json"
                echo "$group $stack $(estimate "$f" mean) $(estimate "$f" median)" >>"$results/rpc.$run"
            done
        done
        # this run's ratios to its own raw echo: cost (lower is better), then
        # throughputs (higher is better)
        awk -v run="$run" -v stacks="$stacks" '
            { m[$1, $2] = $3 }
            END {
                n = split(stacks, s, " ")
                for (i = 1; i <= n; i++)
                    printf "%s %s %.4f %.4f %.4f %.4f\n", run, s[i],
                        m["cost_current_thread", s[i]] / m["cost_current_thread", "raw_echo"],
                        m["conn16_current_thread", "raw_echo"] / m["conn16_current_thread", s[i]],
                        m["conn16_multi_thread2", "raw_echo"] / m["conn16_multi_thread2", s[i]],
                        m["pipelined64_current_thread", "raw_echo"] / m["pipelined64_current_thread", s[i]]
            }' "$results/rpc.$run" >>"$results/ratios"
    done
    # median over runs of each (group, stack, statistic)
    cat "$results"/rpc.* | awk '
        { key = $1 " " $2; n[key]++; mean[key, n[key]] = $3; med[key, n[key]] = $4 }
        function median(arr, key, cnt,   i, j, t, v) {
            for (i = 1; i <= cnt; i++) v[i] = arr[key, i]
            for (i = 1; i <= cnt; i++) for (j = i + 1; j <= cnt; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
            return (cnt % 2) ? v[(cnt + 1) / 2] : (v[cnt / 2] + v[cnt / 2 + 1]) / 2
        }
        END { for (key in n) print key, median(mean, key, n[key]), median(med, key, n[key]) }' >"$results/rpc.median"

    value() { awk -v g="$1" -v s="$2" -v c="$3" '$1 == g && $2 == s { print $c }' "$results/rpc.median"; }
    echo "== Ping round trip over a Unix socket ($(sed 's/^Ping exchange: //' "$results/shape"); median of $runs run(s))"
    echo "cost = client + server on one current-thread runtime, sequential calls (CPU per call)"
    echo "16 conn = 16 connections calling concurrently, calls/s (ct: current-thread runtime, mt2: 2 workers)"
    echo "pipe64 = one connection, 64 requests sent before reading, calls/s (current-thread runtime)"
    printf '%-12s %11s %11s %7s   %12s %7s   %12s %7s   %12s %7s\n' \
        stack "cost mean" "cost p50" "vs raw" "16conn ct/s" "vs raw" "16conn mt2/s" "vs raw" "pipe64 ct/s" "vs raw"
    raw_cost=$(value cost_current_thread raw_echo 3)
    raw_ct=$(value conn16_current_thread raw_echo 3)
    raw_mt=$(value conn16_multi_thread2 raw_echo 3)
    raw_pipe=$(value pipelined64_current_thread raw_echo 3)
    for stack in $stacks; do
        awk -v s="$stack" -v cm="$(value cost_current_thread "$stack" 3)" -v cp="$(value cost_current_thread "$stack" 4)" \
            -v ct="$(value conn16_current_thread "$stack" 3)" -v mt="$(value conn16_multi_thread2 "$stack" 3)" \
            -v pp="$(value pipelined64_current_thread "$stack" 3)" \
            -v rc="$raw_cost" -v rct="$raw_ct" -v rmt="$raw_mt" -v rpp="$raw_pipe" 'BEGIN {
            printf "%-12s %8.2f us %8.2f us %6.2fx   %12.0f %6.2fx   %12.0f %6.2fx   %12.0f %6.2fx\n",
                s, cm / 1000, cp / 1000, cm / rc, 1e9 / ct, rct / ct, 1e9 / mt, rmt / mt, 1e9 / pp, rpp / pp }'
    done
    echo "(cost p50 = criterion's median over samples of the mean time per call; vs raw: cost ratio, lower"
    echo " is better; throughput ratio = calls/s over the raw echo's, higher is better)"
    echo
    echo "== ratios to the raw echo, run by run (cost: lower is better; the others: higher is better)"
    printf '%-4s %-12s %8s %10s %11s %8s\n' run stack cost "16conn ct" "16conn mt2" pipe64
    awk '{ printf "%-4s %-12s %7.2fx %9.2fx %10.2fx %7.2fx\n", $1, $2, $3, $4, $5, $6 }' "$results/ratios"
    echo "spread over $runs run(s), min / median / max:"
    awk -v stacks="$stacks" '
        { n[$2]++; for (c = 3; c <= 6; c++) v[$2, c, n[$2]] = $c }
        function spread(st, c,   i, j, t, k, a) {
            k = n[st]
            for (i = 1; i <= k; i++) a[i] = v[st, c, i]
            for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
            return sprintf("%.2f/%.2f/%.2f", a[1], (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2, a[k])
        }
        END {
            m = split(stacks, s, " ")
            for (i = 2; i <= m; i++)
                printf "%-12s cost %s   16conn ct %s   16conn mt2 %s   pipe64 %s\n", s[i],
                    spread(s[i], 3), spread(s[i], 4), spread(s[i], 5), spread(s[i], 6)
        }' "$results/ratios"
fi
