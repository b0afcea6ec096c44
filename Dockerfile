# Palaver in a small image: the static-ish binary on Debian slim, a default
# config driven by environment variables, data in /var/lib/palaver.
#
#   docker build -t palaver .
#   docker run -d -p 5222:5222 -p 5223:5223 -p 5280:5280 \
#       -e XMPP_DOMAIN=chat.example.org -v palaver-data:/var/lib/palaver palaver
#
# Environment (defaults in deploy/docker/entrypoint.sh): XMPP_DOMAIN,
# PALAVER_ADMIN (JID in the admin ACL), PALAVER_LOGLEVEL, PALAVER_DB_URL
# (postgres://… to use PostgreSQL instead of SQLite), PALAVER_CONFIG (a
# config file of your own instead of the default one).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin palaver \
    && strip target/release/palaver

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/palaver --shell /usr/sbin/nologin palaver \
    && mkdir -p /var/lib/palaver /etc/palaver \
    && chown palaver:palaver /var/lib/palaver
COPY --from=build /src/target/release/palaver /usr/local/bin/palaver
COPY deploy/docker/palaver.yml deploy/docker/palaver-pgsql.yml /etc/palaver/
COPY deploy/docker/entrypoint.sh /usr/local/bin/palaver-entrypoint
USER palaver
VOLUME /var/lib/palaver
EXPOSE 5222 5223 5280
HEALTHCHECK --interval=30s --timeout=5s CMD ["palaver", "ctl", "status"]
ENTRYPOINT ["/usr/local/bin/palaver-entrypoint"]
CMD ["serve"]
