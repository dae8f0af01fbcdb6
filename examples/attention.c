/* attention.c: a plain C program that runs causal attention with MFA (fp16, GQA 4:1, seq_q != seq_k) and
 * checks it, and its log-sum-exp, against a CPU loop in double. Build: part of the CMake build
 * (example_attention). Run: ./example_attention [seq_q seq_k head_dim]. */
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

/* IEEE half <-> float by hand: C has no portable half type. */
static uint16_t to_half(float x) {
  union { float f; uint32_t u; } v = {x};
  const uint32_t sign = (v.u >> 16) & 0x8000u;
  const int exponent = (int)((v.u >> 23) & 0xff) - 127 + 15;
  uint32_t mantissa = v.u & 0x7fffffu;
  if (exponent <= 0) return (uint16_t)sign; /* the inputs below stay far from subnormals */
  if (exponent >= 31) return (uint16_t)(sign | 0x7c00u);
  mantissa += 0x1000u; /* round to nearest */
  if (mantissa & 0x800000u) return (uint16_t)(sign | ((uint32_t)(exponent + 1) << 10));
  return (uint16_t)(sign | ((uint32_t)exponent << 10) | (mantissa >> 13));
}
static double from_half(uint16_t h) {
  const int exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  const double sign = (h & 0x8000) ? -1.0 : 1.0;
  if (exponent == 31) return mantissa ? NAN : sign * INFINITY;
  if (exponent == 0) return sign * ldexp(mantissa, -24);
  return sign * ldexp(1024 + mantissa, exponent - 25);
}

static mfa_tensor tensor(void *data, int ndim, int64_t *shape, uint8_t code, uint8_t bits) {
  mfa_tensor t = {data, {MFA_DEVICE_CUDA, 0}, ndim, {code, bits, 1}, shape, NULL, 0};
  return t;
}

int main(int argc, char **argv) {
  const int64_t batch = 2, heads_q = 8, heads_kv = 2;
  const int64_t seq_q = argc > 3 ? atoll(argv[1]) : 100, seq_k = argc > 3 ? atoll(argv[2]) : 300,
                d = argc > 3 ? atoll(argv[3]) : 64;
  printf("MFA %s: causal attention, batch %lld, heads %lld/%lld, seq_q %lld, seq_k %lld, head_dim %lld (fp16)\n",
         mfa_version_string(), (long long)batch, (long long)heads_q, (long long)heads_kv, (long long)seq_q,
         (long long)seq_k, (long long)d);

  mfa_context *context = NULL;
  mfa_context_options options = MFA_CONTEXT_OPTIONS_INIT;
  CHECK(mfa_context_create(&options, &context));

  const int64_t nq = batch * seq_q * heads_q * d, nk = batch * seq_k * heads_kv * d, nl = batch * heads_q * seq_q;
  uint16_t *q = malloc(2 * nq), *k = malloc(2 * nk), *v = malloc(2 * nk), *o = malloc(2 * nq);
  float *lse = malloc(4 * nl);
  srand(1);
  for (int64_t i = 0; i < nq; ++i) q[i] = to_half(2.0f * rand() / RAND_MAX - 1.0f);
  for (int64_t i = 0; i < nk; ++i) k[i] = to_half(2.0f * rand() / RAND_MAX - 1.0f);
  for (int64_t i = 0; i < nk; ++i) v[i] = to_half(2.0f * rand() / RAND_MAX - 1.0f);

  void *dq, *dk, *dv, *dout, *dlse;
  CHECK(mfa_buffer_alloc(context, 2 * nq, &dq));
  CHECK(mfa_buffer_alloc(context, 2 * nk, &dk));
  CHECK(mfa_buffer_alloc(context, 2 * nk, &dv));
  CHECK(mfa_buffer_alloc(context, 2 * nq, &dout));
  CHECK(mfa_buffer_alloc(context, 4 * nl, &dlse));
  CHECK(mfa_copy_to_device(context, dq, q, 2 * nq));
  CHECK(mfa_copy_to_device(context, dk, k, 2 * nk));
  CHECK(mfa_copy_to_device(context, dv, v, 2 * nk));
  CHECK(mfa_buffer_fill_u8(context, dout, 0xff, 2 * nq)); /* NaN: every element must be written */
  CHECK(mfa_buffer_fill_u8(context, dlse, 0xff, 4 * nl));

  mfa_attention_descriptor desc = MFA_ATTENTION_DESCRIPTOR_INIT;
  desc.batch = batch, desc.seq_q = seq_q, desc.seq_k = seq_k, desc.heads_q = heads_q, desc.heads_kv = heads_kv;
  desc.head_dim_qk = desc.head_dim_v = d;
  desc.window_right = 0; /* causal, aligned to the bottom right */
  desc.return_lse = 1;
  mfa_attention_pipeline *pipeline = NULL;
  CHECK(mfa_attention_pipeline_create(context, &desc, &pipeline));
  mfa_pipeline_info pinfo = MFA_PIPELINE_INFO_INIT;
  CHECK(mfa_attention_pipeline_get_info(pipeline, &pinfo));
  printf("variant: %s (%.1f ms to compile or load)\n", pinfo.variant, pinfo.compile_ms);
  void *workspace = NULL;
  if (pinfo.workspace_bytes) CHECK(mfa_buffer_alloc(context, pinfo.workspace_bytes, &workspace));

  int64_t shape_q[4] = {batch, seq_q, heads_q, d}, shape_k[4] = {batch, seq_k, heads_kv, d},
          shape_l[3] = {batch, heads_q, seq_q};
  mfa_tensor tq = tensor(dq, 4, shape_q, MFA_DTYPE_CODE_FLOAT, 16), tk = tensor(dk, 4, shape_k, MFA_DTYPE_CODE_FLOAT, 16),
             tv = tensor(dv, 4, shape_k, MFA_DTYPE_CODE_FLOAT, 16), to = tensor(dout, 4, shape_q, MFA_DTYPE_CODE_FLOAT, 16),
             tl = tensor(dlse, 3, shape_l, MFA_DTYPE_CODE_FLOAT, 32);
  mfa_attention_tensors tensors = MFA_ATTENTION_TENSORS_INIT;
  tensors.q = &tq, tensors.k = &tk, tensors.v = &tv, tensors.o = &to, tensors.lse = &tl;
  CHECK(mfa_attention_encode(pipeline, NULL, &tensors, workspace, pinfo.workspace_bytes));
  CHECK(mfa_context_synchronize(context));
  CHECK(mfa_copy_to_host(context, o, dout, 2 * nq));
  CHECK(mfa_copy_to_host(context, lse, dlse, 4 * nl));

  double max_error = 0.0, max_lse_error = 0.0;
  double *scores = malloc(sizeof(double) * (seq_k > 0 ? seq_k : 1));
  const double scale = 1.0 / sqrt((double)d);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < heads_q; ++h)
      for (int64_t i = 0; i < seq_q; ++i) {
        const int64_t kv_head = h / (heads_q / heads_kv), last = i + seq_k - seq_q; /* keys 0..last visible */
        double row_max = -INFINITY, total = 0.0;
        for (int64_t j = 0; j <= last && j < seq_k; ++j) {
          double dot = 0.0;
          for (int64_t c = 0; c < d; ++c)
            dot += from_half(q[((b * seq_q + i) * heads_q + h) * d + c]) *
                   from_half(k[((b * seq_k + j) * heads_kv + kv_head) * d + c]);
          scores[j] = dot * scale;
          if (scores[j] > row_max) row_max = scores[j];
        }
        for (int64_t j = 0; j <= last && j < seq_k; ++j) total += exp(scores[j] - row_max);
        const double expected_lse = total > 0 ? row_max + log(total) : -INFINITY;
        const double got_lse = lse[(b * heads_q + h) * seq_q + i];
        if (isinf(expected_lse)) {
          if (!(isinf(got_lse) && got_lse < 0)) max_lse_error = INFINITY;
        } else {
          const double e = fabs(got_lse - expected_lse);
          if (isnan(e) || e > max_lse_error) max_lse_error = e;
        }
        for (int64_t c = 0; c < d; ++c) {
          double expected = 0.0;
          for (int64_t j = 0; j <= last && j < seq_k; ++j)
            expected += exp(scores[j] - row_max) / total * from_half(v[((b * seq_k + j) * heads_kv + kv_head) * d + c]);
          const double error = fabs(from_half(o[((b * seq_q + i) * heads_q + h) * d + c]) - expected);
          if (isnan(error) || error > max_error) max_error = error; /* a NaN stays: nothing compares above it */
        }
      }
  const int ok = max_error < 4e-3 && max_lse_error < 1e-3;
  printf("max |o - reference|: %.3g, max |lse - reference|: %.3g -> %s\n", max_error, max_lse_error,
         ok ? "PASS" : "FAIL");

  CHECK(mfa_attention_pipeline_destroy(pipeline));
  if (workspace) CHECK(mfa_buffer_free(context, workspace));
  CHECK(mfa_buffer_free(context, dq));
  CHECK(mfa_buffer_free(context, dk));
  CHECK(mfa_buffer_free(context, dv));
  CHECK(mfa_buffer_free(context, dout));
  CHECK(mfa_buffer_free(context, dlse));
  CHECK(mfa_context_destroy(context));
  free(q), free(k), free(v), free(o), free(lse), free(scores);
  return ok ? 0 : 1;
}
