#!/usr/bin/env bash
# Dependency direction (DESIGN section 2, issue 12), checked by `make test`:
# - a service depends on crates, never on another service (the `qm` CLI, which runs them all in
#   `qm dev`, excepted);
# - the worker agent, which runs on every instance, links neither the store nor the bus.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"
failed=0
direct() { "$CARGO" tree --offline -p "$1" -e normal --prefix none --depth 1 | awk 'NR > 1 { print $1 }' | sort -u; }
for service in qm-api qm-orchestrator qm-finops qm-router qm-worker-agent; do
    others=$(direct "$service" | grep -E '^qm-(api|orchestrator|finops|router|worker-agent|cli)$' || true)
    if [ -n "$others" ]; then
        echo "error: $service depends on other services: $(echo $others)" >&2
        failed=1
    fi
done
linked=$("$CARGO" tree --offline -p qm-worker-agent -e normal --prefix none | awk '{ print $1 }' \
    | grep -E '^qm-(store|bus)$' | sort -u || true)
if [ -n "$linked" ]; then
    echo "error: qm-worker-agent links $(echo $linked); it must reach the control plane over HTTP only" >&2
    failed=1
fi
[ "$failed" = 0 ] && echo "dependency direction ok"
exit "$failed"
