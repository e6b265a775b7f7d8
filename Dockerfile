# Multi-stage build: compile in the Rust image, run in a small Debian image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p meshlens && strip target/release/meshlens

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/meshlens /usr/local/bin/meshlens
WORKDIR /var/lib/meshlens
EXPOSE 4317 4318 9411 9091 20001
ENTRYPOINT ["meshlens"]
CMD ["serve"]
