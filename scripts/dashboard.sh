#!/usr/bin/env bash
# Start, stop or check the Streamlit dashboard in the background.
#
#   scripts/dashboard.sh [start]   # 127.0.0.1:${DASHBOARD_PORT:-8501}; returns once it answers
#   scripts/dashboard.sh stop      # stops it (and only it)
#   scripts/dashboard.sh status
#
# Logs in logs/dashboard.log, pid in logs/dashboard.pid. Starting twice is harmless. The dashboard
# finds TorchServe through TS_HOST, TS_INFERENCE_PORT, TS_MANAGEMENT_PORT, TS_METRICS_PORT and
# TS_KEY_FILE (defaults: 127.0.0.1, 8080, 8081, 8082, ./key_file.json).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
HOST=127.0.0.1
PORT="${DASHBOARD_PORT:-8501}"
LOG_DIR="$ROOT/logs"
PID_FILE="$LOG_DIR/dashboard.pid"
LOG="$LOG_DIR/dashboard.log"
URL="http://$HOST:$PORT"

running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    # a pid reused by another program after a reboot is not ours
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "streamlit run dashboard/app.py" || return 1
    echo "$pid"
}

healthy() {
    curl -fsS --max-time 2 "$URL/_stcore/health" >/dev/null 2>&1
}

start() {
    local pid
    if pid="$(running_pid)"; then
        if healthy; then
            echo "dashboard already running: $URL (pid $pid)"
            return 0
        fi
    elif healthy || (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; then
        echo "port $PORT is in use by another process: set DASHBOARD_PORT" >&2
        return 1
    else
        mkdir -p "$LOG_DIR"
        # setsid: the dashboard gets its own process group, so `stop` ends all of it.
        setsid "$PY" -m streamlit run dashboard/app.py \
            --server.address "$HOST" --server.port "$PORT" --server.headless true \
            --server.fileWatcherType none --server.maxUploadSize 16 \
            --browser.gatherUsageStats false --client.toolbarMode minimal \
            >>"$LOG" 2>&1 </dev/null &
        pid=$!
        echo "$pid" >"$PID_FILE"
    fi
    for _ in $(seq 1 120); do
        if healthy; then
            echo "dashboard: $URL (pid $pid, log $LOG)"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            echo "the dashboard exited; last lines of $LOG:" >&2
            tail -n 20 "$LOG" >&2
            return 1
        fi
        sleep 0.5
    done
    echo "the dashboard did not answer at $URL within 60 s; see $LOG" >&2
    return 1
}

stop() {
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$PID_FILE"
        echo "dashboard not running"
        return 0
    fi
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
    echo "dashboard stopped"
}

status() {
    local pid
    if pid="$(running_pid)" && healthy; then
        echo "dashboard running: $URL (pid $pid)"
    else
        echo "dashboard not running"
        return 3
    fi
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
