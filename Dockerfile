# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run in a slim Debian with only the binary,
# its config and the example strategies.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY migrations ./migrations
COPY config ./config
COPY benches ./benches
RUN cargo build --release --locked --bin ktrdr-ops

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
ENTRYPOINT ["ktrdr-ops"]
CMD ["serve"]
