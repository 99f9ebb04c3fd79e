#!/usr/bin/env bash
# Installs the parts of the media-cluster and second-WHIP-server tests
# (issue 25; idempotent, fast when already done):
#   - redis-server (Debian package): the shared state of two LiveKit nodes.
#     Tests start their own on 127.0.0.1; the packaged service stays off.
#   - MediaMTX built from its Go module into .cache/bin/mediamtx.
# Tests skip when a part is missing unless KONSULT_REQUIRE_REAL_PARTS=1.
set -euo pipefail

MEDIAMTX_VERSION=v1.20.1
HLSJS_VERSION=1.7.0   # the dist/hls.min.js MediaMTX's module lacks

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
say() { echo "cluster-setup: $*"; }
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

# 1. redis-server
if ! command -v redis-server >/dev/null 2>&1; then
  say "apt-get install redis-server"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server ||
    { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server; }
  if [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now redis-server.service || true
  else
    $SUDO service redis-server stop >/dev/null 2>&1 || true
  fi
fi
say "redis-server present: $(redis-server --version | head -n1)"

# 2. MediaMTX. `go install` fails: the proxy refuses the module's version
# list, and the module lacks two generated files (VERSION, hls.min.js).
bin="$root/.cache/bin/mediamtx"
if [ -x "$bin" ] && [ "$("$bin" --version 2>/dev/null | tail -n1)" = "$MEDIAMTX_VERSION" ]; then
  say "mediamtx present: $MEDIAMTX_VERSION"
else
  say "building mediamtx $MEDIAMTX_VERSION into .cache/bin (takes a few minutes)"
  mkdir -p "$root/.cache/bin" "$root/.cache/mediamtx"
  tmp="$(mktemp -d)"
  trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT
  dir="$(cd "$tmp" && GOFLAGS=-mod=mod go mod download -json "github.com/bluenviron/mediamtx@$MEDIAMTX_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [ -d "$dir" ] || { say "ERROR: go mod download gave no folder"; exit 1; }
  src="$tmp/mediamtx"
  cp -r "$dir" "$src" && chmod -R u+w "$src"
  printf '%s' "$MEDIAMTX_VERSION" >"$src/internal/core/VERSION"
  npm install --prefix "$tmp/npm" --no-audit --no-fund --loglevel=error "hls.js@$HLSJS_VERSION"
  cp "$tmp/npm/node_modules/hls.js/dist/hls.min.js" "$src/internal/servers/hls/hls.min.js"
  (cd "$src" && go build -o "$bin.new" .)
  mv "$bin.new" "$bin"
  say "built: mediamtx $("$bin" --version 2>/dev/null | tail -n1)"
fi
say "done"
