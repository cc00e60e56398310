# Baton in a small image: one static binary (musl) on Alpine.
#
#   docker build -t baton .
#   docker run --rm -v "$PWD:/plan" -p 8080:8080 -e BATON_AUTH_SECRET_ENV=BATON_JWT_SECRET \
#       -e BATON_JWT_SECRET="$(openssl rand -hex 32)" baton serve --listen 0.0.0.0:8080
#
# The plan directory (baton.toml and its agents) is mounted at /plan. `deploy/docker-compose.yml`
# runs two nodes on PostgreSQL with Prometheus and Grafana.

FROM rust:1-alpine AS build
# C toolchain for the bundled SQLite and the TLS crates.
RUN apk add --no-cache build-base cmake perl
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p baton-cli \
    && strip target/release/baton \
    && install -D target/release/baton /out/baton

FROM alpine:3
# tini reaps the agents' processes and forwards SIGTERM, so `docker stop` gives running
# tasks their grace period.
RUN apk add --no-cache tini ca-certificates \
    && adduser -D -h /plan baton
COPY --from=build /out/baton /usr/local/bin/baton
USER baton
WORKDIR /plan
EXPOSE 8080
ENTRYPOINT ["/sbin/tini", "--", "baton"]
CMD ["serve", "--listen", "0.0.0.0:8080"]
