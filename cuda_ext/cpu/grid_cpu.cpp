// OpenMP loops of the 3-D grid encoding (math: include/synctalk/grid.h); 2-D grids
// (planes, the tri-plane) are in plane_cpu.cpp.
//
// Forward and table gradient run level by level over all points, so one level's
// block of the table stays in cache while every point reads or updates it; the input
// gradient runs point by point. The feature count is a template parameter for the
// common F in {1, 2, 4, 8} (unrolled inner loops), runtime otherwise.
#include <omp.h>

#include <memory>

#include "synctalk/kernels.h"

namespace synctalk {
namespace cpu {
namespace {

template <int D, int FT, typename scalar_t, typename table_t>
void forward_impl(const GridLevels& g, const PlaneAxes& a, int64_t n, const scalar_t* x,
                  const table_t* table, scalar_t* out) {
  const int L = g.n_levels, F = FT > 0 ? FT : g.n_features, P = a.n_planes;
  const int64_t out_stride = static_cast<int64_t>(P) * L * F;
#pragma omp parallel if (worth_parallel(n * P * L))
  for (int p = 0; p < P; ++p) {
    const table_t* plane_table = table + static_cast<int64_t>(p) * g.n_rows * F;
    for (int l = 0; l < L; ++l) {
      const Level lv = level_of(g, l);
      scalar_t* out_level = out + (p * L + l) * F;
#pragma omp for schedule(static) nowait
      for (int64_t i = 0; i < n; ++i) {
        scalar_t coords[D];
        plane_coords<D>(a, p, x + i * a.in_dim, coords);
        encode_point_level<D, FT, scalar_t, table_t>(lv, F, coords, plane_table,
                                                     out_level + i * out_stride);
      }
    }
  }
}

// Backward w.r.t. the table: one task per (plane, level); levels own disjoint rows,
// so tasks never write the same element and need no atomics. grad_out is first
// transposed to level-major order so that every task streams through memory.
template <int D, int FT, typename scalar_t>
void backward_table_impl(const GridLevels& g, const PlaneAxes& a, int64_t n, const scalar_t* x,
                         const scalar_t* grad_out, scalar_t* grad_table) {
  const int L = g.n_levels, F = FT > 0 ? FT : g.n_features, P = a.n_planes;
  const int PL = P * L;
  const int64_t out_stride = static_cast<int64_t>(PL) * F;
  std::unique_ptr<scalar_t[]> by_level(new scalar_t[static_cast<size_t>(n) * out_stride]);
#pragma omp parallel for schedule(static) if (worth_parallel(n * PL))
  for (int64_t i = 0; i < n; ++i) {
    for (int task = 0; task < PL; ++task) {
      scalar_t* dst = by_level.get() + (static_cast<int64_t>(task) * n + i) * F;
      for (int f = 0; f < F; ++f) dst[f] = grad_out[i * out_stride + task * F + f];
    }
  }
#pragma omp parallel for schedule(dynamic, 1) if (worth_parallel(n * PL))
  for (int task = 0; task < PL; ++task) {
    const int p = task / L;
    const Level lv = level_of(g, task % L);
    scalar_t* plane_grad = grad_table + static_cast<int64_t>(p) * g.n_rows * F;
    const scalar_t* go_level = by_level.get() + static_cast<int64_t>(task) * n * F;
    for (int64_t i = 0; i < n; ++i) {
      scalar_t coords[D];
      plane_coords<D>(a, p, x + i * a.in_dim, coords);
      int64_t rows[1 << D];
      scalar_t w[1 << D];
      level_corners<D, scalar_t>(lv, coords, rows, w, nullptr);
      const scalar_t* go = go_level + i * F;
      ST_UNROLL
      for (int c = 0; c < (1 << D); ++c) {
        scalar_t* dst = plane_grad + rows[c] * F;
        ST_UNROLL
        for (int f = 0; f < F; ++f) dst[f] += w[c] * go[f];
      }
    }
  }
}

template <int D, int FT, typename scalar_t, typename table_t>
void backward_x_impl(const GridLevels& g, const PlaneAxes& a, int64_t n, const scalar_t* x,
                     const table_t* table, const scalar_t* grad_out, scalar_t* grad_x) {
  const int L = g.n_levels, F = FT > 0 ? FT : g.n_features, P = a.n_planes;
  const int64_t out_stride = static_cast<int64_t>(P) * L * F;
#pragma omp parallel for schedule(static, 256) if (worth_parallel(n * P * L))
  for (int64_t i = 0; i < n; ++i) {
    for (int p = 0; p < P; ++p) {
      const table_t* plane_table = table + static_cast<int64_t>(p) * g.n_rows * F;
      scalar_t coords[D];
      scalar_t grad_coords[D] = {};
      plane_coords<D>(a, p, x + i * a.in_dim, coords);
      for (int l = 0; l < L; ++l) {
        encode_point_level_grad_x<D, FT, scalar_t, table_t>(
            level_of(g, l), F, coords, plane_table, grad_out + i * out_stride + (p * L + l) * F,
            grad_coords);
      }
      for (int d = 0; d < D; ++d) {
        const int64_t col = i * a.in_dim + a.axes[p][d];
        if (clamp_passes_grad(x[col])) grad_x[col] += grad_coords[d];
      }
    }
  }
}

// Calls IMPL<3, FT, ...>(args) with FT the compile-time feature count (0 = runtime);
// 2-D grids go through plane_cpu.cpp (plane_encode_*), so only dim 3 is built here.
#define ST_GRID_DISPATCH(IMPL, dim, n_features, ...)                 \
  do {                                                               \
    const int f_ = (n_features);                                     \
    (void)(dim);                                                     \
    if (f_ == 1) IMPL<3, 1>(__VA_ARGS__);                            \
    else if (f_ == 2) IMPL<3, 2>(__VA_ARGS__);                       \
    else if (f_ == 4) IMPL<3, 4>(__VA_ARGS__);                       \
    else if (f_ == 8) IMPL<3, 8>(__VA_ARGS__);                       \
    else IMPL<3, 0>(__VA_ARGS__);                                    \
  } while (0)

}  // namespace

template <typename scalar_t, typename table_t>
void grid_encode_forward(const GridLevels& g, const PlaneAxes& a, int dim, int64_t n,
                         const scalar_t* x, const table_t* table, scalar_t* out) {
  ST_GRID_DISPATCH(forward_impl, dim, g.n_features, g, a, n, x, table, out);
}

template <typename scalar_t>
void grid_encode_backward_table(const GridLevels& g, const PlaneAxes& a, int dim, int64_t n,
                                const scalar_t* x, const scalar_t* grad_out,
                                scalar_t* grad_table) {
  ST_GRID_DISPATCH(backward_table_impl, dim, g.n_features, g, a, n, x, grad_out, grad_table);
}

template <typename scalar_t, typename table_t>
void grid_encode_backward_x(const GridLevels& g, const PlaneAxes& a, int dim, int64_t n,
                            const scalar_t* x, const table_t* table, const scalar_t* grad_out,
                            scalar_t* grad_x) {
  ST_GRID_DISPATCH(backward_x_impl, dim, g.n_features, g, a, n, x, table, grad_out, grad_x);
}

#define INSTANTIATE(S, T)                                                                  \
  template void grid_encode_forward<S, T>(const GridLevels&, const PlaneAxes&, int,        \
                                          int64_t, const S*, const T*, S*);                \
  template void grid_encode_backward_x<S, T>(const GridLevels&, const PlaneAxes&, int,     \
                                             int64_t, const S*, const T*, const S*, S*);
INSTANTIATE(float, float)
INSTANTIATE(float, HalfBits)
INSTANTIATE(double, double)
#undef INSTANTIATE
template void grid_encode_backward_table<float>(const GridLevels&, const PlaneAxes&, int,
                                                int64_t, const float*, const float*, float*);
template void grid_encode_backward_table<double>(const GridLevels&, const PlaneAxes&, int,
                                                 int64_t, const double*, const double*,
                                                 double*);

}  // namespace cpu
}  // namespace synctalk
