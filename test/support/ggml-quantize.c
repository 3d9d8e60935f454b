// Runs one of llama.cpp's own reference quantizers (from the libggml-base shared library that
// node-llama-cpp ships) on a file of float32 values: ggml-quantize LIB SYMBOL N IN OUT OUT_BYTES.
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef void (*from_float_t)(const float *x, void *y, int64_t k);

int main(int argc, char **argv) {
    if (argc != 7) { fprintf(stderr, "usage: %s LIB SYMBOL N IN OUT OUT_BYTES\n", argv[0]); return 2; }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 2; }
    from_float_t fn = (from_float_t) dlsym(lib, argv[2]);
    if (fn == NULL) { fprintf(stderr, "dlsym %s: %s\n", argv[2], dlerror()); return 2; }
    int64_t n = atoll(argv[3]);
    size_t outBytes = (size_t) atoll(argv[6]);
    float *x = malloc(n * sizeof(float) + 1);
    FILE *in = fopen(argv[4], "rb");
    if (in == NULL || fread(x, sizeof(float), n, in) != (size_t) n) { perror(argv[4]); return 2; }
    fclose(in);
    void *y = calloc(outBytes + 1, 1);
    fn(x, y, n);
    FILE *out = fopen(argv[5], "wb");
    if (out == NULL || fwrite(y, 1, outBytes, out) != outBytes) { perror(argv[5]); return 2; }
    fclose(out);
    return 0;
}
