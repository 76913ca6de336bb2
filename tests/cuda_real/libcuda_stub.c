/* A stand-in libcuda.so.1 for the real cuda-bindings wheels (tests/test_cuda_real_bindings.py).
 * cuda-bindings 12.8-13.x dlopen libcuda.so.1 and resolve every driver function through
 * cuGetProcAddress_v2; this library answers with the few functions the TensorRT backend calls,
 * implemented on host memory (device memory is malloc'd, copies are memcpy), and a function
 * returning CUDA_SUCCESS for every other name. STUB_CUDA_FAIL=cuName=CODE makes cuName return
 * CODE, to check how the bindings hand an error back. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
static __thread int depth; /* this thread's context stack depth */

static CUresult failing(const char *name) {
  const char *spec = getenv("STUB_CUDA_FAIL");
  size_t n = strlen(name);
  if (spec && strncmp(spec, name, n) == 0 && spec[n] == '=') return atoi(spec + n + 1);
  return 0;
}
#define FAIL(name) do { CUresult r_ = failing(name); if (r_) return r_; } while (0)

static CUresult ok(void) { return 0; }
static CUresult cuInit(unsigned flags) { FAIL("cuInit"); return 0; }
static CUresult cuDriverGetVersion(int *v) { *v = 12080; return 0; }
static CUresult cuDeviceGet(int *dev, int ordinal) {
  FAIL("cuDeviceGet");
  if (ordinal != 0) return 101; /* CUDA_ERROR_INVALID_DEVICE */
  *dev = ordinal;
  return 0;
}
static CUresult cuDeviceGetName(char *name, int len, int dev) {
  strncpy(name, "Stub GPU", len);
  return 0;
}
static CUresult cuDeviceGetAttribute(int *pi, int attrib, int dev) {
  *pi = attrib == 75 ? 8 : attrib == 76 ? 7 : 0;
  return 0;
}
static CUresult cuDevicePrimaryCtxRetain(void **ctx, int dev) { *ctx = (void *)0x1000; return 0; }
static CUresult cuCtxPushCurrent(void *ctx) { depth++; return 0; }
static CUresult cuCtxPopCurrent(void **ctx) {
  if (depth == 0) return 201; /* CUDA_ERROR_INVALID_CONTEXT */
  depth--;
  if (ctx) *ctx = (void *)0x1000;
  return 0;
}
static CUresult cuMemAlloc(uint64_t *p, size_t n) {
  FAIL("cuMemAlloc");
  *p = (uint64_t)(uintptr_t)malloc(n);
  return 0;
}
static CUresult cuMemFree(uint64_t p) { free((void *)(uintptr_t)p); return 0; }
static CUresult cuMemHostAlloc(void **p, size_t n, unsigned flags) { *p = malloc(n); return 0; }
static CUresult cuMemFreeHost(void *p) { free(p); return 0; }
static CUresult cuMemcpyHtoDAsync(uint64_t dst, const void *src, size_t n, void *stream) {
  FAIL("cuMemcpyHtoDAsync");
  memcpy((void *)(uintptr_t)dst, src, n);
  return 0;
}
static CUresult cuMemcpyDtoHAsync(void *dst, uint64_t src, size_t n, void *stream) {
  memcpy(dst, (const void *)(uintptr_t)src, n);
  return 0;
}
static CUresult cuStreamCreate(void **s, unsigned flags) { *s = (void *)0xBEEF; return 0; }
static CUresult cuEventCreate(void **e, unsigned flags) { *e = (void *)0xE1; return 0; }
static CUresult cuEventElapsedTime(float *ms, void *a, void *b) { *ms = 1.5f; return 0; }
static CUresult cuStreamEndCapture(void *s, void **g) { *g = (void *)0x6000; return 0; }
static CUresult cuGraphInstantiate(void **e, void *g, unsigned long long flags) {
  FAIL("cuGraphInstantiate");
  *e = (void *)0x7000;
  return 0;
}
static CUresult cuGetErrorString(CUresult e, const char **s) { *s = "stub error"; return 0; }

static const struct { const char *name; void *fn; } table[] = {
  {"cuInit", cuInit}, {"cuDriverGetVersion", cuDriverGetVersion},
  {"cuDeviceGet", cuDeviceGet}, {"cuDeviceGetName", cuDeviceGetName},
  {"cuDeviceGetAttribute", cuDeviceGetAttribute},
  {"cuDevicePrimaryCtxRetain", cuDevicePrimaryCtxRetain},
  {"cuCtxPushCurrent", cuCtxPushCurrent}, {"cuCtxPopCurrent", cuCtxPopCurrent},
  {"cuMemAlloc", cuMemAlloc}, {"cuMemFree", cuMemFree}, {"cuMemHostAlloc", cuMemHostAlloc},
  {"cuMemFreeHost", cuMemFreeHost}, {"cuMemcpyHtoDAsync", cuMemcpyHtoDAsync},
  {"cuMemcpyDtoHAsync", cuMemcpyDtoHAsync}, {"cuStreamCreate", cuStreamCreate},
  {"cuEventCreate", cuEventCreate}, {"cuEventElapsedTime", cuEventElapsedTime},
  {"cuStreamEndCapture", cuStreamEndCapture}, {"cuGraphInstantiate", cuGraphInstantiate},
  {"cuGraphInstantiateWithFlags", cuGraphInstantiate}, {"cuGetErrorString", cuGetErrorString},
};

CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version, uint64_t flags,
                             int *status) {
  *pfn = (void *)ok;
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
    if (strcmp(symbol, table[i].name) == 0) *pfn = table[i].fn;
  if (status) *status = 0; /* CU_GET_PROC_ADDRESS_SUCCESS */
  return 0;
}
CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, uint64_t flags) {
  return cuGetProcAddress_v2(symbol, pfn, version, flags, 0);
}
