# One image for both roles: `guildshard gateway` (StatefulSet) and `guildshard http` (Deployment).
#   docker build -t guildshard .
#
# Stage 1 builds a release binary (SQLite is bundled by rusqlite, TLS is rustls, so the binary
# needs only glibc and libgcc at run time). Dependencies are built in their own layer first, so
# a change to src/ does not rebuild them.
#
# Only what the binary is built from is copied into the build stage (never `COPY . .`): a
# change to the tests, the manifests or the docs then neither rebuilds the binary nor busts
# the layer cache, and nothing else in the context (a local target/, .git, tool caches) can
# end up in a layer. .dockerignore keeps those out of the build context as well.
#
# Base images are referenced by tag. To pin them, resolve each tag to its digest and write it
# as `image:tag@sha256:<digest>` (a registry is needed for this):
#   docker buildx imagetools inspect rust:1.95-bookworm     # the "Digest:" line
#   crane digest gcr.io/distroless/cc-debian12:nonroot      # or with crane
# and the same for litestream/litestream:0.5.17.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# tests/ is not copied: `--bin` builds only the binary and its library, and cargo does not
# look for the test target's file then.
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked --bin guildshard \
    && rm -rf src
COPY src ./src
COPY migrations ./migrations
# The binary embeds litestream.yml and entrypoint.sh (the local cluster runs the pods' exact
# files), so they are part of its sources.
COPY litestream ./litestream
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
