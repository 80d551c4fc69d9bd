// The inference loop over alive rays (synctalk/ops/alive.py is the reference): the
// next few occupied samples of one ray, and one ray's compositing of a round's samples
// into its accumulators.
//
// march_next_ray produces exactly march_rays' samples (no jitter): the same candidate
// intervals from the same step fractions, the same midpoint, the same cell index, so
// the rounds of a ray concatenated are bit-identical to its march_rays samples.
//
// composite_step_ray uses composite.h's per-sample optics. For the samples j of one
// round of a ray whose stored transmittance is T0:
//   T_j = T0 * exp(-sum_{i<j} s_i)   (the sum in double, rounded, then exp_neg)
//   sample j contributes while T_j >= early_stop (the first that does not ends the
//   round for the ray), w_j = T_j * a_j,
//   opacity += sum w, depth += sum w * t_mid, color += sum w * rgb, extras += sum w * e,
//   T0 <- T0 * exp(-sum of s over the contributing samples).
#pragma once

#include "synctalk/common.h"
#include "synctalk/composite.h"
#include "synctalk/density.h"
#include "synctalk/raymarch.h"

namespace synctalk {

// Scan ray v's candidates from `start` on and write the first k kept ones (march_ray_count's
// rule, midpoints) to t_starts[0..k) / t_ends[0..k), zeros after them. Returns how many were
// written; *next = the candidate after the k-th kept one, or mp.n_steps when fewer than k
// were left (and for a ray that misses). mp.grid_res == 0: no grid; mp.occupancy_bits: the
// grid is a bitfield. inv_ext: reciprocal box extents when they are powers of two
// (cell_index_pow2: same cells without divisions), else nullptr.
template <typename scalar_t>
ST_HD int march_next_ray(const MarchParams& mp, const RayView<scalar_t>& v,
                         const uint8_t* occupied, const scalar_t* inv_ext, int64_t start, int k,
                         scalar_t* t_starts, scalar_t* t_ends, int64_t* next) {
  int found = 0;
  int j = start < 0 ? 0 : (start > mp.n_steps ? mp.n_steps : static_cast<int>(start));
  if (v.t_far > v.t_near) {
    const scalar_t span = sub_rn(v.t_far, v.t_near);
    scalar_t s0 = march_step<scalar_t>(j, mp.n_steps);
    for (; j < mp.n_steps && found < k; ++j) {
      const scalar_t s1 = march_step<scalar_t>(j + 1, mp.n_steps);
      scalar_t t0, t1, tp;
      candidate_from_steps(false, v.t_near, span, s0, s1, scalar_t(0), &t0, &t1, &tp);
      s0 = s1;
      bool kept = t1 > t0;
      if (kept && mp.grid_res > 0) {
        const int64_t cell =
            inv_ext != nullptr ? cell_index_pow2<scalar_t>(mp.grid_res, v.lo, inv_ext, v.o, v.d, tp)
                               : cell_index<scalar_t>(mp.grid_res, v.lo, v.hi, v.o, v.d, tp);
        kept = mp.occupancy_bits ? bit_of(occupied, cell) : occupied[cell] != 0;
      }
      if (kept) {
        t_starts[found] = t0;
        t_ends[found] = t1;
        ++found;
      }
    }
  }
  *next = found < k ? static_cast<int64_t>(mp.n_steps) : static_cast<int64_t>(j);
  for (int f = found; f < k; ++f) {
    t_starts[f] = scalar_t(0);
    t_ends[f] = scalar_t(0);
  }
  return found;
}

// Sizes of one compositing step.
struct StepDims {
  int64_t n_alive;  // A
  int64_t n_rays;   // N, rows of the state
  int k;            // row stride of the per-sample arrays
  int n_color;      // C
  int n_extras;     // E (0 when none)
  bool accumulate;  // false: weights only (a probe), the state is left untouched
};

// One round's per-sample inputs ([A, k], [A, k, C], [A, k, E]) and the rays they belong to.
template <typename scalar_t>
struct StepInputs {
  const scalar_t* sigmas;
  const scalar_t* rgbs;    // nullptr when !accumulate
  const scalar_t* t_starts;
  const scalar_t* t_ends;
  const scalar_t* extras;  // nullptr when E == 0
  const int64_t* count;    // [A] samples per alive ray (clamped to [0, k])
  const int64_t* alive;    // [A] rows of the state
};

// The per-ray state, [N] / [N, C] / [N, E], updated in place.
template <typename scalar_t>
struct RayAccumulators {
  scalar_t* trans;
  scalar_t* opacity;
  scalar_t* depth;
  scalar_t* color;
  scalar_t* extras;  // nullptr when E == 0
};

// Composite alive ray a's samples of the round (see the top of this file); weights[a, :]
// gets the weight of every entry (0 past the last contributing sample). A row outside
// [0, N) gets zero weights and changes nothing.
template <typename scalar_t>
ST_HD void composite_step_ray(const StepDims& dm, int64_t a, scalar_t early_stop,
                              const StepInputs<scalar_t>& in, const RayAccumulators<scalar_t>& acc,
                              scalar_t* weights) {
  const int K = dm.k;
  scalar_t* w = weights + a * K;
  const int64_t r = in.alive[a];
  int64_t n = in.count[a];
  n = n < 0 ? 0 : (n > K ? K : n);
  if (r < 0 || r >= dm.n_rays) n = 0;
  const scalar_t T0 = n > 0 ? acc.trans[r] : scalar_t(0);
  double optical = 0.0;  // sum of s over the contributing samples so far
  int used = 0;
  for (; used < n; ++used) {
    const int64_t i = a * K + used;
    const scalar_t T = T0 * transmittance_of<scalar_t>(optical);
    if (!(T >= early_stop)) break;
    const SampleOptics<scalar_t> o = sample_optics(in.sigmas[i], in.t_starts[i], in.t_ends[i]);
    w[used] = T * o.a;
    optical += static_cast<double>(o.s);
  }
  for (int j = used; j < K; ++j) w[j] = scalar_t(0);
  if (!dm.accumulate || n == 0) return;
  scalar_t op = scalar_t(0), dep = scalar_t(0);
  for (int j = 0; j < used; ++j) {
    const int64_t i = a * K + j;
    op += w[j];
    dep += w[j] * ((in.t_starts[i] + in.t_ends[i]) * scalar_t(0.5));
  }
  for (int c = 0; c < dm.n_color; ++c) {
    scalar_t sum = scalar_t(0);
    for (int j = 0; j < used; ++j) sum += w[j] * in.rgbs[(a * K + j) * dm.n_color + c];
    acc.color[r * dm.n_color + c] += sum;
  }
  for (int e = 0; e < dm.n_extras; ++e) {
    scalar_t sum = scalar_t(0);
    for (int j = 0; j < used; ++j) sum += w[j] * in.extras[(a * K + j) * dm.n_extras + e];
    acc.extras[r * dm.n_extras + e] += sum;
  }
  acc.opacity[r] += op;
  acc.depth[r] += dep;
  acc.trans[r] = T0 * transmittance_of<scalar_t>(optical);
}

}  // namespace synctalk
