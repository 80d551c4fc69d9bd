// Ray-box intersection and occupancy-grid marching: the math for one ray / one
// candidate sample (synctalk/ops/raymarch.py is the reference).
//
// Sample positions must be bit-identical to the reference, so every step that
// decides a position or a cell index is written with the *_rn helpers (one
// rounding per operation, no fused multiply-add) in the reference's order.
#pragma once

#include "synctalk/common.h"

namespace synctalk {

// Slab test of one ray against [lo, hi]. An axis with d == 0 spans every t when
// the origin lies within that axis' slab (bounds included), else none. t_near is
// clamped to >= near. A miss (t_far <= t_near) returns t_near = t_far = 0.
template <typename scalar_t>
ST_HD void ray_aabb_one(const scalar_t* o, const scalar_t* d, const scalar_t* lo,
                        const scalar_t* hi, scalar_t near, scalar_t* t_near_out,
                        scalar_t* t_far_out) {
  const scalar_t inf = INFINITY;
  scalar_t t_near = -inf, t_far = inf;
  for (int a = 0; a < 3; ++a) {
    scalar_t t_min, t_max;
    if (d[a] == scalar_t(0)) {
      const bool inside = o[a] >= lo[a] && o[a] <= hi[a];
      t_min = inside ? -inf : inf;
      t_max = inside ? inf : -inf;
    } else {
      const scalar_t t_lo = div_rn(sub_rn(lo[a], o[a]), d[a]);
      const scalar_t t_hi = div_rn(sub_rn(hi[a], o[a]), d[a]);
      t_min = t_lo < t_hi ? t_lo : t_hi;
      t_max = t_lo < t_hi ? t_hi : t_lo;
    }
    t_near = t_min > t_near ? t_min : t_near;
    t_far = t_max < t_far ? t_max : t_far;
  }
  if (near > t_near) t_near = near;
  const bool hit = t_far > t_near;
  *t_near_out = hit ? t_near : scalar_t(0);
  *t_far_out = hit ? t_far : scalar_t(0);
}

// Everything one marching call shares.
struct MarchParams {
  int64_t n_rays;
  int n_steps;   // K candidate intervals per hitting ray
  bool perturb;  // jitter positions with the uniform noise u[N, K]
  int grid_res;  // R; 0 = no occupancy grid (keep every candidate)
  bool occupancy_bits;  // the grid is a bitfield (cell c in bit c % 8 of byte c / 8; CPU)
};

// Fraction k / K of a ray's [t_near, t_far] where candidate interval k starts
// (steps = arange(K+1) / K of the reference); loops may compute these once per call.
template <typename scalar_t>
ST_HD scalar_t march_step(int k, int n_steps) {
  return div_rn(static_cast<scalar_t>(k), static_cast<scalar_t>(n_steps));
}

// A candidate from its step fractions s0 = march_step(k), s1 = march_step(k + 1):
// interval [t0, t1] = t_near + span * [s0, s1] (span = t_far - t_near) and the position
// where the field is evaluated (midpoint, or t0 + (t1 - t0) * u when jittered).
// Matches: edges = t_near + (t_far - t_near) * steps.
template <typename scalar_t>
ST_HD void candidate_from_steps(bool perturb, scalar_t t_near, scalar_t span, scalar_t s0,
                                scalar_t s1, scalar_t u, scalar_t* t0, scalar_t* t1,
                                scalar_t* t_pos) {
  *t0 = add_rn(t_near, mul_rn(span, s0));
  *t1 = add_rn(t_near, mul_rn(span, s1));
  *t_pos = perturb ? add_rn(*t0, mul_rn(sub_rn(*t1, *t0), u))
                   : mul_rn(add_rn(*t0, *t1), scalar_t(0.5));
}

// Candidate k of a ray with [t_near, t_far] (see candidate_from_steps).
template <typename scalar_t>
ST_HD void candidate_interval(const MarchParams& mp, scalar_t t_near, scalar_t t_far,
                              int k, scalar_t u, scalar_t* t0, scalar_t* t1, scalar_t* t_pos) {
  candidate_from_steps(mp.perturb, t_near, sub_rn(t_far, t_near),
                       march_step<scalar_t>(k, mp.n_steps), march_step<scalar_t>(k + 1, mp.n_steps),
                       u, t0, t1, t_pos);
}

// Cell of coordinate v (in cells) along one axis: clamp(floor(v), 0, R-1); NaN -> 0.
// Truncation is floor for v >= 0; two selects (no branches), so loops over candidates
// vectorise. R < 2^24 (the cell count fits a float exactly).
template <typename index_t, typename scalar_t>
ST_HD index_t cell_of(scalar_t v, int R) {
  scalar_t q = v >= scalar_t(0) ? v : scalar_t(0);  // NaN -> 0
  const scalar_t hi = static_cast<scalar_t>(R - 1);
  q = q < hi ? q : hi;
  return static_cast<index_t>(static_cast<int32_t>(q));
}

// C-order index ix*R^2 + iy*R + iz of the cell holding o + t*d, clamped into the
// grid (candidates lie in the box up to rounding). index_t: int32_t when R^3 < 2^31.
template <typename scalar_t, typename index_t = int64_t>
ST_HD index_t cell_index(int R, const scalar_t* lo, const scalar_t* hi, const scalar_t* o,
                         const scalar_t* d, scalar_t t) {
  index_t index = 0;
  for (int a = 0; a < 3; ++a) {
    const scalar_t p = add_rn(o[a], mul_rn(t, d[a]));
    const scalar_t unit = div_rn(sub_rn(p, lo[a]), sub_rn(hi[a], lo[a]));
    index = index * static_cast<index_t>(R) +
            cell_of<index_t>(mul_rn(unit, static_cast<scalar_t>(R)), R);
  }
  return index;
}

// Whether the extent x (= hi - lo of a box axis) is a power of two.
template <typename scalar_t>
ST_HD bool is_pow2(scalar_t x) {
  int e = 0;
  return x > scalar_t(0) && frexp(x, &e) == scalar_t(0.5);
}

// cell_index for a box whose extents are powers of two, with inv_ext[a] = 1 / (hi - lo):
// (p - lo) / ext and (p - lo) * (1 / ext) are then the correctly rounded values of the
// same real number (1 / ext is exact), so the result is cell_index's, bit for bit,
// without the divisions.
template <typename scalar_t, typename index_t = int64_t>
ST_HD index_t cell_index_pow2(int R, const scalar_t* lo, const scalar_t* inv_ext,
                              const scalar_t* o, const scalar_t* d, scalar_t t) {
  index_t index = 0;
  for (int a = 0; a < 3; ++a) {
    const scalar_t p = add_rn(o[a], mul_rn(t, d[a]));
    const scalar_t unit = mul_rn(sub_rn(p, lo[a]), inv_ext[a]);
    index = index * static_cast<index_t>(R) +
            cell_of<index_t>(mul_rn(unit, static_cast<scalar_t>(R)), R);
  }
  return index;
}

// One ray's view of the marching inputs.
template <typename scalar_t>
struct RayView {
  scalar_t t_near, t_far;
  scalar_t o[3], d[3], lo[3], hi[3];
  const scalar_t* noise;  // the ray's K uniform numbers, or nullptr (midpoints)
};

template <typename scalar_t>
ST_HD RayView<scalar_t> ray_view(const MarchParams& mp, int64_t r, const scalar_t* rays_o,
                                 const scalar_t* rays_d, const scalar_t* t_near,
                                 const scalar_t* t_far, const scalar_t* aabb,
                                 const scalar_t* noise) {
  RayView<scalar_t> v;
  v.t_near = t_near[r];
  v.t_far = t_far[r];
  for (int a = 0; a < 3; ++a) {
    v.o[a] = rays_o[3 * r + a];
    v.d[a] = rays_d[3 * r + a];
    v.lo[a] = aabb[a];
    v.hi[a] = aabb[3 + a];
  }
  v.noise = mp.perturb ? noise + r * mp.n_steps : nullptr;
  return v;
}

// Pass 1 for one ray: decide which of its K candidates are kept (keep[k] = 1, the
// ray's row of an [N, K] mask) and return how many. A candidate is kept when the ray
// hits (t_far > t_near), its interval is not empty and, with a grid, its position
// lies in an occupied cell.
template <typename scalar_t>
ST_HD int64_t march_ray_count(const MarchParams& mp, const RayView<scalar_t>& v,
                              const uint8_t* occupied, uint8_t* keep) {
  const bool hit = v.t_far > v.t_near;
  int64_t count = 0;
  for (int k = 0; k < mp.n_steps; ++k) {
    bool kept = false;
    if (hit) {
      scalar_t t0, t1, tp;
      candidate_interval(mp, v.t_near, v.t_far, k, v.noise ? v.noise[k] : scalar_t(0), &t0, &t1,
                         &tp);
      kept = t1 > t0 &&
             (mp.grid_res == 0 || occupied[cell_index(mp.grid_res, v.lo, v.hi, v.o, v.d, tp)]);
    }
    keep[k] = kept ? 1 : 0;
    count += kept ? 1 : 0;
  }
  return count;
}

// Pass 2 for one ray: emit(t0, t1, t_pos) for each kept candidate, in order.
template <typename scalar_t, typename Emit>
ST_HD void march_ray_fill(const MarchParams& mp, const RayView<scalar_t>& v, const uint8_t* keep,
                          Emit&& emit) {
  for (int k = 0; k < mp.n_steps; ++k) {
    if (!keep[k]) continue;
    scalar_t t0, t1, tp;
    candidate_interval(mp, v.t_near, v.t_far, k, v.noise ? v.noise[k] : scalar_t(0), &t0, &t1,
                       &tp);
    emit(t0, t1, tp);
  }
}

}  // namespace synctalk
