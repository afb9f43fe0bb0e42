# The control service's image for those who build with Docker (`docker build -t
# wipgate-control .`): a static musl binary alone on `scratch`, run as an unprivileged user.
# `make images` builds the same image without a daemon (deploy/images/control-image.sh).
FROM rust:1.95-bookworm AS build
# musl-gcc: ring (rustls' crypto, for rediss://) compiles C and assembly for the target.
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p wipgate-control

FROM scratch
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/wipgate-control /wipgate-control
USER 65532:65532
ENV WIPGATE_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/wipgate-control"]
