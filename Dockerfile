# One image with every imagejobs binary; docker-compose.yml and the Helm chart
# (deploy/helm/imagejobs) pick the one to run by its command. `make k8s-check` checks that
# every binary the chart's containers name is copied here.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p imagejobs -p imagejobs-consumer -p imagejobs-stubs \
 && mkdir -p /out/bin /out/state/snapshots \
 && cp target/release/imagejobs target/release/imagejobs-ingress \
       target/release/imagejobs-consumer target/release/imagejobs-stubs /out/bin/

# Run time: glibc, CA certificates and the binaries; no shell, no package manager. The
# processes need nothing else: probes are HTTP (/healthz, /readyz), TLS is rustls.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/bin/ /usr/local/bin/
COPY examples/ /examples/
# The ingress's index snapshots (INDEX_SNAPSHOT_DIR); a volume keeps them across restarts.
COPY --from=build --chown=65532:65532 /out/state/ /var/lib/imagejobs/
# distroless's `nonroot` user (65532); the chart runs as it too.
USER 65532:65532
