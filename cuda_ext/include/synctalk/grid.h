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

// ---------------------------------------------------------------------------------
// 2-D levels (planes, the tri-plane): the same contract as level_corners<2>, written
// in the form the CPU loops vectorise and the CUDA kernels share.
//
// A point's cell on one axis of a level is an AxisCell; a plane's cell is the pair
// (u, v) of its two axes, u the fastest-varying. Its corners are c = du + 2 dv for
// du, dv in {0, 1}: (u0,v0), (u1,v0), (u0,v1), (u1,v1). A dense level stores corner
// (iu, iv) at row iu + iv * (res + 1), so corners 0,1 (and 2,3) are adjacent rows; a
// hashed level at (iu ^ iv * 2654435761) mod 2^log2_hashmap_size. The value is the
// bilinear interpolation written as two lerps, first along v then along u:
//   out = lerp(lerp(t0, t2, fv), lerp(t1, t3, fv), fu),  lerp(a, b, t) = a + t (b - a),
// equal to sum_c w_c t_c with w = ((1-fu)(1-fv), fu(1-fv), (1-fu)fv, fu fv) up to
// rounding. Gradients: d out / d t_c = w_c; d out / d u = res * (lerp(t1, t3, fv) -
// lerp(t0, t2, fv)); d out / d v = res * (lerp(t2, t3, fu) - lerp(t0, t1, fu)).

constexpr uint32_t kHashPrime1 = 2654435761u;

template <typename scalar_t>
struct AxisCell {
  uint32_t i0;     // lower vertex, in [0, res - 1]
  scalar_t frac;   // p - i0, in [0, 1] for x in [0, 1]
};

// x clamped into [0, 1] with two selects (not nested, so that loops over points
// vectorise); NaN passes through, as in plane_coords.
template <typename scalar_t>
ST_HD scalar_t clamp_unit(scalar_t v) {
  v = v < scalar_t(0) ? scalar_t(0) : v;
  return v > scalar_t(1) ? scalar_t(1) : v;
}

// The cell of clamped coordinate x on a level of `res` cells: exactly corner_index
// and the fraction of level_corners, branch-free (res < 2^24, so int32 holds it).
template <typename scalar_t>
ST_HD AxisCell<scalar_t> axis_cell(scalar_t x, uint32_t res) {
  const scalar_t p = x * static_cast<scalar_t>(res);
  scalar_t q = p >= scalar_t(0) ? p : scalar_t(0);  // NaN -> 0
  const scalar_t hi = static_cast<scalar_t>(res - 1u);
  q = q < hi ? q : hi;
  const uint32_t i0 = static_cast<uint32_t>(static_cast<int32_t>(q));
  return {i0, p - static_cast<scalar_t>(i0)};
}

// Row of corner 0 of a dense 2-D level (corner 1 is the next row, corners 2, 3 are
// res + 1 rows further).
ST_HD uint32_t plane_row_dense(uint32_t res, uint32_t iu, uint32_t iv) {
  return iu + iv * (res + 1u);
}

// Rows of the four corners of a hashed 2-D level.
struct PlaneRows {
  uint32_t r0, r1, r2, r3;
};
ST_HD PlaneRows plane_rows_hashed(uint32_t mask, uint32_t iu, uint32_t iv) {
  const uint32_t v0 = iv * kHashPrime1, v1 = (iv + 1u) * kHashPrime1;
  return {(iu ^ v0) & mask, ((iu + 1u) ^ v0) & mask, (iu ^ v1) & mask, ((iu + 1u) ^ v1) & mask};
}

// Rows of the four corners of either kind of level.
ST_HD PlaneRows plane_rows(const Level& lv, uint32_t iu, uint32_t iv) {
  if (lv.hashed) return plane_rows_hashed(lv.mask, iu, iv);
  const uint32_t r = plane_row_dense(lv.res, iu, iv), s = lv.res + 1u;
  return {r, r + 1u, r + s, r + s + 1u};
}

template <typename T>
ST_HD T lerp(T a, T b, T t) {
  return a + t * (b - a);
}

// Forward of one plane cell from its four corner rows (F features each; FT > 0 a
// compile-time F, else n_feat): out[f] = bilinear value.
template <int FT, typename scalar_t, typename table_t>
ST_HD void plane_forward(int n_feat, const table_t* c0, const table_t* c1, const table_t* c2,
                         const table_t* c3, scalar_t fu, scalar_t fv, scalar_t* out) {
  using Ld = TableLoad<scalar_t, table_t>;
  const int F = FT > 0 ? FT : n_feat;
  ST_SIMD
  for (int f = 0; f < F; ++f) {
    out[f] = lerp(lerp(Ld::load(c0[f]), Ld::load(c2[f]), fv),
                  lerp(Ld::load(c1[f]), Ld::load(c3[f]), fv), fu);
  }
}

// The same for a dense level, whose corner pairs (0,1) and (2,3) are 2F contiguous
// values at lo and hi: one 2F-wide lerp along v, then one F-wide lerp along u.
template <int F, typename scalar_t, typename table_t>
ST_HD void plane_forward_dense(const table_t* lo, const table_t* hi, scalar_t fu, scalar_t fv,
                               scalar_t* out) {
  using Ld = TableLoad<scalar_t, table_t>;
  scalar_t m[2 * F];
  ST_SIMD
  for (int k = 0; k < 2 * F; ++k) m[k] = lerp(Ld::load(lo[k]), Ld::load(hi[k]), fv);
  ST_SIMD
  for (int f = 0; f < F; ++f) out[f] = lerp(m[f], m[F + f], fu);
}

// Accumulation policies of the table gradient: plain adds (CPU loops, where no two
// threads own the same rows) or atomics (CUDA, cuda/grid.cu).
struct PlainAdd {
  template <typename T>
  ST_HD static void add(T* p, T v) {
    *p += v;
  }
};

// Table-gradient contributions of one plane cell: c_k[f] += w_k * g[f].
template <int FT, typename Acc, typename scalar_t>
ST_HD void plane_backward(int n_feat, scalar_t* c0, scalar_t* c1, scalar_t* c2, scalar_t* c3,
                          scalar_t fu, scalar_t fv, const scalar_t* g) {
  const int F = FT > 0 ? FT : n_feat;
  const scalar_t gu = scalar_t(1) - fu, gv = scalar_t(1) - fv;
  ST_SIMD
  for (int f = 0; f < F; ++f) {
    const scalar_t lo = g[f] * gu, hi = g[f] * fu;  // the u-weights times g
    Acc::add(c0 + f, lo * gv);
    Acc::add(c1 + f, hi * gv);
    Acc::add(c2 + f, lo * fv);
    Acc::add(c3 + f, hi * fv);
  }
}

// The same for a dense level (corner pairs contiguous at lo and hi, see
// plane_forward_dense): two 2F-wide updates.
template <int F, typename Acc, typename scalar_t>
ST_HD void plane_backward_dense(scalar_t* lo, scalar_t* hi, scalar_t fu, scalar_t fv,
                                const scalar_t* g) {
  const scalar_t gu = scalar_t(1) - fu, gv = scalar_t(1) - fv;
  scalar_t q[2 * F];  // (1-fu) g, then fu g
  ST_SIMD
  for (int k = 0; k < 2 * F; ++k) q[k] = g[k < F ? k : k - F] * (k < F ? gu : fu);
  ST_SIMD
  for (int k = 0; k < 2 * F; ++k) Acc::add(lo + k, q[k] * gv);
  ST_SIMD
  for (int k = 0; k < 2 * F; ++k) Acc::add(hi + k, q[k] * fv);
}

// Input gradient of one plane cell: adds sum_f g[f] * d out[f] / d (u, v) to *du, *dv
// (in units of the clamped coordinates).
template <int FT, typename scalar_t, typename table_t>
ST_HD void plane_grad_uv(int n_feat, const table_t* c0, const table_t* c1, const table_t* c2,
                         const table_t* c3, scalar_t fu, scalar_t fv, scalar_t res,
                         const scalar_t* g, scalar_t* du, scalar_t* dv) {
  using Ld = TableLoad<scalar_t, table_t>;
  const int F = FT > 0 ? FT : n_feat;
  scalar_t su = scalar_t(0), sv = scalar_t(0);
  for (int f = 0; f < F; ++f) {
    const scalar_t t0 = Ld::load(c0[f]), t1 = Ld::load(c1[f]), t2 = Ld::load(c2[f]),
                   t3 = Ld::load(c3[f]);
    su += g[f] * (lerp(t1, t3, fv) - lerp(t0, t2, fv));
    sv += g[f] * (lerp(t2, t3, fu) - lerp(t0, t1, fu));
  }
  *du += su * res;
  *dv += sv * res;
}

}  // namespace synctalk
