#!/usr/bin/env bash
# Start/stop the emulated ARM64 board: a TVM RPC tracker on 127.0.0.1 and an RPC server
# under qemu-user registered at it.
# Usage: tools/arm64/device.sh start|stop|status [--port 9190] [--key arm64-emu] [--dir DIR]
set -euo pipefail
CMD=${1:-status}; shift || true
PORT=9190; KEY=arm64-emu; DIR=${MPQC_CACHE:-$HOME/.cache/mpqc}/arm64
while [ $# -gt 0 ]; do
    case $1 in
        --port) PORT=$2; shift 2;; --key) KEY=$2; shift 2;; --dir) DIR=$2; shift 2;;
        *) echo "unknown option $1" >&2; exit 2;;
    esac
done
REPO=$(cd "$(dirname "$0")/../.." && pwd)
HOSTPY="$REPO/.venv/bin/python"
RUN="$DIR/run-$PORT"

registered() {
    "$HOSTPY" - "$PORT" "$KEY" <<'PY'
import sys
from tvm import rpc
try:
    summary = rpc.connect_tracker("127.0.0.1", int(sys.argv[1])).summary()
except Exception:
    sys.exit(1)
sys.exit(0 if any(q.get("key") == sys.argv[2] or k == sys.argv[2]
                  for k, q in summary.get("queue_info", {}).items()) else 1)
PY
}

case $CMD in
start)
    [ -x "$DIR/python" ] || { echo "no emulated device in $DIR: run make arm64-device" >&2; exit 1; }
    mkdir -p "$RUN"
    if ! { [ -f "$RUN/tracker.pid" ] && kill -0 "$(cat "$RUN/tracker.pid")" 2>/dev/null; }; then
        "$HOSTPY" -m tvm.exec.rpc_tracker --host 127.0.0.1 --port "$PORT" --port-end "$((PORT + 1))" \
            > "$RUN/tracker.log" 2>&1 &
        echo $! > "$RUN/tracker.pid"
        sleep 2
    fi
    if ! { [ -f "$RUN/server.pid" ] && kill -0 "$(cat "$RUN/server.pid")" 2>/dev/null; }; then
        "$DIR/python" -m tvm.exec.rpc_server --host 127.0.0.1 --port "$((PORT + 100))" \
            --port-end "$((PORT + 199))" --tracker "127.0.0.1:$PORT" --key "$KEY" \
            > "$RUN/server.log" 2>&1 &
        echo $! > "$RUN/server.pid"
    fi
    for _ in $(seq 1 90); do
        if registered; then echo "emulated arm64 device '$KEY' at tracker 127.0.0.1:$PORT"; exit 0; fi
        sleep 1
    done
    echo "the emulated device did not register; see $RUN/server.log" >&2; exit 1;;
stop)
    for p in server tracker; do
        if [ -f "$RUN/$p.pid" ]; then kill "$(cat "$RUN/$p.pid")" 2>/dev/null || true; rm -f "$RUN/$p.pid"; fi
    done
    # the server's forked workers run under qemu with our wrapper as argv[0]
    pkill -f -- "-0 $DIR/python" 2>/dev/null || true
    echo "stopped";;
status)
    if registered; then echo "running: key '$KEY' at 127.0.0.1:$PORT"; else echo "not running"; exit 1; fi;;
*) echo "usage: $0 start|stop|status [--port P] [--key K] [--dir D]" >&2; exit 2;;
esac
