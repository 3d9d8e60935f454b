#!/usr/bin/env bash
# Run on the GPU machine (no Node, no network) from the repository root, with ".device" carried
# (made by scripts/device/pack.sh): unpacks Node, node_modules and the Vulkan/GL libraries under
# /tmp, prints the GPU and its adapter, runs the WebGPU tests and bench:gpu, and writes each step's
# output plus summary.json into $WORK/out, packed after every step into $OUT/results.tar.gz (the
# device tool brings back at most 8 files). The bench models and their GGUFs are made on the CPU in
# the background while the tests run. Every step has its own timeout, so a failure or a hang loses
# only that step. 229 s on an H200 with two variants (tests, two shapes, their profiles and the
# first kernels); the default now measures every matrix-vector kernel shape layer by layer first,
# then runs three variants (a run cut short by the device tool's limit still brings back every
# step before).
#
# Optional environment:
#   OUT                    where summary.json, run.log and results.tar.gz go (default: $WORK/out only)
#   PLEXUS_DEVICE_WORK     scratch directory (default /tmp/plexus-device)
#   PLEXUS_DEVICE_SYSROOT  where the .debs are unpacked (default / as root, then ldconfig;
#                          otherwise $PLEXUS_DEVICE_WORK/sysroot through LD_LIBRARY_PATH)
#   PLEXUS_DEVICE_STEPS    steps to run (default "probe tests matvec bench variants")
#   PLEXUS_BENCH_VARIANTS  settings to rerun every shape with, without llama.cpp (the "variants"
#                          step): space-separated NAME=VALUE, several joined by "+" (default
#                          "PLEXUS_GPU_PROFILE=1 PLEXUS_GPU_MATVEC_SHAPE=32x8x1x2
#                          PLEXUS_GPU_FUSED_NORMS=0": GPU time kernel by kernel; the matrix-vector
#                          kernel reading 2 weight rows a slot, each chunk of x loaded once for both;
#                          the decode norms as kernels of their own). The "matvec" step measures
#                          every kernel shape layer by layer first (bench-matvec.ts); rerun this step
#                          with its winner.
#   PLEXUS_BENCH_SHAPES    default "tinyllama llama3-8b-4l"
#   PLEXUS_BENCH_FORMATS   GGUF types both engines run (default "f16,q8_0")
#   PLEXUS_BENCH_ARGS      extra bench:gpu flags, e.g. "--tokens 128"
#   PLEXUS_MATVEC_ARGS     bench-matvec.ts flags, e.g. "--variants default,32x8x1x2 --rows 1"
#   PLEXUS_TEST_TIMEOUT, PLEXUS_MATVEC_TIMEOUT, PLEXUS_BENCH_TIMEOUT, PLEXUS_PREPARE_TIMEOUT
#                          seconds (default 150, 150, 200, 300)
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
PACK=$REPO/.device
WORK=${PLEXUS_DEVICE_WORK:-/tmp/plexus-device}
BACK=${OUT:-}
OUT=$WORK/out
STEPS=${PLEXUS_DEVICE_STEPS:-probe tests matvec bench variants}
SHAPES=${PLEXUS_BENCH_SHAPES:-tinyllama llama3-8b-4l}
FORMATS=${PLEXUS_BENCH_FORMATS:-f16,q8_0}
TEST_T=${PLEXUS_TEST_TIMEOUT:-150}
BENCH_T=${PLEXUS_BENCH_TIMEOUT:-200}
MATVEC_T=${PLEXUS_MATVEC_TIMEOUT:-150}
PREP_T=${PLEXUS_PREPARE_TIMEOUT:-300}
T0=$(date +%s)
rm -rf "$OUT"
mkdir -p "$OUT" "$WORK"
[ -z "$BACK" ] || mkdir -p "$BACK"
: > "$OUT/steps.jsonl"

# xz -dc, or Python's lzma where the machine has no xz.
dexz () { if command -v xz > /dev/null; then xz -dc "$1"; else python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$1"; fi; }
log () { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/run.log"; }
# step NAME SECONDS CMD...: stdout → $OUT/NAME.out, stderr → $OUT/NAME.err, status → steps.jsonl.
step () {
  local name=$1 limit=$2; shift 2
  log "== $name (timeout ${limit}s): $*"
  local s=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
  local rc=$?
  local took=$(( $(date +%s) - s ))
  [ $rc = 124 ] || [ $rc = 137 ] && log "   $name: TIMED OUT after ${took}s"
  log "   $name: rc=$rc in ${took}s"
  printf '{"step":"%s","rc":%d,"seconds":%d}\n' "$name" "$rc" "$took" >> "$OUT/steps.jsonl"
  pack_back
  return $rc
}
# Everything so far into $BACK, so a run cut short still brings back what it had.
pack_back () { [ -z "$BACK" ] || { tar czf "$BACK/results.tar.gz.tmp" -C "$OUT" . && mv "$BACK/results.tar.gz.tmp" "$BACK/results.tar.gz"; cp "$OUT/run.log" "$BACK/" 2>/dev/null; }; }
show () { echo "--- $1"; tail -n "${2:-40}" "$OUT/$1" 2>/dev/null | cut -c1-400; }

[ -s "$PACK/node.xz" ] && [ -s "$PACK/node_modules.tar.xz" ] || { log "no .device/node.xz or node_modules.tar.xz: run scripts/device/pack.sh here and carry .device"; exit 1; }
log "pack: $(head -1 "$PACK/MANIFEST" 2>/dev/null)"

# 1. Node, and a copy of the working tree with the carried node_modules (Node resolves packages
#    from the script's own directory upwards, so they go inside the tree, not beside it).
rm -rf "$WORK/bin" "$WORK/repo"
mkdir -p "$WORK/bin" "$WORK/repo"
dexz "$PACK/node.xz" > "$WORK/bin/node" && chmod +x "$WORK/bin/node" || { log "cannot unpack node"; exit 1; }
export PATH=$WORK/bin:$PATH
tar cf - --exclude=node_modules --exclude=./.git --exclude=./.device --exclude=./.plexus . | tar xf - -C "$WORK/repo"
dexz "$PACK/node_modules.tar.xz" | tar xf - -C "$WORK/repo" || log "node_modules.tar.xz did not unpack"
if [ -s "$PACK/llama.tar.xz" ]; then dexz "$PACK/llama.tar.xz" | tar xf - -C "$WORK/repo" || log "llama.tar.xz did not unpack"
else log "no llama.tar.xz in the pack: bench:gpu will run without the llama.cpp baseline"; fi
log "node $(node --version) at $WORK/bin/node; tree at $WORK/repo ($(du -sh "$WORK/repo" | cut -f1))"

# 2. The Vulkan loader and GL/EGL dispatch libraries (NVIDIA's Vulkan driver loads only with both).
SYSROOT=${PLEXUS_DEVICE_SYSROOT:-}
[ -n "$SYSROOT" ] || { [ "$(id -u)" = 0 ] && SYSROOT=/ || SYSROOT=$WORK/sysroot; }
mkdir -p "$SYSROOT"
for f in "$PACK"/debs/*.deb; do
  [ -e "$f" ] || { log "no .debs in the pack"; break; }
  if command -v dpkg > /dev/null; then dpkg -x "$f" "$SYSROOT"
  else (d=$(mktemp -d) && cd "$d" && ar x "$f" && tar xf data.tar.* -C "$SYSROOT"; rm -rf "$d"); fi || log "could not unpack $(basename "$f")"
done
if [ "$SYSROOT" = / ]; then ldconfig || log "ldconfig failed"
else export LD_LIBRARY_PATH=$SYSROOT/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}; fi
log "Vulkan/GL libraries unpacked into $SYSROOT"

cd "$WORK/repo"

# The bench models and GGUFs take minutes of CPU each: made in the background while the tests run.
declare -A PREP
if [[ " $STEPS " == *" bench "* ]]; then
  mkdir -p "$WORK/models"
  for shape in $SHAPES; do
    log "preparing $shape ($FORMATS) in the background"
    timeout -k 10 "$PREP_T" node scripts/bench-gpu.ts --shape "$shape" --formats "$FORMATS" --work "$WORK/models/$shape" --prepare-only > "$OUT/prepare-$shape.out" 2> "$OUT/prepare-$shape.err" &
    PREP[$shape]=$!
  done
fi

{
  echo "## nvidia-smi"; (nvidia-smi 2>&1 || echo "nvidia-smi: not available") | head -30
  echo "## uname / cpus"; uname -a; nproc; free -g | head -2
  echo "## Vulkan ICDs"; ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/nvidia/share/vulkan/icd.d 2>&1
  echo "## libvulkan"; ldconfig -p 2>/dev/null | grep -E 'libvulkan|libGLX|libEGL|libGLdispatch' || ls "$SYSROOT/usr/lib/x86_64-linux-gnu"
} > "$OUT/system.txt" 2>&1
cat "$OUT/system.txt"

# 3. The adapter. Without one, point the loader at NVIDIA's driver file if it exists and look again.
if [[ " $STEPS " == *" probe "* ]]; then
  if ! step probe 60 node scripts/device/probe.ts; then
    ICD=$(ls /usr/share/vulkan/icd.d/nvidia_icd*.json /etc/vulkan/icd.d/nvidia_icd*.json /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd*.json 2>/dev/null | head -1)
    if [ -n "$ICD" ]; then
      export VK_DRIVER_FILES=$ICD VK_ICD_FILENAMES=$ICD
      EGL=$(ls /usr/share/glvnd/egl_vendor.d/10_nvidia.json /usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json 2>/dev/null | head -1)
      [ -z "$EGL" ] || export __EGL_VENDOR_LIBRARY_FILENAMES=$EGL
      log "no adapter: retrying with VK_DRIVER_FILES=$ICD"
      step probe-icd 60 node scripts/device/probe.ts
      show probe-icd.out; show probe-icd.err 15
    fi
  fi
  show probe.out; show probe.err 15
fi

# 4. The GPU tests: the kernels', the runtime's spans and golden tokens (every backend), the swarm's
#    webgpu node; without .mocharc's whole-suite spec.
if [[ " $STEPS " == *" tests "* ]]; then
  shopt -s nullglob
  TESTS=(packages/runtime/test/webgpu/*.test.ts packages/runtime/test/span.test.ts packages/runtime/test/golden.test.ts test/webgpu*.test.ts)
  if [ ${#TESTS[@]} = 0 ]; then log "no GPU tests in the tree"
  else
    step tests "$TEST_T" node node_modules/mocha/bin/mocha.js --no-config --extension ts --reporter ./test/support/reporter.cjs --timeout 120000 --exit "${TESTS[@]}"
    show tests.out 60; show tests.err 20
  fi
fi

# 5. The decode projections alone, every shape of the matrix-vector kernel, layer by layer (GB/s).
if [[ " $STEPS " == *" matvec "* ]]; then
  # shellcheck disable=SC2086
  step matvec "$MATVEC_T" node scripts/bench-matvec.ts ${PLEXUS_MATVEC_ARGS:-}
  cp "$OUT/matvec.out" "$OUT/bench-matvec.json" 2>/dev/null
  show matvec.err 50
fi

# 6. bench:gpu per shape (node directly: npm's prebench hook would try the network).
if [[ " $STEPS " == *" bench "* ]]; then
  for shape in $SHAPES; do
    s=$(date +%s); wait "${PREP[$shape]}"; rc=$?
    log "   prepare-$shape: rc=$rc (waited $(( $(date +%s) - s ))s for it)"; show "prepare-$shape.err" 8
    # shellcheck disable=SC2086
    step "bench-$shape" "$BENCH_T" node scripts/bench-gpu.ts --shape "$shape" --formats "$FORMATS" --work "$WORK/models/$shape" ${PLEXUS_BENCH_ARGS:-}
    cp "$OUT/bench-$shape.out" "$OUT/bench-$shape.json" 2>/dev/null
    show "bench-$shape.err" 45
  done
fi

# 7. Every shape again with other settings (Plexus only): a profile, other matrix-vector shapes.
if [[ " $STEPS " == *" variants "* ]]; then
  for setting in ${PLEXUS_BENCH_VARIANTS:-PLEXUS_GPU_PROFILE=1 PLEXUS_GPU_MATVEC_SHAPE=32x8x1x2 PLEXUS_GPU_FUSED_NORMS=0}; do
    for shape in $SHAPES; do
      name="bench-$shape-$(printf %s "${setting}" | tr -c 'a-zA-Z0-9_-' '_')"
      # shellcheck disable=SC2046
      step "$name" "$BENCH_T" env $(printf %s "$setting" | tr '+' ' ') node scripts/bench-gpu.ts --shape "$shape" --formats "$FORMATS" --work "$WORK/models/$shape" --llama none --tokens 128 --batch 1,8 --batch-steps 16
      cp "$OUT/$name.out" "$OUT/$name.json" 2>/dev/null
      show "$name.err" 16
    done
  done
fi

# 8. One summary: step statuses, the probe, and each bench's JSON line.
node -e '
  const fs = require("fs"), p = require("path"), out = process.argv[1]
  const read = f => { try { return fs.readFileSync(p.join(out, f), "utf8") } catch { return "" } }
  const json = t => t.split("\n").filter(l => l.startsWith("{")).map(l => { try { return JSON.parse(l) } catch { return l } })
  const benches = {}
  for (const f of fs.readdirSync(out)) { const m = /^bench-(.+)\.json$/.exec(f); if (m) benches[m[1]] = json(read(f)).pop() ?? null }
  const s = { seconds: Number(process.argv[2]), steps: json(read("steps.jsonl")), probe: json(read("probe-icd.out") || read("probe.out")), benches }
  fs.writeFileSync(p.join(out, "summary.json"), JSON.stringify(s, null, 1) + "\n")
' "$OUT" "$(( $(date +%s) - T0 ))" || log "summary.json could not be written"
[ -z "$BACK" ] || cp "$OUT/summary.json" "$BACK/" 2>/dev/null
log "done: results in $OUT ($(ls "$OUT" | tr '\n' ' '))"
pack_back
