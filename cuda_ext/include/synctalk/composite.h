// Volume compositing of one ray's packed samples, forward and backward
// (synctalk/ops/composite.py is the reference).
//
// For the samples i of a ray, in order, with s_i = sigma_i * (t_end_i - t_start_i):
//   T_i = exp(-sum_{j<i} s_j)   transmittance before sample i (prefix sum in double,
//                               rounded to scalar_t, then exp_neg)
//   a_i = 1 - exp(-s_i)         alpha (one_minus_exp_neg: no cancellation for small s)
//   w_i = T_i * a_i             weight
//   opacity = sum_i w_i, depth = sum_i w_i * t_mid_i,
//   color = sum_i w_i * rgb_i (+ (1 - opacity) * bg), extras = sum_i w_i * extra_i.
// Backward, with G_i the total gradient reaching w_i and gT_i, ga_i those reaching
// T_i and a_i:
//   dL/ds_k = (G_k * T_k + ga_k) * exp(-s_k) - sum_{i>k} (G_i * w_i + gT_i * T_i),
// accumulated by one reverse sweep over the ray; dL/dsigma_k = dL/ds_k * delta_k. The
// forward keeps exp(-s_k) for it.
//
// The per-sample and per-ray pieces below are what both builds run: the CUDA kernels
// do a whole ray per thread (composite_ray_forward / _backward); the CPU loops split
// the forward into vectorised passes over all samples (sample_optics, then exp_neg
// of the optical depths) and sequential passes over each ray's samples (the prefix
// sums and composite_ray_sums).
#pragma once

#include <cmath>

#include "synctalk/common.h"

namespace synctalk {

struct CompositeDims {
  int64_t n_rays;
  int64_t n_samples;
  int n_color;    // C
  int n_extras;   // K (0 when none)
  bool has_bg;
};

// Per-sample inputs of the packed samples (all [S] or [S, C] / [S, K]).
template <typename scalar_t>
struct CompositeInputs {
  const scalar_t* sigmas;
  const scalar_t* rgbs;
  const scalar_t* t_starts;
  const scalar_t* t_ends;
  const scalar_t* extras;  // nullptr when K == 0
  const scalar_t* bg;      // [N, C], nullptr without background
};

// Forward outputs ([S] per sample, [N] / [N, C] / [N, K] per ray).
template <typename scalar_t>
struct CompositeOutputs {
  scalar_t* weights;
  scalar_t* trans;
  scalar_t* alphas;
  scalar_t* expneg;  // [S] exp(-s_i), kept for the backward
  scalar_t* opacity;
  scalar_t* depth;
  scalar_t* color;
  scalar_t* extras;
};

// Incoming gradients of the outputs; g_weights / g_trans / g_alphas may be nullptr
// when those outputs did not reach the loss.
template <typename scalar_t>
struct CompositeGrads {
  const scalar_t* g_weights;
  const scalar_t* g_trans;
  const scalar_t* g_alphas;
  const scalar_t* g_opacity;
  const scalar_t* g_depth;
  const scalar_t* g_color;
  const scalar_t* g_extras;
};

// Gradients of the inputs.
template <typename scalar_t>
struct CompositeInputGrads {
  scalar_t* sigmas;
  scalar_t* rgbs;
  scalar_t* extras;
  scalar_t* bg;  // nullptr without background
};

// The optics of one sample: thickness s = sigma * delta, exp(-s) and alpha = 1 - exp(-s).
template <typename scalar_t>
struct SampleOptics {
  scalar_t s, e, a;
};
template <typename scalar_t>
ST_HD SampleOptics<scalar_t> sample_optics(scalar_t sigma, scalar_t t_start, scalar_t t_end) {
  const scalar_t s = sigma * (t_end - t_start);
  const scalar_t e = exp_neg(s);
  return {s, e, one_minus_exp_neg(s, e)};
}

// Transmittance from the optical depth accumulated before the sample.
template <typename scalar_t>
ST_HD scalar_t transmittance_of(double optical) {
  return exp_neg(static_cast<scalar_t>(optical));
}

// Per-ray sums of ray r (samples [start, start + count)) from the weights in
// out.weights. CT / KT as for composite_ray_backward.
template <int CT, int KT, typename scalar_t>
ST_HD void composite_ray_sums(const CompositeDims& dm, int64_t r, int64_t start, int64_t count,
                              const CompositeInputs<scalar_t>& in,
                              const CompositeOutputs<scalar_t>& out) {
  constexpr bool kFixed = CT > 0 && KT >= 0;
  constexpr int kC = kFixed ? CT : 1, kK = kFixed && KT > 0 ? KT : 1;
  const int C = kFixed ? CT : dm.n_color, K = kFixed ? KT : dm.n_extras;
  scalar_t op = scalar_t(0), dep = scalar_t(0);
  scalar_t* color = out.color + r * C;
  scalar_t* extras = out.extras + r * K;
  scalar_t ac[kC], ae[kK];  // accumulators in registers when C and K are fixed
  for (int c = 0; c < kC; ++c) ac[c] = scalar_t(0);
  for (int j = 0; j < kK; ++j) ae[j] = scalar_t(0);
  if (!kFixed) {
    for (int c = 0; c < C; ++c) color[c] = scalar_t(0);
    for (int j = 0; j < K; ++j) extras[j] = scalar_t(0);
  }
  for (int64_t i = start; i < start + count; ++i) {
    const scalar_t w = out.weights[i];
    op += w;
    dep += w * ((in.t_starts[i] + in.t_ends[i]) * scalar_t(0.5));
    for (int c = 0; c < C; ++c) {
      if (kFixed) {
        ac[c] += w * in.rgbs[i * C + c];
      } else {
        color[c] += w * in.rgbs[i * C + c];
      }
    }
    for (int j = 0; j < K; ++j) {
      if (kFixed) {
        ae[j] += w * in.extras[i * K + j];
      } else {
        extras[j] += w * in.extras[i * K + j];
      }
    }
  }
  if (kFixed) {
    for (int c = 0; c < C; ++c) color[c] = ac[c];
    for (int j = 0; j < K; ++j) extras[j] = ae[j];
  }
  if (dm.has_bg) {
    for (int c = 0; c < C; ++c) color[c] += (scalar_t(1) - op) * in.bg[r * C + c];
  }
  out.opacity[r] = op;
  out.depth[r] = dep;
}

// Forward for ray r, which owns samples [start, start + count), in one sweep.
template <typename scalar_t>
ST_HD void composite_ray_forward(const CompositeDims& dm, int64_t r, int64_t start,
                                 int64_t count, const CompositeInputs<scalar_t>& in,
                                 const CompositeOutputs<scalar_t>& out) {
  double optical = 0.0;  // sum of s_j over the samples before i
  for (int64_t i = start; i < start + count; ++i) {
    const SampleOptics<scalar_t> o = sample_optics(in.sigmas[i], in.t_starts[i], in.t_ends[i]);
    const scalar_t T = transmittance_of<scalar_t>(optical);
    optical += static_cast<double>(o.s);
    out.weights[i] = T * o.a;
    out.trans[i] = T;
    out.alphas[i] = o.a;
    out.expneg[i] = o.e;
  }
  composite_ray_sums<0, -1>(dm, r, start, count, in, out);
}

// Backward for ray r, from the forward's weights, trans, expneg and opacity. CT / KT
// are the colour / extra channel counts when known at compile time (their per-ray
// gradients then live in registers), 0 / -1 to read them from dm.
template <int CT, int KT, typename scalar_t>
ST_HD void composite_ray_backward(const CompositeDims& dm, int64_t r, int64_t start,
                                  int64_t count, const CompositeInputs<scalar_t>& in,
                                  const scalar_t* weights, const scalar_t* trans,
                                  const scalar_t* expneg, const scalar_t* opacity,
                                  const CompositeGrads<scalar_t>& g,
                                  const CompositeInputGrads<scalar_t>& grad) {
  constexpr bool kFixed = CT > 0 && KT >= 0;
  constexpr int kC = kFixed ? CT : 1, kK = kFixed && KT > 0 ? KT : 1;
  const int C = kFixed ? CT : dm.n_color, K = kFixed ? KT : dm.n_extras;
  const scalar_t* g_color = g.g_color + r * C;
  const scalar_t* g_extras = g.g_extras + r * K;
  scalar_t gc[kC], ge[kK];  // the per-ray gradients, when C and K are fixed
  if (kFixed) {
    for (int c = 0; c < C; ++c) gc[c] = g_color[c];
    for (int j = 0; j < K; ++j) ge[j] = g_extras[j];
  }
  // Colour's (1 - opacity) * bg sends -g_color . bg to every weight of the ray.
  scalar_t g_bg_dot = scalar_t(0);
  if (dm.has_bg) {
    for (int c = 0; c < C; ++c) {
      g_bg_dot += g_color[c] * in.bg[r * C + c];
      grad.bg[r * C + c] = g_color[c] * (scalar_t(1) - opacity[r]);
    }
  }
  const scalar_t g_common = g.g_opacity[r] - g_bg_dot;
  const scalar_t g_depth = g.g_depth[r];
  scalar_t suffix = scalar_t(0);  // sum_{i>k} (G_i * w_i + gT_i * T_i)
  for (int64_t k = start + count - 1; k >= start; --k) {
    const scalar_t w = weights[k];
    const scalar_t delta = in.t_ends[k] - in.t_starts[k];
    scalar_t G = g_common + g_depth * ((in.t_starts[k] + in.t_ends[k]) * scalar_t(0.5));
    if (g.g_weights != nullptr) G += g.g_weights[k];
    for (int c = 0; c < C; ++c) {
      const scalar_t gcc = kFixed ? gc[c] : g_color[c];
      G += gcc * in.rgbs[k * C + c];
      grad.rgbs[k * C + c] = gcc * w;
    }
    for (int j = 0; j < K; ++j) {
      const scalar_t gej = kFixed ? ge[j] : g_extras[j];
      G += gej * in.extras[k * K + j];
      grad.extras[k * K + j] = gej * w;
    }
    const scalar_t T = trans[k];
    scalar_t g_local = G * T;  // d w_k / d a_k = T_k
    if (g.g_alphas != nullptr) g_local += g.g_alphas[k];
    grad.sigmas[k] = (g_local * expneg[k] - suffix) * delta;
    suffix += G * w;
    if (g.g_trans != nullptr) suffix += g.g_trans[k] * T;
  }
}

}  // namespace synctalk
