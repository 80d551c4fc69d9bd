// Volume compositing of one ray's packed samples, forward and backward
// (synctalk/ops/composite.py is the reference).
//
// For the samples i of a ray, in order, with s_i = sigma_i * (t_end_i - t_start_i):
//   T_i = exp(-sum_{j<i} s_j)   transmittance before sample i (prefix sum in double)
//   a_i = 1 - exp(-s_i)         alpha (computed as -expm1(-s_i))
//   w_i = T_i * a_i             weight
//   opacity = sum_i w_i, depth = sum_i w_i * t_mid_i,
//   color = sum_i w_i * rgb_i (+ (1 - opacity) * bg), extras = sum_i w_i * extra_i.
// Backward, with G_i the total gradient reaching w_i and gT_i, ga_i those reaching
// T_i and a_i:
//   dL/ds_k = (G_k * T_k + ga_k) * exp(-s_k) - sum_{i>k} (G_i * w_i + gT_i * T_i),
// accumulated by one reverse sweep over the ray; dL/dsigma_k = dL/ds_k * delta_k.
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

// Forward for ray r, which owns samples [start, start + count).
template <typename scalar_t>
ST_HD void composite_ray_forward(const CompositeDims& dm, int64_t r, int64_t start,
                                 int64_t count, const CompositeInputs<scalar_t>& in,
                                 const CompositeOutputs<scalar_t>& out) {
  const int C = dm.n_color, K = dm.n_extras;
  double optical = 0.0;  // sum of s_j over the samples before i
  scalar_t op = scalar_t(0), dep = scalar_t(0);
  scalar_t* color = out.color + r * C;
  scalar_t* extras = out.extras + r * K;
  for (int c = 0; c < C; ++c) color[c] = scalar_t(0);
  for (int k = 0; k < K; ++k) extras[k] = scalar_t(0);
  for (int64_t i = start; i < start + count; ++i) {
    const scalar_t s = in.sigmas[i] * (in.t_ends[i] - in.t_starts[i]);
    const scalar_t T = std::exp(-static_cast<scalar_t>(optical));
    const scalar_t a = -std::expm1(-s);
    const scalar_t w = T * a;
    optical += static_cast<double>(s);
    out.weights[i] = w;
    out.trans[i] = T;
    out.alphas[i] = a;
    op += w;
    dep += w * ((in.t_starts[i] + in.t_ends[i]) * scalar_t(0.5));
    for (int c = 0; c < C; ++c) color[c] += w * in.rgbs[i * C + c];
    for (int k = 0; k < K; ++k) extras[k] += w * in.extras[i * K + k];
  }
  if (dm.has_bg) {
    for (int c = 0; c < C; ++c) color[c] += (scalar_t(1) - op) * in.bg[r * C + c];
  }
  out.opacity[r] = op;
  out.depth[r] = dep;
}

// Backward for ray r. `fwd` holds the forward's weights, trans and opacity.
template <typename scalar_t>
ST_HD void composite_ray_backward(const CompositeDims& dm, int64_t r, int64_t start,
                                  int64_t count, const CompositeInputs<scalar_t>& in,
                                  const scalar_t* weights, const scalar_t* trans,
                                  const scalar_t* opacity, const CompositeGrads<scalar_t>& g,
                                  const CompositeInputGrads<scalar_t>& grad) {
  const int C = dm.n_color, K = dm.n_extras;
  const scalar_t* g_color = g.g_color + r * C;
  const scalar_t* g_extras = g.g_extras + r * K;
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
    const scalar_t s = in.sigmas[k] * delta;
    scalar_t G = g_common + g_depth * ((in.t_starts[k] + in.t_ends[k]) * scalar_t(0.5));
    if (g.g_weights != nullptr) G += g.g_weights[k];
    for (int c = 0; c < C; ++c) {
      G += g_color[c] * in.rgbs[k * C + c];
      grad.rgbs[k * C + c] = g_color[c] * w;
    }
    for (int j = 0; j < K; ++j) {
      G += g_extras[j] * in.extras[k * K + j];
      grad.extras[k * K + j] = g_extras[j] * w;
    }
    const scalar_t T = trans[k];
    scalar_t g_local = G * T;  // d w_k / d a_k = T_k
    if (g.g_alphas != nullptr) g_local += g.g_alphas[k];
    grad.sigmas[k] = (g_local * std::exp(-s) - suffix) * delta;
    suffix += G * w;
    if (g.g_trans != nullptr) suffix += g.g_trans[k] * T;
  }
}

}  // namespace synctalk
