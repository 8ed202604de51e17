# syntax=docker/dockerfile:1
# The Switchboard node image: built in a Rust image, run from a small Debian
# image as an unprivileged user with nothing but the binary and its default
# configuration. Used by docker-compose.yml and the k8s/ manifests.
#
#   docker build -t switchboard:dev .
#
# The runtime image needs no shell tools: probes are HTTP (/healthz, /readyz)
# and the configuration comes from a file (--config) and SWITCHBOARD_* env.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and the build directory between
# builds (BuildKit), so a source change recompiles only the broker.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p switchboard --bin switchboard \
    && install -D -m 0755 -s target/release/switchboard /out/switchboard

FROM debian:bookworm-slim AS runtime
# ca-certificates: rediss:// and HTTPS JWKS need the system roots.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin switchboard
WORKDIR /app
COPY --from=build /out/switchboard /usr/local/bin/switchboard
COPY config/default.toml /app/config/default.toml
USER 10001:10001
# 8080: HTTP and WebSocket. 3478/udp: the STUN responder.
EXPOSE 8080 3478/udp
ENV SWITCHBOARD_SERVER__LISTEN=0.0.0.0:8080 \
    SWITCHBOARD_LOG__FORMAT=json
ENTRYPOINT ["/usr/local/bin/switchboard"]
