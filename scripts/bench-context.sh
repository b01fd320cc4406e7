#!/usr/bin/env bash
# Benchmarks context transfer and exports: pf-buildkit against `docker buildx build` on the same
# Docker Engine, and pf-buildkit on the standalone BuildKit daemon (the production daemon,
# reached through `Control.Session`), same Dockerfile (FROM scratch + COPY . /).
#
# Contexts, generated from fixed seeds: `ctx` has 20,000 files of 1-8 KiB and 4 files of
# 64 MiB; `ctx200k` has 200,000 files of a few bytes; `ctx100k` has 100,000 such files; `ctx1m` has
# 1,000,000 files of 50-400 bytes, 1,000 to a directory.
# Cases:
#   cold, warm, edit10   ctx, exported as a tar: a new session shared key (everything is
#                        sent), unchanged (nothing is sent), 10 files edited before each run
#   cold200k, warm200k   ctx200k, exported as a tar
#   export100k           ctx100k (warm), exported with `type=local` into an empty directory:
#                        100,000 files written by the client
#   cold1m, warm1m       ctx1m, exported as a tar (minutes each: $PF_BENCH_RUNS_1M runs)
#   export1m             ctx1m (warm), exported with `type=local`: 1,000,000 files written
#   syscalls             ctx warm (the `warm` case) once under `strace -f -c`: system calls per
#                        file of the context (statx, openat, close, llistxattr, read, write...)
# A case's last state primes the later warm and export cases of the same context and tool,
# so that `cold1m warm1m export1m` sends the million files once, not three times.
# Reports, as medians of $RUNS runs, the wall time, the client's peak RSS, the client's CPU
# time (user+sys), and how long the context transfer took as the daemon reports it: the
# `[internal] load build context` step's started-to-completed time from the plain progress
# (`#N DONE 1.2s`: both tools print the daemon's timestamps there; buildx 0.13 has no rawjson
# progress).
#
# Tools: `pf` (pf-buildkit on the Engine), `pf-sa` (pf-buildkit on the standalone daemon at
# PF_TEST_BUILDKIT_ADDR; skipped when unset), `buildx` (docker buildx on the Engine).
#
# Usage: eval "$(scripts/testenv start)"; scripts/bench-context.sh
# Environment: PF_TEST_DOCKER_HOST (required), PF_TEST_BUILDKIT_ADDR (the standalone daemon),
# PF_BENCH_DIR (default /tmp/pf-bench), PF_BENCH_RUNS (default 5), PF_BENCH_RUNS_1M (runs of
# the million-file cases, default 1), PF_BENCH_CASES (default "cold warm edit10 cold200k
# warm200k export100k"; the million-file and syscalls cases only when named), PF_BENCH_TOOLS (default "pf pf-sa buildx"),
# PF_BENCH_DOCKER (a docker CLI with buildx; default the test environment's wrapper
# $PF_TESTENV_DIR/bin/docker, see `scripts/testenv install-buildx`), PF_BENCH_NO_BUILD (set: use
# the release binary as it is, without `cargo build --release`), PF_BENCH_BIN (a pf-buildkit
# binary to measure instead of the release build, e.g. a debug build on a machine without the
# disk or time for a release build; implies PF_BENCH_NO_BUILD).
set -euo pipefail

cd "$(dirname "$0")/.."
: "${PF_TEST_DOCKER_HOST:?run eval \"\$(scripts/testenv start)\" first}"
SOCK=${PF_TEST_DOCKER_HOST#unix://}
ADDR=docker+unix://$SOCK
WORK=${PF_BENCH_DIR:-/tmp/pf-bench}
SA_ADDR=${PF_TEST_BUILDKIT_ADDR:-}
RUNS=${PF_BENCH_RUNS:-5}
RUNS_1M=${PF_BENCH_RUNS_1M:-1}
CASES=${PF_BENCH_CASES:-cold warm edit10 cold200k warm200k export100k}
TOOLS=${PF_BENCH_TOOLS:-pf pf-sa buildx}
DOCKER=${PF_BENCH_DOCKER:-${PF_TESTENV_DIR:-/tmp/pf-buildkit-testenv}/bin/docker}
BIN=${PF_BENCH_BIN:-$PWD/target/release/pf-buildkit}

log() { printf 'bench: %s\n' "$*" >&2; }

[[ -n ${PF_BENCH_NO_BUILD:-}${PF_BENCH_BIN:-} ]] || cargo build --release --quiet
mkdir -p "$WORK"
CTX=$WORK/ctx
# The 20,000-file context only when a case uses it (it takes a while to generate).
if [[ " $CASES " == *" cold "* || " $CASES " == *" warm "* || " $CASES " == *" edit10 "* ||
    " $CASES " == *" syscalls "* ]] &&
    [[ ! -f $WORK/ctx.done ]]; then
    log "generating the context in $CTX"
    rm -rf "$CTX"
    python3 - "$CTX" <<'EOF'
import os, random, sys
root = sys.argv[1]
rng = random.Random(20251128)
for i in range(20000):
    d = os.path.join(root, "d%02d" % (i % 100), "s%d" % (i % 7))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%05d.txt" % i), "wb") as f:
        f.write(rng.randbytes(rng.randint(1024, 8192)))
for i in range(4):
    with open(os.path.join(root, "big%d.bin" % i), "wb") as f:
        for _ in range(64):
            f.write(rng.randbytes(1 << 20))
EOF
    touch "$WORK/ctx.done"
fi
# Small-file contexts: $2 files of a few bytes in 200 directories; with $3 = "random", files
# of 50-400 random bytes from a fixed seed in 1,000 directories.
small_context() { # $1 = directory name, $2 = file count, $3 = "random" (optional)
    if [[ ! -f $WORK/$1.done ]]; then
        log "generating $2 files in $WORK/$1"
        rm -rf "${WORK:?}/$1"
        python3 - "$WORK/$1" "$2" "${3:-}" <<'EOF'
import os, random, sys
root, count, sized = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "random"
rng = random.Random(20261207)
dirs = 1000 if sized else 200
for i in range(count):
    d = os.path.join(root, "d%03d" % (i % dirs))
    if i < dirs:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%06d" % i), "wb") as f:
        f.write(rng.randbytes(rng.randint(50, 400)) if sized else b"%d\n" % i)
EOF
        touch "$WORK/$1.done"
    fi
}
if [[ " $CASES " == *" cold200k "* || " $CASES " == *" warm200k "* ]]; then
    small_context ctx200k 200000
fi
if [[ " $CASES " == *" export100k "* ]]; then
    small_context ctx100k 100000
fi
if [[ " $CASES " == *1m\ * || " $CASES " == *1m ]]; then
    small_context ctx1m 1000000 random
fi
mkdir -p "$WORK/df"
printf 'FROM scratch\nCOPY . /\n' >"$WORK/df/Dockerfile"

HAVE_BUILDX=0
if [[ -x $DOCKER ]] && "$DOCKER" buildx version >/dev/null 2>&1; then
    HAVE_BUILDX=1
else
    log "docker buildx is not available ($DOCKER); run scripts/testenv install-buildx to compare"
fi

# One timed run: prints "wall user sys maxrss_kb".
timed() {
    local out
    out=$(mktemp)
    /usr/bin/time -f '%e %U %S %M' -o "$out" "$@" >/dev/null 2>"$WORK/last.log" || {
        cat "$WORK/last.log" >&2
        rm -f "$out"
        return 1
    }
    cat "$out"
    rm -f "$out"
}

# The context and output of a case: sets CASE_CTX and CASE_OUT (pf/buildx --output syntax).
case_setup() { # $1 = case, $2 = tool
    case $1 in
    cold | warm | edit10) CASE_CTX=$CTX CASE_OUT="type=tar,dest=$WORK/out-$2.tar" ;;
    cold200k | warm200k) CASE_CTX=$WORK/ctx200k CASE_OUT="type=tar,dest=$WORK/out-$2.tar" ;;
    cold1m | warm1m) CASE_CTX=$WORK/ctx1m CASE_OUT="type=tar,dest=$WORK/out-$2.tar" ;;
    export100k | export1m)
        CASE_CTX=$WORK/ctx${1#export} CASE_OUT="type=local,dest=$WORK/out-$2.dir"
        rm -rf "$WORK/out-$2.dir"
        ;;
    syscalls) CASE_CTX=$CTX CASE_OUT="type=tar,dest=$WORK/out-$2.tar" ;;
    *)
        log "unknown case $1"
        exit 2
        ;;
    esac
}

run_pf() { # $1 = cache home, $2 = case; $3 = address (default: the Engine)
    case_setup "$2" pf
    # shellcheck disable=SC2086 # STRACE is a command line to split
    XDG_CACHE_HOME=$1 timed ${STRACE:-} "$BIN" --addr "${3:-$ADDR}" build --context "$CASE_CTX" \
        --file "$WORK/df/Dockerfile" --progress plain --output "$CASE_OUT"
}

run_pf-sa() { # the same on the standalone daemon
    run_pf "$1" "$2" "$SA_ADDR"
}

run_buildx() { # $1 = buildx config dir, $2 = case
    case_setup "$2" buildx
    BUILDX_CONFIG=$1 timed "$DOCKER" buildx build --progress plain \
        -f "$WORK/df/Dockerfile" --output "$CASE_OUT" "$CASE_CTX"
}

edit_files() { # edits 10 files with new content of the same size range
    local n=$1
    for k in $(seq 0 9); do
        local i=$(((n * 10 + k) * 1999 % 20000))
        head -c $((1024 + (i * 37) % 7000)) /dev/urandom >"$CTX/d$(printf %02d $((i % 100)))/s$((i % 7))/f$(printf %05d $i).txt"
    done
}

# The daemon-reported duration of the context transfer in the last run's plain progress.
transfer_time() {
    awk '/^#[0-9]+ \[internal\] load build context$/ { id = $1 }
         id != "" && $1 == id && $2 == "DONE" { t = $3; sub(/s$/, "", t) }
         END { print (t == "" ? "-" : t) }' "$WORK/last.log"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# The system calls of the last run (strace -c's table in $WORK/strace.txt), per file of the
# context $1: the calls of the walk and the stat stream, then all calls together.
syscalls_per_file() {
    local files
    files=$(find "$1" -type f | wc -l)
    awk -v files="$files" '
        # Columns: % time, seconds, usecs/call, calls, [errors,] syscall (or "total").
        NF >= 5 && $4 ~ /^[0-9]+$/ { calls[$NF] = $4 }
        END {
            n = split("statx newfstatat openat openat2 close llistxattr lgetxattr getdents64 " \
                "read write writev sendmsg recvfrom epoll_wait futex", names, " ")
            line = sprintf("%d files:", files)
            for (i = 1; i <= n; i++)
                line = line sprintf(" %s %.2f", names[i], calls[names[i]] / files)
            printf "%s; all calls %.2f\n", line, calls["total"] / files
        }' "$WORK/strace.txt"
}

bench() { # $1 = tool (pf|buildx)
    local tool=$1 case state walls rss cpu xfer line runs
    local -A primed=() # context directory -> a state whose shared key has sent it
    for case in $CASES; do
        walls=() rss=() cpu=() xfer=()
        runs=$RUNS
        [[ $case == *1m ]] && runs=$RUNS_1M
        [[ $case == syscalls ]] && runs=1
        case_setup "$case" "$tool"
        for r in $(seq 1 "$runs"); do
            if [[ $case == cold* ]]; then
                state=$(mktemp -d "$WORK/state.XXXX")
            elif [[ $r == 1 && -n ${primed[$CASE_CTX]:-} ]]; then
                state=${primed[$CASE_CTX]}
            elif [[ $r == 1 ]]; then
                # Prime a key for the warm, edit and export cases.
                state=$(mktemp -d "$WORK/state.XXXX")
                "run_$tool" "$state" "$case" >/dev/null
            fi
            [[ $case == edit10 ]] && edit_files "$r"
            if [[ $case == syscalls ]]; then
                [[ $tool == pf* ]] || continue 2
                line=$(STRACE="strace -f -c -o $WORK/strace.txt" "run_$tool" "$state" "$case")
                printf '%-7s %-10s %s\n' "$tool" "$case" "$(syscalls_per_file "$CASE_CTX")"
                primed[$CASE_CTX]=$state
                continue 2
            fi
            line=$("run_$tool" "$state" "$case")
            read -r wall user sys maxrss <<<"$line"
            walls+=("$wall") rss+=("$maxrss") xfer+=("$(transfer_time)")
            cpu+=("$(awk -v u="$user" -v s="$sys" 'BEGIN {print u + s}')")
        done
        primed[$CASE_CTX]=$state
        printf '%-7s %-10s wall %6ss  rss %7s KiB  cpu %6ss  transfer %5ss\n' "$tool" "$case" \
            "$(printf '%s\n' "${walls[@]}" | median)" \
            "$(printf '%s\n' "${rss[@]}" | median)" \
            "$(printf '%s\n' "${cpu[@]}" | median)" \
            "$(printf '%s\n' "${xfer[@]}" | median)"
        if [[ $tool == pf* ]]; then
            grep '^#0 context' "$WORK/last.log" >&2 || true
        fi
    done
}

if [[ -d $CTX ]]; then
    echo "context: $(find "$CTX" -type f | wc -l) files, $(du -sh "$CTX" | cut -f1); runs: $RUNS (medians)"
fi
echo "binary: $BIN; runs: $RUNS (medians)"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
for tool in $TOOLS; do
    if [[ $tool == buildx ]] && ((!HAVE_BUILDX)); then
        continue
    fi
    if [[ $tool == pf-sa && -z $SA_ADDR ]]; then
        log "PF_TEST_BUILDKIT_ADDR is not set: skipping the standalone daemon (pf-sa)"
        continue
    fi
    bench "$tool"
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
rm -rf "$WORK"/state.* "$WORK"/out-*.tar "$WORK"/out-*.dir
