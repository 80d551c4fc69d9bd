// Multi-resolution dense / hash grid encoding: the math for one point at one level.
//
// Contract (synctalk/ops/grid.py is the reference): level l has `res` cells per axis
// and (res+1)^D vertices. A point x, clamped into [0,1]^D, maps to p = x*res; its
// cell corner is floor(p) clamped to [0, res-1] and the interpolation fraction is
// p - corner (so x = 1 lands on the last vertex). The clamp passes gradients for x
// in [0, 1] (bounds included) and stops them outside, like torch.clamp. The
// vertex i (D integers) lives at row
//   dense : sum_d i_d * (res+1)^d
//   hashed: (i_0*1 ^ i_1*2654435761 ^ i_2*805459861) mod 2^log2_hashmap_size
// of the level's block of the table (which starts at row `offset`).
#pragma once

#include "synctalk/common.h"

namespace synctalk {

constexpr int kMaxLevels = 32;
constexpr int kMaxPlanes = 3;

// Per-level constants, passed by value to kernels.
struct GridLevels {
  int n_levels;
  int n_features;
  int64_t n_rows;               // rows of one plane's table
  uint32_t hashmap_mask;        // 2^log2_hashmap_size - 1
  uint32_t res[kMaxLevels];     // cells per axis
  uint8_t hashed[kMaxLevels];   // 1 when the level uses the hash
  int64_t offset[kMaxLevels];   // first row of the level
};

// How a grid reads its input: plane p of P uses input columns axes[p][0..D-1].
// A plain D-dim grid is P = 1 with axes {0, 1, 2}; the tri-plane is P = 3 with
// planes (x,y), (y,z), (x,z).
struct PlaneAxes {
  int n_planes;
  int in_dim;
  int axes[kMaxPlanes][3];
};

// One level's constants, copied out of GridLevels before a loop over points (a
// local copy lets the compiler keep them in registers and hoist the hashed/dense
// branch out of the loop).
struct Level {
  uint32_t res;     // cells per axis
  uint32_t mask;    // 2^log2_hashmap_size - 1
  int64_t offset;   // first row of the level
  bool hashed;
};

ST_HD Level level_of(const GridLevels& g, int l) {
  return Level{g.res[l], g.hashmap_mask, g.offset[l], g.hashed[l] != 0};
}

// floor(p) for p >= 0 clamped to [0, hi] (NaN -> 0): the truncating conversion is
// floor for non-negative values and, unlike std::floor without SSE4.1, one
// instruction.
template <typename scalar_t>
ST_HD uint32_t corner_index(scalar_t p, uint32_t hi) {
  if (!(p >= scalar_t(0))) return 0u;
  if (p >= static_cast<scalar_t>(hi)) return hi;
  return static_cast<uint32_t>(p);
}

// The 2^D corners of the cell holding `x` (D coordinates, already in [0, 1]) at one
// level: their rows in the plane's table and interpolation weights, and, when
// dw != nullptr, d weight / d x_d (dw[c*D + d]). Corner c takes the upper vertex on
// axis d when bit d of c is set. Row arithmetic is uint32 within the level (a dense
// level has at most 2^30 rows; the hash is taken mod 2^32 then masked), exactly the
// reference's int64 result.
template <int D, typename scalar_t>
ST_HD void level_corners(const Level& lv, const scalar_t* x, int64_t* rows, scalar_t* w,
                         scalar_t* dw) {
  const scalar_t scale = static_cast<scalar_t>(lv.res);
  // Per axis: the contribution of the lower / upper vertex to the row, and the
  // lower / upper interpolation factors.
  uint32_t part[D][2];
  scalar_t fac[D][2];
  uint32_t stride = 1;
  const uint32_t primes[3] = {1u, 2654435761u, 805459861u};
  ST_UNROLL
  for (int d = 0; d < D; ++d) {
    const scalar_t p = x[d] * scale;
    const uint32_t i0 = corner_index(p, lv.res - 1u);
    const scalar_t frac = p - static_cast<scalar_t>(i0);
    const uint32_t mul = lv.hashed ? primes[d] : stride;
    part[d][0] = i0 * mul;
    part[d][1] = (i0 + 1u) * mul;
    fac[d][0] = scalar_t(1) - frac;
    fac[d][1] = frac;
    stride *= lv.res + 1u;
  }
  ST_UNROLL
  for (int c = 0; c < (1 << D); ++c) {
    uint32_t idx = 0;
    scalar_t wc = scalar_t(1);
    ST_UNROLL
    for (int d = 0; d < D; ++d) {
      const int up = (c >> d) & 1;
      idx = lv.hashed ? (idx ^ part[d][up]) : (idx + part[d][up]);
      wc *= fac[d][up];
    }
    rows[c] = lv.offset + static_cast<int64_t>(lv.hashed ? (idx & lv.mask) : idx);
    w[c] = wc;
    if (dw != nullptr) {
      ST_UNROLL
      for (int d = 0; d < D; ++d) {
        scalar_t gd = ((c >> d) & 1) ? scale : -scale;
        ST_UNROLL
        for (int e = 0; e < D; ++e) {
          if (e != d) gd *= fac[e][(c >> e) & 1];
        }
        dw[c * D + d] = gd;
      }
    }
  }
}

// Gather the D coordinates plane `p` of point `n` reads, clamped into [0, 1].
template <int D, typename scalar_t>
ST_HD void plane_coords(const PlaneAxes& a, int p, const scalar_t* x_row, scalar_t* out) {
  for (int d = 0; d < D; ++d) {
    const scalar_t v = x_row[a.axes[p][d]];
    out[d] = v < scalar_t(0) ? scalar_t(0) : (v > scalar_t(1) ? scalar_t(1) : v);
  }
}

// Whether the clamp of plane_coords passes the gradient of input coordinate v.
template <typename scalar_t>
ST_HD bool clamp_passes_grad(scalar_t v) {
  return v >= scalar_t(0) && v <= scalar_t(1);
}

// Forward for one point, plane and level: out[f] = sum_c w_c * table[row_c, f].
// `table` points at the plane's table; `out` at the F outputs of (point, plane,
// level). F is the compile-time FT when nonzero (the loops unroll), else n_feat.
template <int D, int FT, typename scalar_t, typename table_t>
ST_HD void encode_point_level(const Level& lv, int n_feat, const scalar_t* coords,
                              const table_t* table, scalar_t* out) {
  int64_t rows[1 << D];
  scalar_t w[1 << D];
  level_corners<D, scalar_t>(lv, coords, rows, w, nullptr);
  const int F = FT > 0 ? FT : n_feat;
ST_UNROLL
  for (int f = 0; f < F; ++f) {
    scalar_t acc = scalar_t(0);
ST_UNROLL
    for (int c = 0; c < (1 << D); ++c) {
      acc += w[c] * TableLoad<scalar_t, table_t>::load(table[rows[c] * F + f]);
    }
    out[f] = acc;
  }
}

// Backward w.r.t. the inputs for one point, plane and level: adds
// sum_c sum_f dw_c/dx_d * table[row_c, f] * grad_out[f] to grad_coords[d].
template <int D, int FT, typename scalar_t, typename table_t>
ST_HD void encode_point_level_grad_x(const Level& lv, int n_feat, const scalar_t* coords,
                                     const table_t* table, const scalar_t* grad_out,
                                     scalar_t* grad_coords) {
  int64_t rows[1 << D];
  scalar_t w[1 << D];
  scalar_t dw[(1 << D) * D];
  level_corners<D, scalar_t>(lv, coords, rows, w, dw);
  const int F = FT > 0 ? FT : n_feat;
ST_UNROLL
  for (int c = 0; c < (1 << D); ++c) {
    scalar_t dot = scalar_t(0);
    for (int f = 0; f < F; ++f) {
      dot += TableLoad<scalar_t, table_t>::load(table[rows[c] * F + f]) * grad_out[f];
    }
    for (int d = 0; d < D; ++d) grad_coords[d] += dw[c * D + d] * dot;
  }
}

}  // namespace synctalk
