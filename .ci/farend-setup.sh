#!/usr/bin/env bash
# Installs the real parts that internal/farend tests drive (idempotent; fast when
# already done):
#   - Chromium (Debian package) at /usr/bin/chromium
#   - livekit-server built from source into .cache/bin/server
#   - livekit-client (npm) into .cache/npm
# Tests skip when a part is missing unless KONSULT_REQUIRE_REAL_PARTS=1.
set -euo pipefail

LIVEKIT_VERSION=v1.13.5
LIVEKIT_CLIENT_VERSION=2.23.0

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
say() { echo "farend-setup: $*"; }

# 1. Chromium (not needed by `make run`, which sets SKIP_CHROMIUM=1)
if [ "${SKIP_CHROMIUM:-}" = 1 ]; then
  say "chromium not needed here"
elif [ -x /usr/bin/chromium ]; then
  say "chromium present: $(/usr/bin/chromium --version 2>/dev/null | head -n1)"
else
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-cache show chromium >/dev/null 2>&1; then
    say "apt-get update (no chromium in the package lists yet)"
    $SUDO apt-get update -q
  fi
  say "apt-get install chromium"
  if ! $SUDO apt-get install -y -q --no-install-recommends chromium; then
    say "install failed; retrying after apt-get update"
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends chromium
  fi
fi

# 2. livekit-server
bin="$root/.cache/bin/server"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "${LIVEKIT_VERSION#v}"; then
  say "livekit-server present: $("$bin" --version 2>/dev/null)"
else
  say "building livekit-server $LIVEKIT_VERSION into .cache/bin (takes a few minutes)"
  mkdir -p "$root/.cache/bin"
  GOBIN="$root/.cache/bin" go install "github.com/livekit/livekit-server/cmd/server@$LIVEKIT_VERSION"
  say "built: $("$bin" --version 2>/dev/null)"
fi

# 3. livekit-client
js="$root/.cache/npm/node_modules/livekit-client/dist/livekit-client.umd.js"
pkg="$root/.cache/npm/node_modules/livekit-client/package.json"
if [ -f "$js" ] && grep -q "\"version\": \"$LIVEKIT_CLIENT_VERSION\"" "$pkg" 2>/dev/null; then
  say "livekit-client $LIVEKIT_CLIENT_VERSION present"
else
  say "npm install livekit-client@$LIVEKIT_CLIENT_VERSION into .cache/npm"
  mkdir -p "$root/.cache/npm"
  npm install --prefix "$root/.cache/npm" --no-audit --no-fund --loglevel=error "livekit-client@$LIVEKIT_CLIENT_VERSION"
  [ -f "$js" ] || { say "ERROR: $js missing after npm install"; exit 1; }
fi
say "done"
