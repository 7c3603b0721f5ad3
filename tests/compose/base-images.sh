#!/usr/bin/env bash
# Makes sure the base images that the Dockerfile and docker-compose.yml name exist in the local
# Docker engine. Where a registry answers they are pulled; where none does (as on our CI machines)
# stand-ins with the same tags are built from Debian's packages:
#   debian:bookworm-slim  debootstrap (minbase) + docker import
#   rust:1.95-bookworm    the same with a C toolchain, plus this machine's Rust toolchain
#   postgres:15           Debian's PostgreSQL 15 with an entrypoint that honours POSTGRES_USER,
#                         POSTGRES_PASSWORD, POSTGRES_DB and PGDATA as the official image does
#   prom/prometheus:v2.42.0     Debian's Prometheus 2.42 at the official image's paths
#   python:3.11-slim-bookworm   Debian's Python 3.11 (the compose stack's OTLP receiver runs on it)
# Idempotent: images that exist are left alone, and the debootstrapped trees are cached under
# $BASE_IMAGES_CACHE (default /var/cache/ktrdr-ops/base-images). Needs root for debootstrap.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=${BASE_IMAGES_CACHE:-/var/cache/ktrdr-ops/base-images}
rust_version=1.95

have() { docker image inspect "$1" > /dev/null 2>&1; }

# A registry may answer; give it a short try only.
try_pull() { timeout 20 docker pull -q "$1" > /dev/null 2>&1; }

# A Debian bookworm tree in $cache/NAME with the extra packages (comma separated), made once.
rootfs() {
    local name=$1 include=${2:-} dir="$cache/$1"
    if [ ! -f "$dir/.complete" ]; then
        command -v debootstrap > /dev/null || {
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap > /dev/null
        }
        rm -rf "$dir" && mkdir -p "$dir"
        echo "base-images: debootstrap $name (${include:-minbase})" >&2
        debootstrap --variant=minbase ${include:+--include="$include"} bookworm "$dir" "$mirror" > "$cache/$name.log" 2>&1 \
            || { tail -20 "$cache/$name.log" >&2; exit 1; }
        # Package caches and lists have no place in an image (apt-get update brings the lists back).
        rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
        touch "$dir/.complete"
    fi
    echo "$dir"
}

# Imports a folder as an image; the other arguments are docker import's --change options.
import_tree() {
    local dir=$1 tag=$2
    shift 2
    tar --numeric-owner --exclude=./.complete -C "$dir" -c . | docker import "$@" - "$tag" > /dev/null
    echo "base-images: built $tag from Debian's packages" >&2
}

debian_slim() {
    local dir
    dir=$(rootfs slim)
    # What makes the official image slim: no documentation, manuals or translations, now or
    # from packages installed later.
    rm -rf "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* "$dir"/usr/share/locale/*
    cat > "$dir/etc/dpkg/dpkg.cfg.d/docker-slim" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
SLIM
    import_tree "$dir" debian:bookworm-slim --change 'CMD ["bash"]'
}

rust_image() {
    local dir sysroot
    dir=$(rootfs rust "gcc,libc6-dev,make,pkg-config,ca-certificates,git,curl")
    # This machine's toolchain (cargo, rustc, the standard library) at the official image's place.
    sysroot=$(rustc --print sysroot)
    case "$(rustc --version)" in
        "rustc $rust_version."*) ;;
        *) echo "base-images: rustc here is $(rustc --version), not $rust_version" >&2; exit 1 ;;
    esac
    rm -rf "$dir/usr/local/rust" && mkdir -p "$dir/usr/local/rust" "$dir/usr/local/cargo"
    cp -a "$sysroot/bin" "$sysroot/lib" "$dir/usr/local/rust/"
    # Documentation and sources are not needed to build.
    rm -rf "$dir/usr/local/rust/lib/rustlib/src" "$dir/usr/local/rust/lib/rustlib/"*/analysis
    # The certificate authorities this machine trusts beyond Debian's (a proxy in front of
    # crates.io, say), so that cargo inside the build fetches what cargo here can.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" > /dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/"
        chroot "$dir" update-ca-certificates > /dev/null 2>&1
    fi
    import_tree "$dir" "rust:$rust_version-bookworm" \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]'
}

postgres_image() {
    local dir
    dir=$(rootfs postgres "postgresql-15,locales")
    install -m 0755 "$here/postgres-entrypoint.sh" "$dir/usr/local/bin/docker-entrypoint.sh"
    import_tree "$dir" postgres:15 \
        --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV PGDATA=/var/lib/postgresql/data' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'VOLUME /var/lib/postgresql/data' \
        --change 'EXPOSE 5432' \
        --change 'ENTRYPOINT ["docker-entrypoint.sh"]' \
        --change 'CMD ["postgres"]'
}

prometheus_image() {
    local dir
    dir=$(rootfs prometheus "prometheus")
    # The official image's layout: the binary at /bin/prometheus (bookworm's /bin is /usr/bin),
    # its configuration under /etc/prometheus, the database in /prometheus.
    mkdir -p "$dir/prometheus"
    import_tree "$dir" prom/prometheus:v2.42.0 \
        --change 'WORKDIR /prometheus' \
        --change 'VOLUME /prometheus' \
        --change 'EXPOSE 9090' \
        --change 'ENTRYPOINT ["/bin/prometheus"]' \
        --change 'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]'
}

python_image() {
    local dir
    dir=$(rootfs python "python3.11")
    ln -sf python3.11 "$dir/usr/bin/python3"
    import_tree "$dir" python:3.11-slim-bookworm \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]'
}

mkdir -p "$cache"
for image in debian:bookworm-slim "rust:$rust_version-bookworm" postgres:15 prom/prometheus:v2.42.0 \
    python:3.11-slim-bookworm; do
    if have "$image"; then
        continue
    fi
    if try_pull "$image"; then
        echo "base-images: pulled $image" >&2
        continue
    fi
    case "$image" in
        debian:*) debian_slim ;;
        rust:*) rust_image ;;
        postgres:*) postgres_image ;;
        prom/prometheus:*) prometheus_image ;;
        python:*) python_image ;;
    esac
done
