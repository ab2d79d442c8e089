#!/usr/bin/env bash
# Drives vdma-blk and qemu-storage-daemon with the same front-end (vdma-bench, bypass mode) on
# the same backing, and prints the IOPS ratio vdma-blk / qemu-storage-daemon per workload.
#
#   bench/compare-backends.sh [--runtime SECS] [--size-mib N] [--json] [--bench PATH] [--vdma-blk PATH]
#
# Backings: no storage (vdma-blk --blk-file null:SIZE vs qemu-storage-daemon null-co with
# read-zeroes=on), and a file on tmpfs (/dev/shm) for each, of the same size.
# Workloads: 4 KiB randread and randwrite at iodepth 1 and 32, one queue.
# Default binaries: build/release/apps/{vdma-bench,vdma-blk} (built here if missing).
# --json prints one JSON document instead of the table. Exits 1 when a run fails.
set -euo pipefail
cd "$(dirname "$0")/.."

runtime=5
size_mib=256
json=0
bench=""
vdma_blk=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runtime) runtime=$2; shift 2 ;;
    --size-mib) size_mib=$2; shift 2 ;;
    --json) json=1; shift ;;
    --bench) bench=$2; shift 2 ;;
    --vdma-blk) vdma_blk=$2; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "compare-backends: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$runtime" in ''|*[!0-9.]*) echo "compare-backends: --runtime $runtime: not a number of seconds" >&2; exit 2 ;; esac
case "$size_mib" in ''|*[!0-9]*|0) echo "compare-backends: --size-mib $size_mib: not a positive integer" >&2; exit 2 ;; esac

if [ -z "$bench" ] || [ -z "$vdma_blk" ]; then
  scripts/install-deps >&2
  cmake --preset release >/dev/null
  cmake --build --preset release --target vdma-bench vdma-blk >&2
  bench=${bench:-build/release/apps/vdma-bench}
  vdma_blk=${vdma_blk:-build/release/apps/vdma-blk}
fi
for tool in jq qemu-storage-daemon; do
  command -v "$tool" >/dev/null || { echo "compare-backends: $tool not found (scripts/install-deps, scripts/install-guest-deps)" >&2; exit 2; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/vdma-compare.XXXXXX")
shm=$(mktemp -d /dev/shm/vdma-compare.XXXXXX)
pids=()
# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work" "$shm"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME COMMAND...: runs a back-end that listens on $work/NAME.sock, logging to $work/NAME.log.
start() {
  local name=$1; shift
  "$@" >"$work/$name.log" 2>&1 </dev/null &
  pids+=("$!")
  for _ in $(seq 100); do
    [ -S "$work/$name.sock" ] && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  echo "compare-backends: $name did not start:" >&2
  cat "$work/$name.log" >&2
  exit 1
}

# One image each: both back-ends run at once, and each takes the image lock
# (vdma-blk an exclusive OFD lock, qemu-storage-daemon its lock bytes), as two
# writers of one image must not share it.
vdma_image=$shm/vdma-blk.img
qsd_image=$shm/qsd.img
truncate -s "${size_mib}M" "$vdma_image" "$qsd_image"
# vdma-blk busy-polls its rings for 32 us before sleeping, as QEMU's event loop polls adaptively
# up to 32 us (poll-max-ns) by default; without it each request pays a wake-up.
start vdma-null "$vdma_blk" --socket-path "$work/vdma-null.sock" --blk-file "null:${size_mib}M" --poll 32
start qsd-null qemu-storage-daemon \
  --blockdev "driver=null-co,node-name=n0,size=$((size_mib << 20)),read-zeroes=on" \
  --export "type=vhost-user-blk,id=e0,node-name=n0,writable=on,addr.type=unix,addr.path=$work/qsd-null.sock"
start vdma-tmpfs "$vdma_blk" --socket-path "$work/vdma-tmpfs.sock" --blk-file "$vdma_image" --poll 32
start qsd-tmpfs qemu-storage-daemon \
  --blockdev "driver=file,node-name=f0,filename=$qsd_image,aio=io_uring" \
  --export "type=vhost-user-blk,id=e1,node-name=f0,writable=on,addr.type=unix,addr.path=$work/qsd-tmpfs.sock"

# run BACKEND RW DEPTH: prints the IOPS vdma-bench measured.
run() {
  local out
  if ! out=$("$bench" --socket-path "$work/$1.sock" --mode bypass --rw "$2" --bs 4096 --iodepth "$3" \
      --queues 1 --runtime "$runtime" --no-verify --progress never --json 2>"$work/bench.err"); then
    echo "compare-backends: vdma-bench against $1 ($2, iodepth $3) failed:" >&2
    cat "$work/bench.err" >&2
    exit 1
  fi
  jq -e '.results[0].iops' <<<"$out"
}

rows=()
for backing in null tmpfs; do
  for rw in randread randwrite; do
    for depth in 1 32; do
      v=$(run "vdma-$backing" "$rw" "$depth")
      q=$(run "qsd-$backing" "$rw" "$depth")
      rows+=("$(jq -nc --arg b "$backing" --arg rw "$rw" --argjson d "$depth" --argjson v "$v" --argjson q "$q" \
        '{backing: $b, rw: $rw, iodepth: $d, vdma_blk_iops: $v, qsd_iops: $q, ratio: ($v / $q)}')")
    done
  done
done

if [ "$json" = 1 ]; then
  printf '%s\n' "${rows[@]}" | jq -s --argjson runtime "$runtime" \
    '{workload: {bs: 4096, queues: 1, runtime_s: $runtime, mode: "bypass"}, results: .}'
else
  echo "vdma-blk vs qemu-storage-daemon, driven by vdma-bench in bypass mode; 4 KiB, 1 queue, ${runtime} s per run"
  printf '%-7s %-10s %7s %14s %14s %8s\n' backing rw iodepth vdma-blk-IOPS qsd-IOPS ratio
  printf '%s\n' "${rows[@]}" | jq -r '[.backing, .rw, .iodepth, (.vdma_blk_iops | floor), (.qsd_iops | floor),
      ((.ratio * 100 | round) / 100)] | @tsv' |
    while IFS=$'\t' read -r b rw d v q r; do printf '%-7s %-10s %7s %14s %14s %8s\n' "$b" "$rw" "$d" "$v" "$q" "$r"; done
fi
