#!/usr/bin/env bash
# Before `npm test`: the WebGPU tests need a Vulkan adapter. On a machine without a GPU that is
# Mesa's lavapipe (software Vulkan); Debian 12's own Mesa is too old for Dawn, bookworm-backports'
# is not. Installs it (and a C compiler for the llama.cpp comparison tests) as root where apt
# can; otherwise says what is missing, and the tests then fail naming it.
# PLEXUS_SKIP_WEBGPU=1 opts out of the GPU tests altogether.
set -euo pipefail
[ "${PLEXUS_SKIP_WEBGPU:-}" = "1" ] && exit 0

mesa_major () { dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null | sed 's/^[0-9]*://; s/\..*//' || true; }
have_vulkan () { ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; }
has_gpu () { ls /dev/dri/renderD* /dev/nvidia[0-9]* >/dev/null 2>&1; }

need=()
if ! has_gpu && { ! have_vulkan || [ "$(mesa_major)" = "" ] || [ "$(mesa_major)" -lt 24 ]; }; then need+=(vulkan); fi
command -v cc >/dev/null || need+=(cc)
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null; then
  echo "setup-test-gpu: missing ${need[*]}: install mesa-vulkan-drivers and libvulkan1 (Mesa ≥ 24, e.g. from bookworm-backports) and a C compiler, or set PLEXUS_SKIP_WEBGPU=1" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if [[ " ${need[*]} " == *" vulkan "* ]]; then
  if [ -f /etc/apt/sources.list.d/debian.sources ] && grep -q bookworm /etc/apt/sources.list.d/debian.sources && [ ! -f /etc/apt/sources.list.d/backports.sources ]; then
    awk 'BEGIN{RS="";ORS="\n\n"} NR==1' /etc/apt/sources.list.d/debian.sources \
      | sed 's/^Suites: .*/Suites: bookworm-backports/' > /etc/apt/sources.list.d/backports.sources
  fi
  apt-get update -qq
  if [ -f /etc/apt/sources.list.d/backports.sources ]; then
    apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
  else
    apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
  fi
fi
if [[ " ${need[*]} " == *" cc "* ]]; then
  [[ " ${need[*]} " == *" vulkan "* ]] || apt-get update -qq
  apt-get install -y -qq gcc libc6-dev >/dev/null
fi
echo "setup-test-gpu: installed ${need[*]}" >&2
