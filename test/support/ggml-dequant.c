// Runs one of llama.cpp's own dequantizers (from the libggml-base shared library that
// node-llama-cpp ships) on a file of blocks: ggml-dequant LIB SYMBOL N IN OUT.
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef void (*to_float_t)(const void *x, float *y, int64_t n);

int main(int argc, char **argv) {
    if (argc != 6) { fprintf(stderr, "usage: %s LIB SYMBOL N IN OUT\n", argv[0]); return 2; }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 2; }
    to_float_t fn = (to_float_t) dlsym(lib, argv[2]);
    if (fn == NULL) { fprintf(stderr, "dlsym %s: %s\n", argv[2], dlerror()); return 2; }
    int64_t n = atoll(argv[3]);
    FILE *in = fopen(argv[4], "rb");
    if (in == NULL) { perror(argv[4]); return 2; }
    fseek(in, 0, SEEK_END);
    long size = ftell(in);
    fseek(in, 0, SEEK_SET);
    void *x = malloc(size > 0 ? size : 1);
    if (fread(x, 1, size, in) != (size_t) size) { perror("read"); return 2; }
    fclose(in);
    float *y = malloc(n * sizeof(float));
    fn(x, y, n);
    FILE *out = fopen(argv[5], "wb");
    if (out == NULL || fwrite(y, sizeof(float), n, out) != (size_t) n) { perror(argv[5]); return 2; }
    fclose(out);
    return 0;
}
