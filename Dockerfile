# One image for both roles: `guildshard gateway` (StatefulSet) and `guildshard http` (Deployment).
#   docker build -t guildshard .
#
# Stage 1 builds a release binary (SQLite is bundled by rusqlite, TLS is rustls, so the binary
# needs only glibc and libgcc at run time). Dependencies are built in their own layer first, so
# a change to src/ does not rebuild them.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
RUN mkdir src tests && echo 'fn main() {}' > src/main.rs && touch src/lib.rs tests/main.rs \
    && cargo build --release --locked --bin guildshard \
    && rm -rf src tests
COPY . .
# Make cargo see the real sources as newer than the placeholder build above.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin guildshard

# Stage 2: the Litestream binary (static Go), for the replica fallback during resharding: a
# gateway pod restores a departed ordinal's replica into a temporary file and imports from it.
FROM litestream/litestream:0.5.17 AS litestream

# Stage 3: distroless with glibc, no shell, no package manager; runs as uid 65532 (nonroot),
# which matches the pods' securityContext and works with a read-only root filesystem.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/guildshard /usr/local/bin/guildshard
COPY --from=litestream /usr/local/bin/litestream /usr/local/bin/litestream
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/guildshard"]
CMD ["gateway"]
