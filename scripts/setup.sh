#!/usr/bin/env bash
# Sets roundtrip up on a fresh Debian 12 machine: system packages, npm dependencies, the native addon
# (cmake-js, against Debian's libtorch unless LIBTORCH / Torch_DIR point elsewhere) and the TypeScript build.
set -euo pipefail
cd "$(dirname "$0")/.."

need_node="20.19.0"
if ! command -v node >/dev/null 2>&1; then
  echo "roundtrip: Node.js >= ${need_node} is required (Debian 12's nodejs is 18: use NodeSource or nvm)" >&2
  exit 1
fi
node -e "const [a,b]=process.versions.node.split('.').map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)" || {
  echo "roundtrip: Node.js >= ${need_node} is required, found $(node --version)" >&2
  exit 1
}

# libopenblas0-pthread replaces the reference BLAS behind libtorch's matrix products (about 10x faster here).
packages=(cmake g++ make pkg-config nlohmann-json3-dev libopenblas0-pthread)
# libgloo-dev: the Gloo headers c10d's ProcessGroupGloo needs (distributed training; libtorch exports the rest).
packages+=(libgloo-dev)
if [ -z "${LIBTORCH:-}" ] && [ -z "${Torch_DIR:-}" ]; then packages+=(libtorch-dev); fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "roundtrip: installing Debian packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# npm ci runs the package's install script, which builds the addon with cmake-js.
if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
npm run --silent build:ts
echo "roundtrip: set up ($(node -p "require('./dist/runtime/native').native().info().libtorch") libtorch, $(node -p "require('./dist/runtime/native').native().info().cuda ? 'CUDA' : 'CPU'"))"
