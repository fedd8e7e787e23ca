#!/usr/bin/env bash
# Installs the real servers the tests and the benchmark start (Debian packages), when missing.
# Runs apt-get only if something is missing, and only as root; otherwise it says what to install.
set -euo pipefail

need=()
# --run: only what `make run` needs (the demo's streams and the live view), not the test servers.
if [ "${1:-}" = "--run" ]; then
  command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
  command -v rtsp-server-perl >/dev/null 2>&1 || need+=(rtsp-server-perl)
  if [ ${#need[@]} -eq 0 ]; then exit 0; fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
  exit 0
fi
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
# mosquitto_pub and mosquitto_sub: a real third-party MQTT client for the tests.
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
# openssl makes the throwaway CA of the mqtts:// tests.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
# ffmpeg makes the test and demo streams and remuxes RTSP cameras into HLS for the live view;
# rtsp-server-perl is a real RTSP server (a relay ffmpeg publishes into) for the RTSP tests.
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v rtsp-server-perl >/dev/null 2>&1 || need+=(rtsp-server-perl)
# The wall's browser tests: Debian's chromium (Playwright drives it), and CJK fonts, without
# which Chinese renders as boxes in the screenshots.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
fc-list 2>/dev/null | grep -qi 'Noto Sans CJK' || need+=(fonts-noto-cjk)
# The benchmarks: wrk drives the API (bench/api); nodejs and npm run Node-RED, the peer of bench/peers.
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
  exit 1
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${need[@]}"
# Debian starts some of these as services where an init system runs; the tests start their own.
