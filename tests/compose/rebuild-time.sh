#!/usr/bin/env bash
# Times "a rebuild after a one-line change in src/": the working tree (what git tracks or would
# track) copied to a scratch folder, a new line at the end of src/dummy.rs (a different one each
# run, so no build cache can answer for it), then a build of every service in docker-compose.yml.
# Run it after one build of the current tree (the compose suite's will do), so that the
# dependency layer is cached as it is on a developer's machine. The probe's images are removed.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
project=ktrdrops-rebuild-probe
if docker compose version > /dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi

scratch=$(mktemp -d)
cleanup() {
    docker images --format '{{.Repository}}' | grep "^${project}[-_]" | xargs -r docker rmi > /dev/null 2>&1 || true
    rm -rf "$scratch"
}
trap cleanup EXIT
git -C "$root" ls-files -co --exclude-standard | tar -C "$root" -cf - -T - | tar -C "$scratch" -xf -
echo "// rebuild probe $(date +%s%N)" >> "$scratch/src/dummy.rs"

start=$(date +%s.%N)
if ! (cd "$scratch" && "${compose[@]}" -p "$project" build) > "$scratch/build.log" 2>&1; then
    tail -40 "$scratch/build.log"
    exit 1
fi
end=$(date +%s.%N)
compiled=$(grep -a -o 'Finished `release` profile.* in .*' "$scratch/build.log" | sed 's/.* in //' | head -1 || true)
printf 'rebuild after a one-line change in src/: %.1f s (cargo: %s)\n' "$(echo "$end - $start" | bc)" "${compiled:-nothing compiled}"
