// activation.cuh: the activations kernels fuse (GEMM epilogues, group norm) and their derivatives (group
// norm's backward), in one place. The MFA_ACT_* values equal mfa.h's MFA_ACTIVATION_*.
//
// Written without cancellation: 1 + tanh(u) and 1 + erf(u) cancel for negative arguments, and 1 - s
// (s a sigmoid near 1) or 1 - tanh^2 for large ones; a result near zero then lost its relative accuracy.
// So the tanh GELU and SiLU use logistic forms (0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u))), the erf GELU
// and its derivative erfc (1 + erf(-v) = erfc(v), mfa_normal_cdf), and the derivatives take sigmoid(-z) =
// 1 / (1 + exp(z)) instead of 1 - sigmoid(z). The forward uses expf for fp32 outputs (mfa_exp): with
// __expf a tanh GELU deep in its tail (x = -6.4, GELU -1.8e-12, an exponent of 28.9) came out 7.6e-5
// off, beyond fp32's tolerance, where the fp32 evaluation of its argument alone costs 4.5e-6. It
// divides with __fdividef (2 ulp, no IEEE slow path: an IEEE division made group norm's SiLU forward
// 1.5x slower than none; a divisor beyond 2^126 gives 0, the limit anyway). The derivatives of SiLU
// and the tanh GELU keep the fast forms (mfa_sigmoid_pair): group norm's backward, within its tolerance.
// The fast SiLU takes two transcendental-pipe instructions an element (ex2, rcp), and that pipe is what a
// fused SiLU costs group norm's 16-bit forward: ncu (H200, fp16 NCHW, 2x1280x64x64 and 8x512x128x128) had it
// 41-51% busy over the whole kernel against 2-3% without the activation (1.17-1.25x the time, all of it in
// the pass writing y). Measured cheaper forms: 0.5 x (1 + tanh.approx(x / 2)), one instruction of that pipe,
// made the SiLU free (2x1280x64x64: 18.8-19.2 us against 18.0 without, 22.0-22.6 with this form) but cancels
// for x < 0 (tanh.approx's documented 2^-11 against 1 + tanh: up to 0.5% at x = -3, 4% at -5, unbounded
// beyond). The accurate ones were no faster, their added instructions making that pass issue-bound instead:
// ex2 with 1 / (1 + e) by Newton steps on the FMA pipe (1.2e-5; the same time), and one reciprocal for two
// elements (1 / (d0 d1), batched inversion: 1.5 of that pipe's instructions an element; the SiLU forward and
// backward 1.04-1.12x the time of this form).
#pragma once

#define MFA_ACT_NONE 0
#define MFA_ACT_RELU 1
#define MFA_ACT_GELU_TANH 2
#define MFA_ACT_GELU_ERF 3
#define MFA_ACT_SILU 4

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#include "ptx.cuh"  // mfa_exp2_approx
#define MFA_GELU_TANH_K2 1.5957691216057308f   // 2 sqrt(2 / pi)
#define MFA_GELU_TANH_A 0.044715f
#define MFA_SQRT_HALF 0.7071067811865476f      // 1 / sqrt(2)
#define MFA_INV_SQRT_2PI 0.3989422804014327f   // 1 / sqrt(2 pi)

// e^x: expf, or with fast (for 16-bit outputs, whose rounding is 2^-11 or coarser) the hardware's
// 2^x, flushing results below 2^-126 to 0 (there 1 + e^x is 1 anyway): its 7.6e-5 in the deep tail
// rounds away there. Measured (H200, group norm's 128 MB fp16 forward): SiLU took 1.17x the time of
// none with expf, 1.01x with this.
__device__ __forceinline__ float mfa_exp(float x, bool fast) {
  return fast ? mfa_exp2_approx(x * 1.4426950408889634f) : expf(x);
}

// Phi(x) = 0.5 erfc(-x / sqrt 2), the erf GELU's factor, with erfc(z) for z >= 0 as t exp(-z^2 + P(t)),
// t = 1 / (1 + z / 2): one exponential and a reciprocal. 1 + erff(x / sqrt 2) lost all relative accuracy
// below x = -5.4 (erff rounds to -1), and erfcf spilled 28 bytes in the 128 x 256 Hopper GEMM's epilogue.
//   exact: Numerical Recipes' erfcc (P of degree 9, a Chebyshev fit, fractional error below 1.2e-7
//          everywhere); the fma keeps -z^2 + P(t) to one rounding. Against float64: 1.9e-6 at x = -9.
//   fast:  P of degree 5, our least-squares fit for z <= 9.3 (x >= -13.2; below, the result is under
//          bf16's normal range): relative error of x Phi(x) 2.0e-5 at most from -13 to 5 (float32
//          simulation). The epilogue of a 16-bit GEMM issues every instruction of it with 8 warps an SM:
//          the exact form there made fp16 2048 x 4096 x 1024 + GELU 0.82x as fast as 1 + erff (H200).
// c[0] t^(N-1) + c[1] t^(N-2) + ... + c[N-1], by Horner's rule.
template <int N>
__device__ __forceinline__ float mfa_polynomial(float t, const float (&c)[N]) {
  float p = c[0];
#pragma unroll
  for (int i = 1; i < N; ++i) p = fmaf(p, t, c[i]);
  return p;
}

__device__ __forceinline__ float mfa_normal_cdf(float x, bool fast) {
  constexpr float kFast[] = {0.235675206f, -0.729497726f, 0.497234351f, 0.242466434f, 1.02094874f, -1.2668066f};
  constexpr float kExact[] = {0.17087277f, -0.82215223f, 1.48851587f, -1.13520398f, 0.27886807f,
                              -0.18628806f, 0.09678418f,  0.37409196f, 1.00002368f,  -1.26551223f};
  const float z = fabsf(x) * MFA_SQRT_HALF;
  const float t = __fdividef(1.0f, fmaf(0.5f, z, 1.0f));
  const float p = fast ? mfa_polynomial(t, kFast) : mfa_polynomial(t, kExact);
  const float half_erfc = 0.5f * t * mfa_exp(fmaf(-z, z, p), fast);
  return x < 0.0f ? half_erfc : 1.0f - half_erfc;
}

__device__ __forceinline__ float mfa_activate(float x, int activation, bool fast = false) {
  switch (activation) {
    case MFA_ACT_RELU: return fmaxf(x, 0.0f);
    case MFA_ACT_GELU_TANH:
      return __fdividef(x, 1.0f + mfa_exp(-MFA_GELU_TANH_K2 * (x + MFA_GELU_TANH_A * x * x * x), fast));
    case MFA_ACT_GELU_ERF: return x * mfa_normal_cdf(x, fast);
    case MFA_ACT_SILU: return __fdividef(x, 1.0f + mfa_exp(-x, fast));
    default: return x;
  }
}

// s(z) and s(-z) = e s(z) with e = exp(-z): one exponential and one reciprocal, no cancellation, both the
// fast hardware forms (measured: two IEEE divisions and two expf made group norm's SiLU backward 2-4x
// slower than without, an IEEE reciprocal still 1.45x). e is capped at exp(80), where s(z) < 2e-35 and
// s(-z) rounds to 1, so that the reciprocal's argument stays in __fdividef's range; below 2^-126 it
// flushes to 0 (s(-z) < 1.2e-38: 0 within any tolerance), which spares __expf's subnormal rescaling,
// three instructions an element of the backward's first pass.
__device__ __forceinline__ void mfa_sigmoid_pair(float z, float &s, float &s_neg) {
  const float e = mfa_exp(fminf(-z, 80.0f), true);
  s = __fdividef(1.0f, 1.0f + e);
  s_neg = e * s;
}

// d activation / dx at x.
//   silu:      s(x) (1 + x s(-x))                       s: the logistic sigmoid
//   gelu_erf:  Phi(x) + x phi(x) = 0.5 erfc(-x / sqrt2) + x exp(-x^2 / 2) / sqrt(2 pi)
//   gelu_tanh: gelu = x s(2u), u = sqrt(2/pi) (x + a x^3):  s(2u) + x s(2u) s(-2u) 2 sqrt(2/pi) (1 + 3 a x^2)
__device__ __forceinline__ float mfa_activate_grad(float x, int activation) {
  switch (activation) {
    case MFA_ACT_RELU: return x > 0.0f ? 1.0f : 0.0f;
    case MFA_ACT_GELU_TANH: {
      const float two_u = MFA_GELU_TANH_K2 * (x + MFA_GELU_TANH_A * x * x * x);
      float s, s_neg;
      mfa_sigmoid_pair(two_u, s, s_neg);
      return s + x * s * s_neg * MFA_GELU_TANH_K2 * (1.0f + 3.0f * MFA_GELU_TANH_A * x * x);
    }
    case MFA_ACT_GELU_ERF:
      return mfa_normal_cdf(x, false) + x * MFA_INV_SQRT_2PI * expf(-0.5f * x * x);
    case MFA_ACT_SILU: {
      float s, s_neg;
      mfa_sigmoid_pair(x, s, s_neg);
      return s * (1.0f + x * s_neg);
    }
    default: return 1.0f;
  }
}
#endif
