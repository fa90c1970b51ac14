# syntax=docker/dockerfile:1
#
# The fleetpulse image: the one `fleetpulse` binary, whose subcommand (given as the container's
# command) picks the service: `pipeline`, `sink clickhouse`, `bridge`, `registry`, `generate`.
# docker-compose.yml runs it; tests/compose.rs checks what this file builds and ships.

# The toolchain the project is tested with (rust-version in Cargo.toml is the floor).
FROM rust:1.95-bookworm AS build

# rdkafka-sys compiles librdkafka from source with its own ./configure and make (no cmake
# feature), in C and C++, against the system zlib (rdkafka's `libz` feature); python3 lets
# librdkafka generate its linker script. native-tls, under the schema registry client, links the
# system OpenSSL through pkg-config.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential \
      libssl-dev \
      pkg-config \
      python3 \
      zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# The whole workspace: cargo resolves every member, and the lock file pins what is built.
COPY . .

# The registry and the target directory are cache mounts, kept between builds but absent from
# the image, so the binary is copied out of target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p fleetpulse \
 && install -D -m 0755 target/release/fleetpulse /out/fleetpulse

# Same Debian release as the builder, so the glibc and OpenSSL the binary was linked against are
# the ones it finds.
FROM debian:bookworm-slim AS runtime

# ca-certificates for https registries and brokers, libssl3 for native-tls, zlib for librdkafka,
# curl for the health checks docker-compose.yml runs against /healthz.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates \
      curl \
      libssl3 \
      zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 fleetpulse \
 && useradd --system --uid 10001 --gid fleetpulse --home-dir /var/lib/fleetpulse \
      --shell /usr/sbin/nologin fleetpulse \
 && install -d -o fleetpulse -g fleetpulse \
      /var/lib/fleetpulse /var/lib/fleetpulse/checkpoints /var/lib/fleetpulse/registry

# The schemas (Avro and ClickHouse DDL) and the dashboard are compiled into the binary: nothing
# else from the repository is needed at run time.
COPY --from=build /out/fleetpulse /usr/local/bin/fleetpulse

# A shared library missing from this stage fails the build here rather than at `compose up`.
RUN ["fleetpulse", "--version"]

# Named volumes mounted on /var/lib/fleetpulse/* start out owned by this user (Docker copies
# the directory's ownership into an empty volume).
USER fleetpulse
WORKDIR /var/lib/fleetpulse
ENTRYPOINT ["fleetpulse"]
CMD ["--help"]
