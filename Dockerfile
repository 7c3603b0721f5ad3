# Multi-stage build: the dependencies compiled in a layer of their own (a change under src/ does
# not compile polars again), then the service; the runtime is a slim Debian with the binary, its
# config and the example strategies, run as a non-root user, health-checked by the binary itself.
# Without a registry, tests/compose/base-images.sh makes the two base images locally. No
# `# syntax=` line: nothing here needs a newer frontend than the engine's own, and BuildKit would
# have to pull one from a registry.

# The sources of the service, gathered in a small stage of their own so that they enter the build
# stage as one layer: every layer over the compiled dependencies costs seconds (the storage driver
# walks their whole tree), and a rebuild after a change under src/ adds just two of them.
FROM debian:bookworm-slim AS sources
COPY src /src/src
COPY config /src/config

FROM rust:1.95-bookworm AS build
WORKDIR /src
# 1. Dependencies only: the manifest, the lock file and empty targets of the same names (the
#    placeholder benches stay: cargo wants every target the manifest names to exist).
COPY Cargo.toml Cargo.lock build.rs ./
COPY migrations ./migrations
RUN mkdir -p src benches/common \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && for bench in $(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | tail -n +2); do \
         echo 'fn main() {}' > "benches/$bench.rs"; \
       done \
    && cargo build --release --locked --bin ktrdr-ops \
    && rm -rf src
# 2. The service, built, stripped (symbols are a quarter of the binary and no use to a running
#    service) and set apart in the same layer. The placeholder's build products are older than
#    the real sources: touch them so that cargo rebuilds.
COPY --from=sources /src ./
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin ktrdr-ops \
    && strip -o /ktrdr-ops target/release/ktrdr-ops

# The runtime: everything that does not depend on the binary first, so a rebuild only replaces
# the binary's layer at the end.
FROM debian:bookworm-slim
RUN useradd --system --create-home --home-dir /app ktrdr \
    && mkdir -p /app/var/models /app/data \
    && chown -R ktrdr /app
COPY config /app/config
COPY strategies /app/strategies
WORKDIR /app
USER ktrdr
# In a container the service listens on every interface.
ENV KTRDR_OPS__SERVER__LISTEN=0.0.0.0:8000 \
    KTRDR_OPS__LOG__FORMAT=json
EXPOSE 8000
VOLUME ["/app/var", "/app/data"]
# `ktrdr-ops health` asks the service on 127.0.0.1:8000: exit 0 while it and its database are well.
HEALTHCHECK --interval=2s --timeout=3s --start-period=30s --retries=3 CMD ["ktrdr-ops", "health"]
ENTRYPOINT ["ktrdr-ops"]
CMD ["serve"]
COPY --from=build /ktrdr-ops /usr/local/bin/ktrdr-ops
