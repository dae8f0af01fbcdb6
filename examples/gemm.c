/* gemm.c: a plain C program that multiplies two matrices with MFA and checks the result against a CPU
 * loop. Build: part of the CMake build (example_gemm). Run: ./example_gemm [m n k]. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "mfa.h"

#define CHECK(call)                                                                             \
  do {                                                                                          \
    mfa_status status_ = (call);                                                                \
    if (status_ != MFA_STATUS_SUCCESS) {                                                        \
      fprintf(stderr, "%s failed: %s: %s\n", #call, mfa_status_string(status_), mfa_last_error_message()); \
      exit(1);                                                                                  \
    }                                                                                           \
  } while (0)

static mfa_tensor matrix(void *data, int64_t *shape) {
  mfa_tensor t = {data, {MFA_DEVICE_CUDA, 0}, 2, {MFA_DTYPE_CODE_FLOAT, 32, 1}, shape, NULL, 0};
  return t;
}

int main(int argc, char **argv) {
  const int64_t m = argc > 3 ? atoll(argv[1]) : 300, n = argc > 3 ? atoll(argv[2]) : 200,
                k = argc > 3 ? atoll(argv[3]) : 500;
  printf("MFA %s: C = A * B with m=%lld n=%lld k=%lld (fp32, accurate tensor-core mode)\n", mfa_version_string(),
         (long long)m, (long long)n, (long long)k);

  mfa_context *context = NULL;
  mfa_context_options options = MFA_CONTEXT_OPTIONS_INIT;
  CHECK(mfa_context_create(&options, &context));
  mfa_device_info info = MFA_DEVICE_INFO_INIT;
  CHECK(mfa_context_get_info(context, &info));
  printf("device: %s (%s, %d SMs)\n", info.name, info.arch, info.sm_count);

  float *a = malloc(sizeof(float) * m * k), *b = malloc(sizeof(float) * k * n), *c = malloc(sizeof(float) * m * n);
  srand(1);
  for (int64_t i = 0; i < m * k; ++i) a[i] = (float)rand() / RAND_MAX - 0.5f;
  for (int64_t i = 0; i < k * n; ++i) b[i] = (float)rand() / RAND_MAX - 0.5f;

  void *da, *db, *dc;
  CHECK(mfa_buffer_alloc(context, sizeof(float) * m * k, &da));
  CHECK(mfa_buffer_alloc(context, sizeof(float) * k * n, &db));
  CHECK(mfa_buffer_alloc(context, sizeof(float) * m * n, &dc));
  CHECK(mfa_copy_to_device(context, da, a, sizeof(float) * m * k));
  CHECK(mfa_copy_to_device(context, db, b, sizeof(float) * k * n));
  CHECK(mfa_buffer_fill_u8(context, dc, 0xff, sizeof(float) * m * n)); /* NaN: every element must be written */

  mfa_gemm_descriptor desc = MFA_GEMM_DESCRIPTOR_INIT;
  desc.m = m, desc.n = n, desc.k = k;
  desc.a_dtype = desc.b_dtype = desc.c_dtype = MFA_DTYPE_F32;
  mfa_gemm_pipeline *pipeline = NULL;
  CHECK(mfa_gemm_pipeline_create(context, &desc, &pipeline));
  mfa_pipeline_info pinfo = MFA_PIPELINE_INFO_INIT;
  CHECK(mfa_gemm_pipeline_get_info(pipeline, &pinfo));
  printf("variant: %s (%.1f ms to compile or load)\n", pinfo.variant, pinfo.compile_ms);

  int64_t shape_a[2] = {m, k}, shape_b[2] = {k, n}, shape_c[2] = {m, n};
  mfa_tensor ta = matrix(da, shape_a), tb = matrix(db, shape_b), tc = matrix(dc, shape_c);
  CHECK(mfa_gemm_encode(pipeline, NULL, &ta, &tb, &tc, NULL, NULL, 0));
  CHECK(mfa_context_synchronize(context));
  CHECK(mfa_copy_to_host(context, c, dc, sizeof(float) * m * n));

  double max_error = 0.0;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double expected = 0.0, magnitude = 0.0;
      for (int64_t p = 0; p < k; ++p) {
        expected += (double)a[i * k + p] * b[p * n + j];
        magnitude += fabs((double)a[i * k + p] * b[p * n + j]);
      }
      const double error = fabs(c[i * n + j] - expected) / (magnitude + 1e-30);
      if (isnan(error) || error > max_error) max_error = error; /* a NaN stays: nothing compares above it */
    }
  const int ok = max_error < 1e-5;
  printf("max error relative to sum |a*b|: %.3g -> %s\n", max_error, ok ? "PASS" : "FAIL");

  CHECK(mfa_gemm_pipeline_destroy(pipeline));
  CHECK(mfa_buffer_free(context, da));
  CHECK(mfa_buffer_free(context, db));
  CHECK(mfa_buffer_free(context, dc));
  CHECK(mfa_context_destroy(context));
  free(a), free(b), free(c);
  return ok ? 0 : 1;
}
