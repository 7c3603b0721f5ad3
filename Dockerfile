# syntax=docker/dockerfile:1
# Multi-stage build: the dependencies compiled in a layer of their own (a change under src/ does
# not compile polars again), then the service; the runtime is a slim Debian with the binary, its
# config and the example strategies, run as a non-root user, health-checked by the binary itself.
# Without a registry, tests/compose/base-images.sh makes the two base images locally.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# 1. Dependencies only: the manifest, the lock file and empty targets of the same names.
COPY Cargo.toml Cargo.lock build.rs ./
COPY migrations ./migrations
RUN mkdir -p src benches/common \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && for bench in $(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | tail -n +2); do \
         echo 'fn main() {}' > "benches/$bench.rs"; \
       done \
    && cargo build --release --locked --bin ktrdr-ops \
    && rm -rf src benches
# 2. The service.
COPY src ./src
COPY config ./config
COPY benches ./benches
# The placeholder's build products are older than the real sources; make sure they are rebuilt.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin ktrdr-ops
# Symbols are a quarter of the binary and no use to a running service.
RUN strip target/release/ktrdr-ops

FROM debian:bookworm-slim
RUN useradd --system --create-home --home-dir /app ktrdr \
    && mkdir -p /app/var /app/data \
    && chown -R ktrdr /app
COPY --from=build /src/target/release/ktrdr-ops /usr/local/bin/ktrdr-ops
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
