#!/usr/bin/env bash
# The browser test: the web client in headless Chromium against a real teachback server.
#
#   tests/browser/run.sh
#
# 1. installs what it needs when missing: Debian's chromium, espeak-ng and sox (as root), and
#    playwright-core from npm (package-lock.json);
# 2. speaks a short lecture with espeak-ng into a WAV file, which Chromium then plays as its
#    microphone (--use-fake-device-for-media-stream --use-file-for-fake-audio-capture);
# 3. builds teachback and starts, on a free loopback port, the in-repo OpenAI-compatible provider
#    (speech-to-text and a chat model that streams); TEACHBACK_BROWSER_STT_URL /
#    TEACHBACK_BROWSER_LLM_URL point the server at real providers instead (for example
#    faster-whisper-server, see scripts/e2e-local-models.sh);
# 4. runs lecture.test.mjs, which starts the server (a fresh data directory, a free port),
#    records the lecture through the real page, restarts the server in the middle of it, and
#    checks the live transcript, the streamed feedback, the result, the user page, the ranking
#    page's live update, the watch page and the Korean UI. Screenshots and the server's log go to
#    target/browser/.
set -euo pipefail
here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd -- "$here/../.." && pwd)"
out="$root/target/browser"
mkdir -p "$out"

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v sox >/dev/null 2>&1 || missing+=(sox)
# Korean glyphs for the Korean screenshots.
fc-list :lang=ko 2>/dev/null | grep -q . || missing+=(fonts-nanum)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ! -d "$here/node_modules/playwright-core" ]; then
  (cd "$here" && npm ci --no-audit --no-fund --silent)
fi

# The lecture: about 25 seconds of speech with pauses between sentences.
lecture_text="Let me explain the difference between TCP and UDP. \
TCP is a connection oriented protocol. It sets up a connection with a three way handshake, \
numbers every byte, and retransmits lost segments, so data arrives complete and in order. \
UDP is connectionless. It sends independent datagrams with no handshake and no retransmission. \
That makes UDP faster and lighter, which suits games, voice calls and video streaming, \
while TCP suits the web, email and file transfer."
espeak-ng -v en-us -s 150 -w "$out/espeak.wav" "$lecture_text"
sox -q "$out/espeak.wav" -r 48000 -c 1 -b 16 "$out/lecture.wav" pad 0.3 1.5

(cd "$root" && cargo build --quiet --all-features --bin teachback)
bin="$root/target/debug/teachback"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
data="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT

stt_url="${TEACHBACK_BROWSER_STT_URL:-}"
llm_url="${TEACHBACK_BROWSER_LLM_URL:-}"
expected_transcript=""
if [ -z "$stt_url" ] || [ -z "$llm_url" ]; then
  fake_port="$(free_port)"
  # What the fake speech-to-text answers for every segment (a real one transcribes the WAV).
  expected_transcript="TCP sets up a connection and retransmits lost segments."
  "$bin" fake-openai --listen "127.0.0.1:$fake_port" --chunk-ms 25 \
    --stt-text "$expected_transcript" >"$out/fake-openai.log" 2>&1 &
  pids+=($!)
  stt_url="${stt_url:-http://127.0.0.1:$fake_port/v1}"
  llm_url="${llm_url:-http://127.0.0.1:$fake_port/v1}"
  if [ -n "${TEACHBACK_BROWSER_STT_URL:-}" ]; then expected_transcript=""; fi
fi

port="$(free_port)"
# The test starts the server itself (and restarts it mid-lecture) with this environment.
export TEACHBACK_ADDR="127.0.0.1:$port" TEACHBACK_DATA_DIR="$data" \
  TEACHBACK_STT_URL="$stt_url" TEACHBACK_LLM_URL="$llm_url"
TEACHBACK_BIN="$bin" BASE_URL="http://127.0.0.1:$port" WAV="$out/lecture.wav" \
  WAV_SECONDS="$(soxi -D "$out/lecture.wav")" SCREENSHOTS="$out" \
  EXPECTED_TRANSCRIPT="$expected_transcript" node "$here/lecture.test.mjs"
