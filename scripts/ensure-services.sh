#!/usr/bin/env bash
# Makes sure the services the tests talk to run on loopback: PostgreSQL (5432), Redis (6379) and
# NATS with JetStream (4222), and that the tools the tests run (cloud-init, prometheus, alertmanager's amtool, cargo-nextest) exist. Installs a missing server from Debian's packages, starts a stopped
# one, and fails naming the piece it could not bring up.
set -euo pipefail

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # port name
  for _ in $(seq 1 50); do listening "$1" && return 0; sleep 0.2; done
  echo "error: $2 is not listening on 127.0.0.1:$1 and could not be started" >&2
  exit 1
}

apt_install() {
  if ! command -v apt-get >/dev/null; then
    echo "error: $* is missing and apt-get is not available to install it" >&2
    exit 1
  fi
  echo "installing $* ..."
  if [ -z "${QM_APT_UPDATED:-}" ]; then apt-get update -qq >/dev/null; export QM_APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! listening 5432; then
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  wait_for 5432 PostgreSQL
fi

if ! listening 6379; then
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for 6379 Redis
fi

# The bus-outage test runs private nats-server processes, so the binary must exist even when
# the shared server is up.
if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then
  apt_install nats-server
fi
if ! listening 4222; then
  nats_server=$(command -v nats-server || echo /usr/sbin/nats-server)
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec "$nats_server" -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_for 4222 "NATS"
fi

# The boot-configuration tests validate rendered user data with cloud-init's own schema checker.
command -v cloud-init >/dev/null || apt_install --no-install-recommends cloud-init
# Dashboard queries are evaluated by a real Prometheus.
command -v prometheus >/dev/null || apt_install --no-install-recommends prometheus
# Alert rules are unit-tested with promtool (in prometheus); the Alertmanager example is checked
# with amtool.
command -v amtool >/dev/null || apt_install --no-install-recommends prometheus-alertmanager

if ! command -v cargo-nextest >/dev/null; then
  echo "installing cargo-nextest ..."
  cargo install --locked cargo-nextest >/dev/null
fi
echo "services ready: PostgreSQL :5432, Redis :6379, NATS JetStream :4222"
