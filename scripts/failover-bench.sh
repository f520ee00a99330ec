#!/usr/bin/env bash
# Measures projection-lead fail-over: two instances on one PostgreSQL schema, SIGKILL the leader,
# time until the survivor reports leading users.v1 and serves a fresh registration's /me.
# Usage: BIN=target/release/teachback [PG=postgres://…/test] [RUNS=10] scripts/failover-bench.sh
set -euo pipefail
BIN=$(realpath "${BIN:?set BIN to the teachback binary}")
PG=${PG:-postgres://postgres@127.0.0.1:5432/test}
runs=${RUNS:-10}
for i in $(seq 1 "$runs"); do
  schema="fo_$(date +%s%N)"
  psql -q "$PG" -c "CREATE SCHEMA $schema" >/dev/null
  url="$PG?options=-c%20search_path%3D$schema"
  work=$(mktemp -d); cd "$work"; mkdir a b
  (cd a && TEACHBACK_DATABASE_URL="$url" TEACHBACK_JWT_SECRET=failover-bench-secret-0123456789abcdef TEACHBACK_ADDR=127.0.0.1:18181 TEACHBACK_RATE_LIMITS=off exec "$BIN" >log 2>&1) & pa=$!
  until curl -sf http://127.0.0.1:18181/readyz >/dev/null; do sleep 0.05; done
  (cd b && TEACHBACK_DATABASE_URL="$url" TEACHBACK_JWT_SECRET=failover-bench-secret-0123456789abcdef TEACHBACK_ADDR=127.0.0.1:18182 TEACHBACK_RATE_LIMITS=off exec "$BIN" >log 2>&1) & pb=$!
  until curl -sf http://127.0.0.1:18182/readyz >/dev/null; do sleep 0.05; done
  sleep 1
  curl -s http://127.0.0.1:18181/metrics | grep -q 'teachback_projection_leader{projection="users.v1"} 1' || { echo "A does not lead"; }
  t0=$(date +%s%N)
  kill -9 $pa
  until curl -s http://127.0.0.1:18182/metrics | grep -q 'teachback_projection_leader{projection="users.v1"} 1'; do sleep 0.01; done
  t1=$(date +%s%N)
  tok=$(curl -s -X POST http://127.0.0.1:18182/api/v1/devices | python3 -c 'import sys,json;print(json.load(sys.stdin)["accessToken"])')
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $tok" http://127.0.0.1:18182/api/v1/me)
  t2=$(date +%s%N)
  echo "run $i: lead taken after $(( (t1-t0)/1000000 )) ms; a new learner readable after $(( (t2-t0)/1000000 )) ms (GET /me $code)"
  kill -TERM $pb; wait $pb 2>/dev/null || true; wait $pa 2>/dev/null || true
  psql -q "$PG" -c "DROP SCHEMA $schema CASCADE" >/dev/null 2>&1
  cd /; rm -rf "$work"
done
