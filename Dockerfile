# Multi-stage build: compile in the Rust image, run in a small Debian image. The runtime image
# holds meshlens and the load generators docker-compose.yml's demo traffic runs.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p meshlens -p meshlens-loadgen \
 && strip target/release/meshlens target/release/meshlens-loadgen target/release/meshlens-checkgen

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/meshlens /src/target/release/meshlens-loadgen \
     /src/target/release/meshlens-checkgen /usr/local/bin/
COPY examples/policy /etc/meshlens/policy
WORKDIR /var/lib/meshlens
EXPOSE 4317 4318 9411 9091 20001
ENTRYPOINT ["meshlens"]
CMD ["serve"]
