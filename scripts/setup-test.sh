#!/usr/bin/env bash
# Before `npm test`: installs, as root where apt can, what the tests need from the system:
# - a Vulkan adapter for the WebGPU tests. On a machine without a GPU that is Mesa's lavapipe
#   (software Vulkan); Debian 12's own Mesa is too old for Dawn, bookworm-backports' is not
#   (PLEXUS_SKIP_WEBGPU=1 opts out of the GPU tests altogether);
# - a C compiler for the llama.cpp comparison tests;
# - Chromium for the dashboard's browser test;
# - iproute2 and iptables for the network-namespace tests (homes behind NAT, a LAN), and
#   miniupnpd (its nftables backend, with nft) for a home router that maps ports (UPnP); the
#   package's service stays off (its debconf default), the test runs its own in a namespace.
# Elsewhere it says what is missing, and the tests then fail naming it.
set -euo pipefail

mesa_major () { dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null | sed 's/^[0-9]*://; s/\..*//' || true; }
have_vulkan () { ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; }
has_gpu () { ls /dev/dri/renderD* /dev/nvidia[0-9]* >/dev/null 2>&1; }

need=()
if [ "${PLEXUS_SKIP_WEBGPU:-}" != "1" ] && ! has_gpu && { ! have_vulkan || [ "$(mesa_major)" = "" ] || [ "$(mesa_major)" -lt 24 ]; }; then need+=(vulkan); fi
command -v cc >/dev/null || need+=(cc)
command -v chromium >/dev/null || need+=(chromium)
{ command -v ip && command -v iptables && command -v tc && command -v nft && command -v miniupnpd; } >/dev/null || need+=(netns)
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null; then
  echo "setup-test: missing ${need[*]}: install mesa-vulkan-drivers and libvulkan1 (Mesa ≥ 24, e.g. from bookworm-backports; or set PLEXUS_SKIP_WEBGPU=1), a C compiler, chromium, iproute2, iptables, nftables and miniupnpd" >&2
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
[[ " ${need[*]} " == *" vulkan "* ]] || apt-get update -qq
pkgs=()
[[ " ${need[*]} " == *" cc "* ]] && pkgs+=(gcc libc6-dev)
[[ " ${need[*]} " == *" chromium "* ]] && pkgs+=(chromium)
[[ " ${need[*]} " == *" netns "* ]] && pkgs+=(iproute2 iptables nftables miniupnpd)
[ ${#pkgs[@]} -eq 0 ] || apt-get install -y -qq "${pkgs[@]}" >/dev/null
echo "setup-test: installed ${need[*]}" >&2
