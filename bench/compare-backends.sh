#!/usr/bin/env bash
# Drives vdma-blk and qemu-storage-daemon with the same front-end (vdma-bench, bypass mode, 4 KiB)
# on the same kind of backing, repetitions interleaved, and reports per back-end the median and
# the min-max IOPS, median p50/p99 latency, CPU seconds (user+sys) per million requests, and the
# ratio of the IOPS medians vdma-blk / qemu-storage-daemon.
#
#   bench/compare-backends.sh [--runtime SECS] [--repeat N] [--backings LIST] [--queues LIST]
#       [--size-mib N] [--poll US] [--poll-backings LIST] [--disk-dir DIR] [--json]
#       [--bench PATH] [--vdma-blk PATH]
#
# Back-ends: vdma-blk at its defaults; qemu-storage-daemon with an iothread, aio=io_uring and
# cache.direct=on where the backing allows it; and vdma-blk --poll US (default 50; 0: none),
# reported as its own row, on the backings of --poll-backings (default null).
# Backings (--backings, default null,tmpfs,disk,loop): null (vdma-blk null:SIZE vs null-co
# read-zeroes=on); tmpfs (a file in /dev/shm); disk (a preallocated file in --disk-dir, default
# /var/tmp, opened with O_DIRECT); loop (a loop device with --direct-io=on over such a file,
# opened with O_DIRECT; needs losetup to work). A backing the machine cannot give is skipped
# with a note. Each back-end has its own image of --size-mib MiB (default 256).
# Workloads: randread and randwrite at iodepth 1 and 32 on each of --queues (default 1,2);
# back-ends are started with that many queues. Each case runs the back-ends in turn (A B A B ...)
# --repeat times (default 3), for --runtime seconds each (default 2).
# --json prints one JSON document instead of the table. Default binaries:
# build/release/apps/{vdma-bench,vdma-blk} (built here if missing).
# Exits 1 when a run fails, 2 on a usage error.
set -euo pipefail
export LC_ALL=C  # printf's decimal point
cd "$(dirname "$0")/.."

usage_error() { echo "compare-backends: $*" >&2; exit 2; }

runtime=2
repeat=3
backings=null,tmpfs,disk,loop
queues_list=1,2
size_mib=256
poll_us=50
poll_backings=null
disk_dir=/var/tmp
json=0
bench=""
vdma_blk=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runtime|--repeat|--backings|--queues|--size-mib|--poll|--poll-backings|--disk-dir|--bench|--vdma-blk)
      [ $# -ge 2 ] || usage_error "$1 needs a value (see --help)" ;;&
    --runtime) runtime=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --backings) backings=$2; shift 2 ;;
    --queues) queues_list=$2; shift 2 ;;
    --size-mib) size_mib=$2; shift 2 ;;
    --poll) poll_us=$2; shift 2 ;;
    --poll-backings) poll_backings=$2; shift 2 ;;
    --disk-dir) disk_dir=$2; shift 2 ;;
    --json) json=1; shift ;;
    --bench) bench=$2; shift 2 ;;
    --vdma-blk) vdma_blk=$2; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) usage_error "unknown argument '$1' (see --help)" ;;
  esac
done
case "$runtime" in ''|*[!0-9.]*|*.*.*|.) usage_error "--runtime $runtime: not a number of seconds" ;; esac
case "$repeat" in ''|*[!0-9]*|0) usage_error "--repeat $repeat: not a positive integer" ;; esac
case "$size_mib" in ''|*[!0-9]*|0) usage_error "--size-mib $size_mib: not a positive integer" ;; esac
case "$poll_us" in ''|*[!0-9]*) usage_error "--poll $poll_us: not a number of microseconds" ;; esac
IFS=, read -r -a backing_list <<<"$backings"
IFS=, read -r -a poll_list <<<"$poll_backings"
IFS=, read -r -a queue_counts <<<"$queues_list"
[ ${#backing_list[@]} -gt 0 ] || usage_error "--backings is empty"
[ ${#queue_counts[@]} -gt 0 ] || usage_error "--queues is empty"
for b in "${backing_list[@]}" "${poll_list[@]}"; do
  case "$b" in null|tmpfs|disk|loop) ;; *) usage_error "backing '$b': not one of null, tmpfs, disk, loop" ;; esac
done
for q in "${queue_counts[@]}"; do
  case "$q" in ''|*[!0-9]*) usage_error "--queues: '$q' is not a queue count" ;; esac
  if [ "$q" -lt 1 ] || [ "$q" -gt 16 ]; then usage_error "--queues: $q is outside 1..16 (vdma-blk's limit)"; fi
done

if [ -z "$bench" ] || [ -z "$vdma_blk" ]; then
  scripts/install-deps >&2
  cmake --preset release >/dev/null
  cmake --build --preset release --target vdma-bench vdma-blk >&2
  bench=${bench:-build/release/apps/vdma-bench}
  vdma_blk=${vdma_blk:-build/release/apps/vdma-blk}
fi
for tool in jq qemu-storage-daemon; do
  command -v "$tool" >/dev/null || usage_error "$tool not found (scripts/install-deps, scripts/install-guest-deps)"
done

clk_tck=$(getconf CLK_TCK)
work=$(mktemp -d "${TMPDIR:-/tmp}/vdma-compare.XXXXXX")
shm=""
disk_work=""
pids=()
loops=()
# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
  stop_backends
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
  rm -rf "$work" ${shm:+"$shm"} ${disk_work:+"$disk_work"}
}
# shellcheck disable=SC2317
stop_backends() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- backings -------------------------------------------------------------------------------
# Which back-ends run on a backing: vdma-blk and qsd always, vdma-blk-poll where asked.
backends_for() {
  local b=$1 list="vdma-blk qsd"
  if [ "$poll_us" -gt 0 ]; then
    for p in "${poll_list[@]}"; do [ "$p" = "$b" ] && list="$list vdma-blk-poll"; done
  fi
  echo "$list"
}

skipped=()  # JSON objects {backing, reason}
skip() { skipped+=("$(jq -nc --arg b "$1" --arg r "$2" '{backing: $b, reason: $r}')"); }
declare -A image  # "$backing/$backend" -> the path vdma-blk or qemu-storage-daemon opens

# A preallocated, written image (reads must reach the device, not a hole); also proves O_DIRECT works.
write_image() {
  dd if=/dev/zero of="$1" bs=1M count="$size_mib" oflag=direct status=none 2>"$work/dd.err"
}

available=()
for b in "${backing_list[@]}"; do
  case "$b" in
    null) available+=(null) ;;
    tmpfs)
      [ -n "$shm" ] || shm=$(mktemp -d /dev/shm/vdma-compare.XXXXXX)
      for be in $(backends_for tmpfs); do
        image[tmpfs/$be]=$shm/$be.img
        truncate -s "${size_mib}M" "${image[tmpfs/$be]}"
      done
      available+=(tmpfs) ;;
    disk|loop)
      if [ "$(stat -f -c %T "$disk_dir" 2>/dev/null)" = tmpfs ]; then
        skip "$b" "--disk-dir $disk_dir is on tmpfs"; continue
      fi
      [ -n "$disk_work" ] || disk_work=$(mktemp -d "$disk_dir/vdma-compare.XXXXXX") ||
        { skip "$b" "cannot create a directory in $disk_dir"; continue; }
      ok=1
      for be in $(backends_for "$b"); do
        file=$disk_work/$b-$be.img
        if ! write_image "$file"; then
          skip "$b" "writing $file with O_DIRECT failed: $(head -c 200 "$work/dd.err")"; ok=0; break
        fi
        if [ "$b" = disk ]; then
          image[$b/$be]=$file
        elif dev=$(losetup --find --show --direct-io=on "$file" 2>"$work/losetup.err"); then
          loops+=("$dev")
          image[$b/$be]=$dev
        else
          skip loop "losetup --direct-io=on failed (uid $(id -u)): $(head -c 200 "$work/losetup.err")"; ok=0; break
        fi
      done
      [ "$ok" = 1 ] && available+=("$b") ;;
  esac
done

# --- back-ends ------------------------------------------------------------------------------
declare -A pid_of  # back-end name -> pid of the process whose CPU time is counted
declare -A cmdline_of  # "$backing/$backend" -> how it was started (with the first --queues count), for the JSON

# start NAME COMMAND...: runs a back-end that listens on $work/NAME.sock, logging to $work/NAME.log.
start() {
  local name=$1; shift
  rm -f "$work/$name.sock"
  "$@" >"$work/$name.log" 2>&1 </dev/null &
  pids+=("$!")
  pid_of[$name]=$!
  for _ in $(seq 100); do
    [ -S "$work/$name.sock" ] && return 0
    kill -0 "${pid_of[$name]}" 2>/dev/null || break
    sleep 0.05
  done
  echo "compare-backends: $name did not start: $*" >&2
  cat "$work/$name.log" >&2
  exit 1
}

# start_backends BACKING QUEUES: starts every back-end of BACKING with QUEUES queues.
start_backends() {
  local b=$1 q=$2 be blockdev cmd
  for be in $(backends_for "$b"); do
    case "$be" in
      vdma-blk|vdma-blk-poll)
        cmd=("$vdma_blk" --socket-path "$work/$be.sock" --num-queues "$q")
        case "$b" in
          null) cmd+=(--blk-file "null:${size_mib}M") ;;
          tmpfs) cmd+=(--blk-file "${image[$b/$be]}") ;;
          disk|loop) cmd+=(--blk-file "${image[$b/$be]}" --direct) ;;
        esac
        [ "$be" = vdma-blk-poll ] && cmd+=(--poll "$poll_us") ;;
      qsd)
        case "$b" in
          null) blockdev="driver=null-co,node-name=d0,size=$((size_mib << 20)),read-zeroes=on" ;;
          # tmpfs has no device to bypass the page cache for: cache.direct stays off.
          tmpfs) blockdev="driver=file,node-name=d0,filename=${image[$b/$be]},aio=io_uring" ;;
          disk) blockdev="driver=file,node-name=d0,filename=${image[$b/$be]},aio=io_uring,cache.direct=on" ;;
          loop) blockdev="driver=host_device,node-name=d0,filename=${image[$b/$be]},aio=io_uring,cache.direct=on" ;;
        esac
        # shellcheck disable=SC2054  # the commas belong to QEMU's option syntax
        cmd=(qemu-storage-daemon --object iothread,id=io0 --blockdev "$blockdev"
          --export "type=vhost-user-blk,id=e0,node-name=d0,writable=on,iothread=io0,num-queues=$q,addr.type=unix,addr.path=$work/$be.sock") ;;
    esac
    [ -n "${cmdline_of[$b/$be]:-}" ] || cmdline_of[$b/$be]="${cmd[*]}"
    start "$be" "${cmd[@]}"
  done
}

# cpu_ticks PID: user+sys clock ticks of every thread of PID so far (proc(5) fields 14 and 15,
# counted after the parenthesised command name, which may hold spaces).
cpu_ticks() {
  local rest
  rest=$(<"/proc/$1/stat")
  rest=${rest##*) }
  awk '{ print $12 + $13 }' <<<"$rest"
}

# run BACKING BACKEND QUEUES RW DEPTH REP: one vdma-bench run; appends one JSON line to runs.jsonl.
run() {
  local b=$1 be=$2 q=$3 rw=$4 d=$5 rep=$6 out before after pid=${pid_of[$2]}
  before=$(cpu_ticks "$pid")
  if ! out=$("$bench" --socket-path "$work/$be.sock" --mode bypass --rw "$rw" --bs 4096 --iodepth "$d" \
      --queues "$q" --runtime "$runtime" --no-verify --progress never --json 2>"$work/bench.err") ||
     ! jq -e '.results[0].ok' <<<"$out" >/dev/null; then
    echo "compare-backends: vdma-bench against $be on $b ($rw, iodepth $d, $q queue(s)) failed:" >&2
    cat "$work/bench.err" >&2
    jq -r '.results[0].error.what // empty' <<<"$out" >&2 2>/dev/null || true
    echo "--- $be log:" >&2
    tail -20 "$work/$be.log" >&2
    exit 1
  fi
  after=$(cpu_ticks "$pid")
  jq -c --arg b "$b" --arg be "$be" --argjson q "$q" --arg rw "$rw" --argjson d "$d" --argjson rep "$rep" \
    --argjson cpu "$(( after - before ))" --argjson tck "$clk_tck" \
    '.results[0].runs[0] | {backing: $b, backend: $be, queues: $q, rw: $rw, iodepth: $d, rep: $rep,
       iops, ios, p50_us: (.latency_ns.p50 / 1000), p99_us: (.latency_ns.p99 / 1000),
       cpu_s: ($cpu / $tck)}' <<<"$out" >>"$work/runs.jsonl"
}

: >"$work/runs.jsonl"
# The load around the runs: other work on the machine moves the figures (the spread shows how much).
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for b in "${available[@]}"; do
  for q in "${queue_counts[@]}"; do
    start_backends "$b" "$q"
    for rw in randread randwrite; do
      for d in 1 32; do
        for rep in $(seq "$repeat"); do
          for be in $(backends_for "$b"); do run "$b" "$be" "$q" "$rw" "$d" "$rep"; done
        done
      done
    done
    stop_backends
  done
done

# --- report ---------------------------------------------------------------------------------
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
cmdlines=$(for k in "${!cmdline_of[@]}"; do jq -nc --arg k "$k" --arg v "${cmdline_of[$k]}" '{($k): $v}'; done | jq -sc 'add // {}')
report=$(jq -s --argjson runtime "$runtime" --argjson repeat "$repeat" --argjson size_mib "$size_mib" \
    --argjson poll "$poll_us" --arg load_before "$load_before" --arg load_after "$load_after" \
    --argjson cpus "$(nproc)" --argjson cmdlines "$cmdlines" --argjson skipped "$(printf '%s\n' "${skipped[@]}" | jq -sc '.')" '
  def stats: sort as $s | ($s | length) as $n
    | {median: (if $n % 2 == 1 then $s[($n - 1) / 2] else ($s[$n / 2 - 1] + $s[$n / 2]) / 2 end),
       min: $s[0], max: $s[-1]};
  def summary: {iops: (map(.iops) | stats), p50_us: (map(.p50_us) | stats), p99_us: (map(.p99_us) | stats),
                cpu_s_per_mreq: (map(.cpu_s / ([.ios, 1] | max) * 1e6) | stats),
                runs: map({iops, ios, p50_us, p99_us, cpu_s})};
  {workload: {bs: 4096, mode: "bypass", runtime_s: $runtime, repeat: $repeat, size_mib: $size_mib,
              order: "per case the back-ends in turn, repeated (A B A B ...)"},
   machine: {cpus: $cpus, loadavg_before: $load_before, loadavg_after: $load_after},
   backends: {"vdma-blk": "defaults (no polling)",
              qsd: "qemu-storage-daemon, iothread, aio=io_uring, cache.direct=on on disk and loop",
              "vdma-blk-poll": (if $poll > 0 then "vdma-blk --poll \($poll)" else null end)},
   command_lines: $cmdlines,
   skipped: $skipped,
   results: (group_by([.backing, .queues, .rw, .iodepth])
     | map(. as $runs | $runs[0] | {backing, queues, rw, iodepth,
         backends: ($runs | group_by(.backend) | map({key: .[0].backend, value: summary}) | from_entries)}
       | .ratio = (.backends["vdma-blk"].iops.median / .backends.qsd.iops.median)
       | if .backends["vdma-blk-poll"] then .ratio_poll = (.backends["vdma-blk-poll"].iops.median / .backends.qsd.iops.median) else . end)
     | sort_by(.backing as $b | (["null", "tmpfs", "disk", "loop"] | index($b)), .queues, .rw, .iodepth))}' "$work/runs.jsonl")

if [ "$json" = 1 ]; then
  echo "$report"
  exit 0
fi
echo "vdma-blk vs qemu-storage-daemon (qsd), driven by vdma-bench in bypass mode: 4 KiB, ${runtime} s per run,"
echo "${repeat} interleaved run(s) per back-end and case; IOPS median and [min-max], medians of p50/p99 latency"
echo "and of CPU seconds (user+sys) per million requests; ratio = vdma-blk IOPS median / qsd IOPS median."
echo "qsd: iothread, aio=io_uring, cache.direct=on on disk and loop. vdma-blk: defaults$( [ "$poll_us" -gt 0 ] && echo "; 'vdma-blk poll' is --poll $poll_us")."
echo "$(nproc) CPUs; load average $load_before before the runs, $load_after after."
row='%-7s %2s %-9s %3s  %-13s %9s %-21s %8s %8s %8s %6s\n'
# shellcheck disable=SC2059  # the one row format, shared by the header and the rows
printf "\n$row" backing q rw QD back-end IOPS "[min-max]" "p50 us" "p99 us" "CPU s/M" ratio
jq -r '.results[] | . as $c | ["vdma-blk", "qsd", "vdma-blk-poll"][] as $be | $c.backends[$be] // empty
  | [$c.backing, $c.queues, $c.rw, $c.iodepth,
     ({"vdma-blk": "vdma-blk", qsd: "qsd", "vdma-blk-poll": "vdma-blk poll"}[$be]),
     (.iops.median | round), "[\(.iops.min | round)-\(.iops.max | round)]",
     .p50_us.median, .p99_us.median, .cpu_s_per_mreq.median,
     ({"vdma-blk": $c.ratio, "vdma-blk-poll": $c.ratio_poll}[$be] // "")]
  | @tsv' <<<"$report" |
  while IFS=$'\t' read -r b q rw d be iops range p50 p99 cpu ratio; do
    printf -v p50 '%.1f' "$p50"
    printf -v p99 '%.1f' "$p99"
    printf -v cpu '%.2f' "$cpu"
    [ -z "$ratio" ] || printf -v ratio '%.2f' "$ratio"
    # shellcheck disable=SC2059
    printf "$row" "$b" "$q" "$rw" "$d" "$be" "$iops" "$range" "$p50" "$p99" "$cpu" "$ratio"
  done
jq -r '.skipped[] | "skipped \(.backing): \(.reason)"' <<<"$report"
