# One image with every imagejobs binary; docker-compose.yml picks the one to run.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p imagejobs -p imagejobs-consumer -p imagejobs-stubs \
 && mkdir /out \
 && cp target/release/imagejobs target/release/imagejobs-ingress \
       target/release/imagejobs-consumer target/release/imagejobs-stubs /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
COPY examples/ /examples/
# The ingress's index snapshots (INDEX_SNAPSHOT_DIR); a volume keeps them across restarts.
RUN mkdir -p /var/lib/imagejobs/snapshots && chown nobody /var/lib/imagejobs/snapshots
USER nobody
