#!/usr/bin/env bash
# Benchmark: multi-platform index assembly and push, `pf-buildkit manifest push` against
# `docker buildx imagetools create` (Debian trixie's docker-buildx, installed by
# `scripts/testenv install-buildx`), on the same per-platform source images in the test
# registry, for 2 and 8 platforms. Cases: sources in the target repository (the push-by-digest fan-in case); in another
# repository whose blobs the target already has (a re-run); and in another repository with a
# fresh target each run (every blob mounted). Prints the median of 5 wall times (hyperfine).
#
# Needs: a running test environment (`scripts/testenv start`), hyperfine, curl, sha256sum.
# Measured 2026-11-28 on the 2-core dev machine (load ~2.5), ms, median of 5,
# pf-buildkit vs buildx 0.13.1:
#   2 platforms: same-repo 13 vs 94; cross-repo re-run 29 vs 117; fresh target 40 vs 119
#   8 platforms: same-repo 35 vs 112; cross-repo re-run 42 vs 180; fresh target 92 vs 211
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/testenv env)"
REG=${PF_TEST_REGISTRY:?run scripts/testenv start first}
RUNS=${RUNS:-5}

command -v hyperfine >/dev/null || { echo "bench: install hyperfine (apt-get install hyperfine)" >&2; exit 1; }
scripts/testenv install-buildx >/dev/null 2>&1 || { echo "bench: scripts/testenv install-buildx failed" >&2; exit 1; }
DOCKER=/tmp/pf-buildkit-testenv/bin/docker
$DOCKER buildx version >/dev/null

cargo build --release --quiet --bin pf-buildkit
PF=$PWD/target/release/pf-buildkit

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export DOCKER_CONFIG=$WORK/docker-config   # no credentials: the test registry is open
mkdir -p "$DOCKER_CONFIG"

RUN_ID=$(date +%s)-$$
SRC=pf-bench/src-$RUN_ID
DST=pf-bench/dst-$RUN_ID

# push_blob REPO FILE -> prints the digest
push_blob() {
    local repo=$1 file=$2 digest location
    digest="sha256:$(sha256sum "$file" | cut -d' ' -f1)"
    location=$(curl -fsS -X POST -D - -o /dev/null "http://$REG/v2/$repo/blobs/uploads/" \
        | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
    case $location in http*) ;; *) location="http://$REG$location" ;; esac
    case $location in *\?*) location="$location&digest=$digest" ;; *) location="$location?digest=$digest" ;; esac
    curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$file" "$location" >/dev/null
    echo "$digest"
}

# push_image REPO TAG OS ARCH VARIANT: one 64 KiB random layer, OCI media types
push_image() {
    local repo=$1 tag=$2 os=$3 arch=$4 variant=$5 layer cfg man ld cd
    layer=$WORK/layer; cfg=$WORK/config; man=$WORK/manifest
    head -c 65536 /dev/urandom >"$layer"
    ld=$(push_blob "$repo" "$layer")
    printf '{"architecture":"%s","os":"%s"%s,"rootfs":{"type":"layers","diff_ids":["%s"]},"config":{}}' \
        "$arch" "$os" "${variant:+,\"variant\":\"$variant\"}" "$ld" >"$cfg"
    cd=$(push_blob "$repo" "$cfg")
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%d}]}' \
        "$cd" "$(stat -c %s "$cfg")" "$ld" "$(stat -c %s "$layer")" >"$man"
    curl -fsS -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
        --data-binary "@$man" "http://$REG/v2/$repo/manifests/$tag" >/dev/null
}

ALL=(linux/amd64 linux/arm64 linux/arm/v7 linux/arm/v6 linux/386 linux/ppc64le linux/s390x linux/riscv64)
# The tag pf-buildkit's template REG/SRC:src-ARCH-VARIANT gives (VARIANT empty when none).
tag_of() { local os arch variant; IFS=/ read -r os arch variant <<<"$1"; echo "src-$arch-${variant:-}"; }

echo "bench: pushing source images to $REG/$SRC" >&2
for p in "${ALL[@]}"; do
    IFS=/ read -r os arch variant <<<"$p"
    push_image "$SRC" "$(tag_of "$p")" "$os" "$arch" "${variant:-}"
done

RESULTS=$WORK/results
: >"$RESULTS"
for n in 2 8; do
    platforms=$(IFS=,; echo "${ALL[*]:0:$n}")
    srcs=()
    for p in "${ALL[@]:0:$n}"; do srcs+=("$REG/$SRC:$(tag_of "$p")"); done
    for where in same-repo cross-repo cross-repo-fresh; do
        prepare=true
        case $where in
            same-repo) repo=$SRC ;;
            cross-repo) repo=$DST-$n ;;
            cross-repo-fresh)
                # A new target repository before every run (hyperfine --prepare).
                repo='$(cat '"$WORK"'/fresh)'
                prepare="echo $DST-fresh-\$(date +%s%N) > $WORK/fresh" ;;
        esac
        echo "$DST-fresh-0" >"$WORK/fresh"
        pf="$PF manifest push --insecure-registry --platforms $platforms --template $REG/$SRC:src-ARCH-VARIANT --target $REG/$repo:pf-$n"
        bx="$DOCKER buildx imagetools create -t $REG/$repo:bx-$n ${srcs[*]}"
        echo "bench: $n platforms, $where" >&2
        # cross-repo: every run after the warm-up finds the blobs already there, as a re-run
        # of a CI job would; cross-repo-fresh mounts every blob every run.
        hyperfine --style basic --warmup 1 --runs "$RUNS" --prepare "$prepare" --export-json "$WORK/h.json" \
            -n "pf-buildkit manifest push ($n, $where)" "$pf" \
            -n "buildx imagetools create ($n, $where)" "$bx" >&2
        python3 - "$WORK/h.json" >>"$RESULTS" <<'EOF'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    print(f"{r['command']:<48} median {r['median']*1000:8.1f} ms  (min {r['min']*1000:.1f}, max {r['max']*1000:.1f})")
EOF
    done
done

echo
echo "Median of $RUNS wall times (index assembly + push, local registry $REG):"
cat "$RESULTS"
