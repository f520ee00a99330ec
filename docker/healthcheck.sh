#!/bin/bash
# Container health probe for TeachBack: `GET /readyz` (or the path given as $1) on the port
# TEACHBACK_ADDR names, over bash's /dev/tcp, so the image needs no HTTP client. Healthy when
# the answer is 200; otherwise the status line and the start of the body (the readiness
# problems) go to stderr, where `docker inspect` shows them.
set -u

path="${1:-/readyz}"
addr="${TEACHBACK_ADDR:-0.0.0.0:8080}"
port="${addr##*:}"

exec 3<>"/dev/tcp/127.0.0.1/${port}" || exit 1
printf 'GET %s HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$path" >&3
IFS= read -r -t 3 status <&3 || { echo "no answer on port ${port}" >&2; exit 1; }
status="${status%$'\r'}"
case "$status" in
    "HTTP/1."?" 200"*) exit 0 ;;
esac
echo "${path}: ${status}" >&2
# The body, after the headers: a bounded read, so a stuck server cannot hold the probe.
body=""
while IFS= read -r -t 1 line <&3; do
    [ "${line%$'\r'}" = "" ] && break
done
IFS= read -r -t 1 -N 2000 body <&3
echo "$body" >&2
exit 1
