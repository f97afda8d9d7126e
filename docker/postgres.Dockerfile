# PostgreSQL 15 from Debian bookworm's own packages, for machines that cannot
# pull postgres:15-bookworm (tests/container/run.sh builds it on its
# debootstrap base). From the repository root:
#
#   podman build -f docker/postgres.Dockerfile -t localhost/jobpool-postgres:15 docker
#
# It takes the subset of the official image's interface that
# docker/compose.yaml uses, so JOBPOOL_PG_IMAGE=localhost/jobpool-postgres:15
# can stand in for it there:
#   POSTGRES_PASSWORD  required on the first start (the data directory is
#                      empty): the password of POSTGRES_USER
#   POSTGRES_USER      the superuser to create [postgres]
#   POSTGRES_DB        a database to create [POSTGRES_USER]
#   arguments          passed on to postgres, e.g. -p 5433 -c fsync=off
# The server runs as the postgres user (no root step, so the data directory
# must be writable by it: a new named volume is, as the image's directory is
# copied into it). It listens on every address unless told otherwise
# (-c listen_addresses=127.0.0.1); TCP connections need the password
# (scram-sha-256), connections on its Unix socket inside the container are
# trusted.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
# No cluster 15/main at install time: the data directory is made at the
# first start, in the volume.
RUN mkdir -p /etc/postgresql-common/createcluster.d \
 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/jobpool.conf \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && mkdir -p /var/lib/postgresql/data /run/postgresql \
 && chown postgres:postgres /var/lib/postgresql/data /run/postgresql \
 && chmod 0700 /var/lib/postgresql/data \
 && printf '%s\n' \
      '#!/bin/bash' \
      '# jobpool-postgres-entry [POSTGRES ARGS...]: make the data directory on' \
      '# the first start, then become postgres.' \
      'set -euo pipefail' \
      'user=${POSTGRES_USER:-postgres}' \
      'db=${POSTGRES_DB:-$user}' \
      'if [ ! -s "$PGDATA/PG_VERSION" ]; then' \
      '  if [ -z "${POSTGRES_PASSWORD:-}" ]; then' \
      '    echo "postgres: the data directory is empty and POSTGRES_PASSWORD is not set" >&2' \
      '    exit 1' \
      '  fi' \
      '  initdb -D "$PGDATA" -U "$user" -E UTF8 --locale=C.UTF-8 \' \
      '    --auth-local=trust --auth-host=scram-sha-256 \' \
      '    --pwfile=<(printf "%s\n" "$POSTGRES_PASSWORD") >/dev/null' \
      '  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"' \
      '  if [ "$db" != postgres ]; then' \
      '    echo "CREATE DATABASE \"$db\" OWNER \"$user\"" |' \
      '      postgres --single -D "$PGDATA" postgres >/dev/null' \
      '  fi' \
      'fi' \
      'exec postgres -D "$PGDATA" -c "listen_addresses=*" "$@"' \
      > /usr/local/bin/jobpool-postgres-entry \
 && chmod 0755 /usr/local/bin/jobpool-postgres-entry
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
USER postgres
VOLUME /var/lib/postgresql/data
EXPOSE 5432
# SIGINT is PostgreSQL's fast shutdown: sessions are ended, data is flushed.
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/jobpool-postgres-entry"]
