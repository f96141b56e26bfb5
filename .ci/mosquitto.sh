#!/usr/bin/env bash
# Broker tooling for linesight's output tests (tests/conftest.py starts its own brokers on free ports).
#
#   .ci/mosquitto.sh install       install what the tests need and is missing (Debian/Ubuntu):
#                                  mosquitto + mosquitto-clients (broker, mosquitto_passwd),
#                                  openssl (test CA), prometheus (only for promtool; tests skip without it)
#   .ci/mosquitto.sh run [PORT]    foreground anonymous broker on 127.0.0.1:PORT (default 1883) for manual
#                                  checks, e.g. mosquitto_sub -t 'linesight/#' -v
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

install() {
  local pkgs=() fresh=()
  have mosquitto || { pkgs+=(mosquitto); fresh+=(mosquitto); }
  have mosquitto_passwd || pkgs+=(mosquitto-clients)
  have openssl || pkgs+=(openssl)
  have promtool || { pkgs+=(prometheus); fresh+=(prometheus); }
  if [ ${#pkgs[@]} -eq 0 ]; then
    echo "mosquitto.sh: everything already installed"
    return 0
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
  # The packages enable system services; the tests run their own brokers, so stop what we just added.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    for svc in "${fresh[@]}"; do $sudo systemctl disable --now "$svc" >/dev/null 2>&1 || true; done
  fi
  echo "mosquitto.sh: installed ${pkgs[*]}"
}

run() {
  local port="${1:-1883}" conf
  conf="$(mktemp --suffix=.conf)"
  trap 'rm -f "$conf"' EXIT
  printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nuser %s\nlog_dest stdout\n' \
    "$port" "$(id -un)" >"$conf"
  local bin; bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
  echo "mosquitto.sh: broker on 127.0.0.1:$port (Ctrl-C to stop)"
  "$bin" -c "$conf"
}

case "${1:-}" in
  install) install ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 install | run [PORT]" >&2; exit 2 ;;
esac
