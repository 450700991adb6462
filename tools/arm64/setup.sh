#!/usr/bin/env bash
# Set up an emulated ARM64 board for checking cross-compiled kernels (never for timing):
# qemu-user, a Debian bookworm arm64 Python 3.11 and the aarch64 TVM wheels.
# Idempotent and cached: a rerun with everything in place returns at once.
# Usage: tools/arm64/setup.sh [DIR]   (default ${MPQC_CACHE:-~/.cache/mpqc}/arm64)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DIR=${1:-${MPQC_CACHE:-$HOME/.cache/mpqc}/arm64}
STAMP="$DIR/.ready-tvm-0.27.0.post1"
[ -f "$STAMP" ] && { echo "arm64 device ready in $DIR"; exit 0; }

need=()
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
if [ ${#need[@]} -gt 0 ]; then
    echo "== apt-get install ${need[*]}"
    [ "$(id -u)" = 0 ] || { echo "run as root (apt-get install ${need[*]})" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

# The mirror the host's apt uses: the only Debian host this machine may reach.
MIRROR=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list \
         /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
         | head -n1 | grep -oE 'https?://[^ ]+' || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}

ROOT="$DIR/root"
rm -rf "$DIR.tmp"; mkdir -p "$DIR.tmp"
echo "== debootstrap (first stage only: no arm64 code runs) from $MIRROR"
/usr/sbin/debootstrap --arch=arm64 --variant=minbase --foreign \
    --include=python3.11-minimal,libpython3.11-stdlib,libstdc++6,zlib1g,libffi8 \
    bookworm "$DIR.tmp/root" "$MIRROR" > "$DIR.tmp/debootstrap.log"
# Without binfmt_misc the second stage cannot run; unpacking the packages is enough for
# a Python that qemu-user runs with -L ROOT.
for deb in "$DIR.tmp/root/var/cache/apt/archives/"*.deb; do dpkg-deb -x "$deb" "$DIR.tmp/root"; done

echo "== aarch64 wheels (apache-tvm, numpy, ...) into $DIR/site"
"$REPO/.venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-warn-conflicts --target "$DIR.tmp/site" --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
    --only-binary=:all: --python-version 3.11 --implementation cp \
    apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 numpy==2.4.6 \
    cloudpickle psutil tornado ml_dtypes typing_extensions

# sys.executable of the emulated Python is this wrapper, so the subprocesses the TVM RPC
# server starts run under qemu too.
cat > "$DIR.tmp/python" <<WRAP
#!/bin/sh
PYTHONPATH="$DIR/site" exec qemu-aarch64-static -0 "\$0" -L "$ROOT" "$ROOT/usr/bin/python3.11" "\$@"
WRAP
chmod +x "$DIR.tmp/python"
rm -rf "$DIR"; mv "$DIR.tmp" "$DIR"
"$DIR/python" -c "import platform, tvm; print('emulated', platform.machine(), 'tvm', tvm.__version__)"
touch "$STAMP"
echo "arm64 device ready in $DIR ($(du -sh "$DIR" | cut -f1))"
