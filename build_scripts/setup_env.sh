#!/usr/bin/env bash
# One idempotent setup step for `bash run.sh demo|test`:
#   - Debian packages: espeak-ng (test speech), libb64-0d (perf_analyzer), docker-compose
#     (tests validate docker-compose.yml), and libpython3.11
#     only if no libpython3.11.so.1.0 exists for the Python backend's stub; each only when missing
#   - .venv made with python3.11 when missing
#   - `pip install --no-deps -r requirements.lock` when the lock file changed (stamp in .venv)
#   - the project root on the venv's path (a .pth file)
# Quiet when there is nothing to do.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
LOCK="$ROOT/requirements.lock"
STAMP="$VENV/.requirements.lock.sha256"

say() { echo "setup: $*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@";
    elif command -v sudo >/dev/null; then sudo "$@";
    else say "need root to run: $*"; exit 1; fi
}

missing=()
for pkg in espeak-ng libb64-0d docker-compose; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
PYTHON="${PYTHON:-python3.11}"
if [ ! -x "$VENV/bin/python" ] && ! command -v "$PYTHON" >/dev/null; then
    missing+=(python3.11 python3.11-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    say "creating .venv with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi

want="$(sha256sum "$LOCK" | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ]; then
    say "installing requirements.lock into .venv (a few minutes the first time)"
    "$VENV/bin/python" -m pip install -qq --disable-pip-version-check --no-deps -r "$LOCK"
    echo "$want" > "$STAMP"
fi

# The project's packages (python_backends, ...) on the venv's path, for the Python backend's
# stub too (it ignores PYTHONPATH but reads the venv's site-packages).
site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
[ "$(cat "$site/step_audio_triton.pth" 2>/dev/null || true)" = "$ROOT" ] || echo "$ROOT" > "$site/step_audio_triton.pth"

# The Python backend's stub (tritonserver) links libpython3.11.so.1.0: the venv interpreter's
# own when it is a shared build, else the system's.
base="$("$VENV/bin/python" -c 'import sys; print(sys.base_prefix)')"
if [ ! -e "$base/lib/libpython3.11.so.1.0" ] && ! ldconfig -p 2>/dev/null | grep -q 'libpython3\.11\.so\.1\.0'; then
    say "installing libpython3.11 (needed by the Triton Python backend stub)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
        libpython3.11 >/dev/null
fi
