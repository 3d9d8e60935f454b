#!/bin/sh
# Builds packages/runtime/src/cpu/kernels.wasm and kernels-relaxed.wasm from kernels.c, ops.c and quantize.c (both are
# committed: users and CI need no C compiler). Needs clang ≥ 16 and wasm-ld for relaxed SIMD
# (Debian 12: apt-get install clang-19 lld-19); committed builds: clang 19.1.7.
set -eu
cd "$(dirname "$0")/../packages/runtime/src/cpu"
CC=${CC:-$(command -v clang-19 || echo clang)}
# Imported shared memory: one WebAssembly.Memory holds the weights, and worker threads run the
# same kernels over it. No libc, no entry point, no static data. -ffp-contract=off: relaxed SIMD
# would otherwise fuse a·b + c into relaxed_madd (FMA on some CPUs only), and both builds and all
# CPUs must give the same bits.
build () {
  "$CC" --target=wasm32 -O3 -ffp-contract=off -msimd128 "$@" -matomics -mbulk-memory -nostdlib -ffreestanding \
    -Wall -Wextra -Werror \
    -Wl,--no-entry -Wl,--import-memory -Wl,--shared-memory -Wl,--max-memory=4294967296 \
    -Wl,--export=quantize_i16 -Wl,--export=quantize_q8_K -Wl,--export=matmul_q8_0 -Wl,--export=matmul_q4_K -Wl,--export=matmul_q5_K \
    -Wl,--export=matmul_q6_K -Wl,--export=matmul_bf16 -Wl,--export=matmul_f16 -Wl,--export=matmul_f32 \
    -Wl,--export=rms_norm -Wl,--export=add_rows -Wl,--export=copy_rows -Wl,--export=rope -Wl,--export=kv_store \
    -Wl,--export=attention -Wl,--export=swiglu -Wl,--export=quantize_q4_K \
    -Wl,-z,stack-size=4096 -Wl,--global-base=4096 -Wl,--strip-all
}
# Threads share the module's one stack pointer: the kernels must not use the stack at all.
for flags in "" "-mrelaxed-simd"; do
  for src in kernels.c ops.c quantize.c; do
    if "$CC" --target=wasm32 -O3 -msimd128 $flags -S -o - $src | grep -q __stack_pointer; then
      echo "$src ($flags) uses the wasm stack; threads would share it" >&2; exit 1
    fi
  done
done
build -o kernels.wasm kernels.c ops.c quantize.c
build -mrelaxed-simd -o kernels-relaxed.wasm kernels.c ops.c quantize.c
echo "built kernels.wasm ($(wc -c < kernels.wasm) bytes), kernels-relaxed.wasm ($(wc -c < kernels-relaxed.wasm) bytes) with $("$CC" --version | head -1)"
