#!/usr/bin/env bash
# Debian packages the test suite needs: full Fashion-MNIST and a headless Chromium for the report test.
# Installs only what is missing, and only where we are root with apt-get; elsewhere the tests that need
# them skip with a message that says how to get them (under CI=true the browser test fails instead).
# The report test drives this Chromium through Playwright (the `test` extra); Playwright's own browser
# download is not used.
set -u
need=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: missing Debian packages ${need[*]} (not root or no apt-get); tests that need them will skip (fail under CI=true)." >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
