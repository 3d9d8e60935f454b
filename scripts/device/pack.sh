#!/usr/bin/env bash
# Run here (a machine with the repo's node_modules and network): fills .device/ with what
# scripts/device/run.sh needs on a GPU machine that has no Node and no network. The device tool
# carries ignored paths of at most 64 MiB in all, so everything is xz'd and trimmed to what the
# GPU tests and bench:gpu run: Node itself, the workspace's production packages (webgpu with only
# its linux-x64 dawn.node), mocha, node-llama-cpp with only its linux-x64 Vulkan build, and the
# Vulkan loader plus GL dispatch libraries as Debian packages (NVIDIA's Vulkan driver needs both).
#
# usage: scripts/device/pack.sh [--no-llama]      then carry ".device" to the device and run
#        scripts/device/run.sh there.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=.device
LIMIT=$((64 * 1024 * 1024))
WITH_LLAMA=1
[ "${1:-}" = "--no-llama" ] && WITH_LLAMA=0

NODE_BIN=$(readlink -f node_modules/node/bin/node 2>/dev/null || true)
[ -x "$NODE_BIN" ] || { echo "pack: node_modules/node/bin/node missing: run npm ci first" >&2; exit 1; }
[ "$("$NODE_BIN" -p 'process.versions.node.split(".")[0]')" = 24 ] || { echo "pack: node_modules/node is not Node 24" >&2; exit 1; }
mkdir -p "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# 1. Node (126 MB → ~29 MB). -9e is slow (~1.5 min), so it is kept while the binary is unchanged.
if [ ! -s "$OUT/node.xz" ] || [ "$NODE_BIN" -nt "$OUT/node.xz" ]; then
  echo "pack: xz -9e Node $("$NODE_BIN" --version) …"
  xz -9e -T1 -c "$NODE_BIN" > "$OUT/node.xz.tmp" && mv "$OUT/node.xz.tmp" "$OUT/node.xz"
fi

# Bulk not needed at run time: source maps, type declarations, docs, browser bundles, other platforms.
EXCLUDES=(
  --exclude='*.map' --exclude='*.d.ts' --exclude='*.d.mts' --exclude='*.d.cts' --exclude='*.md'
  --exclude='node_modules/webgpu/dist/darwin-*' --exclude='node_modules/webgpu/dist/linux-arm64'
  --exclude='node_modules/webgpu/dist/win32-*'
  --exclude='node_modules/@tensorflow/*/dist/miniprogram' --exclude='node_modules/@tensorflow/*/dist/*.min.js'
  --exclude='node_modules/@tensorflow/*/dist/*_test.js'
  --exclude='node-llama-cpp/llama/gitRelease.bundle' --exclude='node-llama-cpp/templates'
)

# 2. Every workspace package's production dependencies (the GPU tests start swarms and the CLI) plus
#    mocha, as Node resolves them (workspace links kept as links).
WORKSPACES=()
for p in packages/*/package.json; do WORKSPACES+=(".:$("$NODE_BIN" -p "require('./$p').name")"); done
"$NODE_BIN" scripts/device/closure.ts . "${WORKSPACES[@]}" .:webgpu .:mocha | grep -v '^node_modules/@types/' > "$TMP/modules.txt"
echo "pack: node_modules: $(wc -l < "$TMP/modules.txt") packages"
tar cf "$TMP/modules.tar" "${EXCLUDES[@]}" -T "$TMP/modules.txt"
xz -9 -T0 -c "$TMP/modules.tar" > "$OUT/node_modules.tar.xz"

# 3. node-llama-cpp (scripts/node_modules) with only the linux-x64 Vulkan prebuilt binaries.
rm -f "$OUT/llama.tar.xz"
if [ "$WITH_LLAMA" = 1 ]; then
  if [ ! -d scripts/node_modules/@node-llama-cpp/linux-x64-vulkan ]; then npm run baseline:install; fi
  SKIP=()
  for d in scripts/node_modules/@node-llama-cpp/*; do
    n=$(basename "$d"); [ "$n" = linux-x64-vulkan ] || SKIP+=(--skip "@node-llama-cpp/$n")
  done
  for n in linux-riscv64 mac-arm64-metal mac-x64 win-arm64 win-x64 win-x64-cuda win-x64-cuda-ext win-x64-vulkan; do SKIP+=(--skip "@node-llama-cpp/$n"); done
  "$NODE_BIN" scripts/device/closure.ts . scripts:node-llama-cpp "${SKIP[@]}" > "$TMP/llama.txt"
  grep -q '@node-llama-cpp/linux-x64-vulkan$' "$TMP/llama.txt" || { echo "pack: @node-llama-cpp/linux-x64-vulkan is not installed" >&2; exit 1; }
  echo "pack: llama.cpp: $(wc -l < "$TMP/llama.txt") packages"
  tar cf "$TMP/llama.tar" "${EXCLUDES[@]}" -T "$TMP/llama.txt"
  xz -9 -T0 -c "$TMP/llama.tar" > "$OUT/llama.tar.xz"
fi

# 4. The Vulkan loader and the GL/EGL dispatch libraries, unpacked there with dpkg -x.
rm -rf "$OUT/debs"; mkdir -p "$OUT/debs"
(cd "$OUT/debs" && apt-get download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 >/dev/null 2>"$TMP/apt.err") \
  || { cat "$TMP/apt.err" >&2; echo "pack: apt-get download failed" >&2; exit 1; }

{
  echo "packed $(date -u +%FT%TZ) from $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo "node $("$NODE_BIN" --version)"
  (cd "$OUT" && ls -l node.xz node_modules.tar.xz llama.tar.xz debs/*.deb 2>/dev/null | awk '{print $5, $9}')
} > "$OUT/MANIFEST"

TOTAL=$(du -cb "$OUT" | tail -1 | cut -f1)
if [ "$WITH_LLAMA" = 1 ] && [ "$TOTAL" -gt "$LIMIT" ]; then
  echo "pack: $TOTAL bytes is over 64 MiB: leaving llama.cpp out (bench:gpu will say it is unavailable)"
  rm -f "$OUT/llama.tar.xz"
  TOTAL=$(du -cb "$OUT" | tail -1 | cut -f1)
fi
du -b "$OUT"/node.xz "$OUT"/node_modules.tar.xz "$OUT"/llama.tar.xz "$OUT"/debs 2>/dev/null | awk '{printf "  %6.1f MiB  %s\n", $1 / 1048576, $2}'
awk -v t="$TOTAL" 'BEGIN { printf "pack: .device/ holds %.1f MiB (%d bytes) of the 64 MiB carry limit\n", t / 1048576, t }'
[ "$TOTAL" -le "$LIMIT" ] || { echo "pack: over the 64 MiB carry limit" >&2; exit 1; }
echo "pack: next: run scripts/device/run.sh on the GPU machine with carry [\".device\"]"
