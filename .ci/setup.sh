#!/usr/bin/env bash
# Set up everything linesight needs on a fresh Debian machine of this kind (idempotent).
# torch is pinned through .ci/constraints.txt to the local CPU wheel: never pulls CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto mosquitto-clients)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# tests/test_report_browser.py and tests/test_ui_browser.py drive Debian's chromium through Playwright (never `playwright install`: no browser download)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# promtool (Debian package prometheus) lints the alert rules and dashboard queries; without it those tests skip,
# which .ci/run's --strict-skips turns into a failure.
if ! command -v promtool >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
    || echo "setup: prometheus (promtool) not installed; its tests will skip and .ci/run will fail" >&2
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -c .ci/constraints.txt -e ".[cpu,train,camera,daemon,test,ui]"
# TLSimu.cti (EMVA GenTL reference simulator with software trigger) ships only in the genicam 1.3.0 wheel;
# it is proprietary, so it is fetched from PyPI here and never committed. tests/test_genicam.py uses it.
if [ ! -f .venv/gentl/TLSimu.cti ]; then
  tmp=$(mktemp -d)
  if .venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "genicam==1.3.0" >/dev/null 2>&1; then
    mkdir -p .venv/gentl
    .venv/bin/python - "$tmp" <<'PY'
import sys, zipfile, pathlib
whl = next(pathlib.Path(sys.argv[1]).glob("genicam-1.3.0-*.whl"))
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.endswith(("/TLSimu.cti", "/libVirtualFG.so")):
            pathlib.Path(".venv/gentl", name.rsplit("/", 1)[1]).write_bytes(z.read(name))
PY
  else
    echo "setup: genicam 1.3.0 (TLSimu.cti) not downloadable; software-trigger camera tests will skip and .ci/run will fail" >&2
  fi
  rm -rf "$tmp"
fi
