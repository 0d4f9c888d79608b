#!/usr/bin/env bash
# The PostgreSQL peer of the load generator (issue 7, workload 2).
#
#   scripts/postgres-peer.sh start DIR PORT   # prints the connection string as its last line
#   scripts/postgres-peer.sh stop DIR
#
# `start` makes a throwaway cluster in DIR/data listening on 127.0.0.1:PORT only, with the
# durability settings PostgreSQL ships with, stated here so that nobody has to guess:
# fsync=on, synchronous_commit=on, full_page_writes=on, wal_sync_method left at the
# platform's default (fdatasync on Linux). When no PostgreSQL server binary is installed it
# installs Debian's `postgresql` package first (apt-get update; apt-get install), which needs
# root. PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` user
# the package creates.
set -euo pipefail

usage() {
  echo "usage: $0 start DIR PORT | stop DIR" >&2
  exit 2
}

pg_bin() {
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [[ -n "$found" && -x "$found/initdb" ]]; then
    echo "$found"
  fi
}

as_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

[[ $# -ge 2 ]] || usage
command=$1
dir=$2

case "$command" in
  start)
    [[ $# -eq 3 ]] || usage
    port=$3
    bin=$(pg_bin)
    if [[ -z "$bin" ]]; then
      echo "postgres-peer: no PostgreSQL server found; installing Debian's postgresql package" >&2
      if [[ $(id -u) -ne 0 ]]; then
        echo "postgres-peer: installing needs root; run as root or install postgresql first" >&2
        exit 1
      fi
      export DEBIAN_FRONTEND=noninteractive
      apt-get update >&2
      apt-get install -y --no-install-recommends postgresql >&2
      bin=$(pg_bin)
      [[ -n "$bin" ]] || { echo "postgres-peer: the package installed no server" >&2; exit 1; }
    fi
    mkdir -p "$dir"
    if [[ $(id -u) -eq 0 ]]; then
      chown postgres "$dir"
    fi
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >&2
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir \
          -c max_connections=300 -c shared_buffers=256MB \
          -c fsync=on -c synchronous_commit=on -c full_page_writes=on" start >&2
    echo "host=127.0.0.1 port=$port user=postgres dbname=postgres"
    ;;
  stop)
    bin=$(pg_bin)
    if [[ -n "$bin" && -d "$dir/data" ]]; then
      as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
    fi
    ;;
  *)
    usage
    ;;
esac
