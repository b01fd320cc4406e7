#!/usr/bin/env bash
# The distribution's budget (issue 18), measured:
#   - the static binary's size (budget 25 MB) and the release build's wall time;
#   - the CI image's compressed size (budget 12 MB), pushed to the test registry;
#   - `pf-buildkit --version` in the image's root file system (budget 10 ms, mean of 50 runs).
#
#   scripts/bench-release.sh [--from-scratch]
#
# --from-scratch builds in an empty target directory, so the wall time is a cold build's (as
# on a fresh CI machine); without it the build reuses target/ and times only what changed.
# PF_BENCH_BINARY=FILE measures that binary instead of building one (no build time then).
# Needs the test environment (scripts/testenv start): its registry and BuildKit, and root
# (the --version runs are chrooted into the image's files).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { printf 'bench-release: error: %s\n' "$*" >&2; exit 1; }
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1000000 }'; }

from_scratch=
[[ ${1:-} == --from-scratch ]] && from_scratch=1
testenv=$(scripts/testenv env) || die "start the test environment first: scripts/testenv start"
eval "$testenv"
[[ $(id -u) == 0 ]] || die "must run as root (chroot)"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# --- the binary ---------------------------------------------------------------------------------
start=$(date +%s.%N)
if [[ -n ${PF_BENCH_BINARY:-} ]]; then
    binary=$PF_BENCH_BINARY
elif [[ -n $from_scratch ]]; then
    binary=$(CARGO_TARGET_DIR=$scratch/target scripts/release)
else
    binary=$(scripts/release)
fi
build_s=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
[[ -z ${PF_BENCH_BINARY:-} ]] || build_s="(not built: PF_BENCH_BINARY) 0"
size=$(stat -c %s "$binary")

# --- the image ----------------------------------------------------------------------------------
BUILDKIT_HOST=${PF_TEST_BUILDKIT_ADDR:-docker+unix://${PF_TEST_DOCKER_HOST#unix://}}
ref=$PF_TEST_REGISTRY/pf-bench/pf-buildkit:bench
digest=$(BUILDKIT_HOST=$BUILDKIT_HOST PF_IMAGE_BINARY=$binary \
    PF_IMAGE_SOURCE=${PF_IMAGE_SOURCE:-https://example.invalid/pf-buildkit} \
    scripts/image --insecure-registry "$ref" 2>"$scratch/image.log") ||
    { cat "$scratch/image.log" >&2; die "scripts/image failed"; }
manifest=$(curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://$PF_TEST_REGISTRY/v2/pf-bench/pf-buildkit/manifests/$digest")
# Compressed size: the manifest, its config and its layers, as a registry stores and sends them.
image_size=$(python3 -c '
import json, sys
m = json.loads(sys.argv[1])
print(len(sys.argv[1].encode()) + m["config"]["size"] + sum(l["size"] for l in m["layers"]))' "$manifest")

# --- --version in the image's files -------------------------------------------------------------
root=$scratch/root
mkdir -p "$root"
layer=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["layers"][0]["digest"])' "$manifest")
curl -fsS "http://$PF_TEST_REGISTRY/v2/pf-bench/pf-buildkit/blobs/$layer" | tar -xz -C "$root"
runs=50
chroot --userspec=65532:65532 "$root" /usr/local/bin/pf-buildkit --version >/dev/null # warm the page cache
start=$(date +%s%N)
for ((i = 0; i < runs; i++)); do
    chroot --userspec=65532:65532 "$root" /usr/local/bin/pf-buildkit --version >/dev/null
done
version_ms=$(awk -v ns="$(($(date +%s%N) - start))" -v n="$runs" 'BEGIN { printf "%.2f", ns / n / 1000000 }')
# The chroot program's own cost, to subtract: the same loop running /bin/true outside.
start=$(date +%s%N)
for ((i = 0; i < runs; i++)); do chroot / /bin/true; done
base_ms=$(awk -v ns="$(($(date +%s%N) - start))" -v n="$runs" 'BEGIN { printf "%.2f", ns / n / 1000000 }')

printf '%-44s %s\n' \
    "static binary ($binary)" "$(mb "$size") ($size bytes; budget 25 MB)" \
    "release build wall time" "${build_s}s$([[ -n $from_scratch ]] && echo ' (cold)' || echo ' (reusing target/)')" \
    "image, compressed ($ref@${digest:7:12})" "$(mb "$image_size") ($image_size bytes; budget 12 MB)" \
    "--version in the image (mean of $runs)" "$version_ms ms, of which chroot+exec of /bin/true $base_ms ms (budget 10 ms)"
