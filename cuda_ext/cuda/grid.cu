// CUDA kernels of the grid encoding (math: include/synctalk/grid.h).
#include "launch.cuh"
#include "synctalk/kernels.h"

namespace synctalk {
namespace cuda {
namespace {

// The 3-D grid (2-D grids go through the plane_* kernels below).
// One thread per (plane, level, point); consecutive threads take consecutive points
// of one level, so they read the same block of the table.
template <int D, typename scalar_t, typename table_t>
__global__ void forward_kernel(const GridLevels g, const PlaneAxes a, int64_t n,
                               const scalar_t* __restrict__ x,
                               const table_t* __restrict__ table, scalar_t* __restrict__ out) {
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t i = tid % n;
  const int64_t pl = tid / n;  // p * L + l
  if (pl >= static_cast<int64_t>(a.n_planes) * g.n_levels) return;
  const int p = static_cast<int>(pl / g.n_levels), l = static_cast<int>(pl % g.n_levels);
  const int F = g.n_features;
  scalar_t coords[D];
  plane_coords<D>(a, p, x + i * a.in_dim, coords);
  encode_point_level<D, 0, scalar_t, table_t>(
      level_of(g, l), F, coords, table + static_cast<int64_t>(p) * g.n_rows * F,
      out + i * (static_cast<int64_t>(a.n_planes) * g.n_levels * F) + pl * F);
}

template <int D, typename scalar_t>
__global__ void backward_table_kernel(const GridLevels g, const PlaneAxes a, int64_t n,
                                      const scalar_t* __restrict__ x,
                                      const scalar_t* __restrict__ grad_out,
                                      scalar_t* __restrict__ grad_table) {
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t i = tid % n;
  const int64_t pl = tid / n;
  if (pl >= static_cast<int64_t>(a.n_planes) * g.n_levels) return;
  const int p = static_cast<int>(pl / g.n_levels), l = static_cast<int>(pl % g.n_levels);
  const int F = g.n_features;
  scalar_t coords[D];
  plane_coords<D>(a, p, x + i * a.in_dim, coords);
  int64_t rows[1 << D];
  scalar_t w[1 << D];
  level_corners<D, scalar_t>(level_of(g, l), coords, rows, w, nullptr);
  const scalar_t* go = grad_out + i * (static_cast<int64_t>(a.n_planes) * g.n_levels * F) + pl * F;
  scalar_t* plane_grad = grad_table + static_cast<int64_t>(p) * g.n_rows * F;
  for (int c = 0; c < (1 << D); ++c) {
    for (int f = 0; f < F; ++f) atomicAdd(plane_grad + rows[c] * F + f, w[c] * go[f]);
  }
}

// One thread per point: all planes and levels, so grad_x needs no atomics.
template <int D, typename scalar_t, typename table_t>
__global__ void backward_x_kernel(const GridLevels g, const PlaneAxes a, int64_t n,
                                  const scalar_t* __restrict__ x,
                                  const table_t* __restrict__ table,
                                  const scalar_t* __restrict__ grad_out,
                                  scalar_t* __restrict__ grad_x) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int L = g.n_levels, F = g.n_features;
  const int64_t out_stride = static_cast<int64_t>(a.n_planes) * L * F;
  for (int p = 0; p < a.n_planes; ++p) {
    scalar_t coords[D];
    scalar_t grad_coords[D] = {};
    plane_coords<D>(a, p, x + i * a.in_dim, coords);
    for (int l = 0; l < L; ++l) {
      encode_point_level_grad_x<D, 0, scalar_t, table_t>(
          level_of(g, l), F, coords, table + static_cast<int64_t>(p) * g.n_rows * F,
          grad_out + i * out_stride + (static_cast<int64_t>(p) * L + l) * F, grad_coords);
    }
    for (int d = 0; d < D; ++d) {
      const int64_t col = i * a.in_dim + a.axes[p][d];
      if (clamp_passes_grad(x[col])) grad_x[col] += grad_coords[d];
    }
  }
}

int64_t level_threads(const GridLevels& g, const PlaneAxes& a, int64_t n) {
  return static_cast<int64_t>(a.n_planes) * g.n_levels * n;
}

// ---- 2-D grids (one plane or the tri-plane): the plane_* math of grid.h.

struct AtomicAccumulate {
  template <typename T>
  __device__ static void add(T* p, T v) {
    atomicAdd(p, v);
  }
};

// The cell of point i on plane p at level l.
template <typename scalar_t>
struct PlaneCellOf {
  PlaneRows rows;
  scalar_t fu, fv;
};
template <typename scalar_t>
__device__ PlaneCellOf<scalar_t> plane_cell_of(const Level& lv, const PlaneAxes& a, int p,
                                               const scalar_t* x_row) {
  const AxisCell<scalar_t> u = axis_cell(clamp_unit(x_row[a.axes[p][0]]), lv.res);
  const AxisCell<scalar_t> v = axis_cell(clamp_unit(x_row[a.axes[p][1]]), lv.res);
  return {plane_rows(lv, u.i0, v.i0), u.frac, v.frac};
}

// One thread per (plane, level, point), consecutive threads on consecutive points.
template <typename scalar_t, typename table_t>
__global__ void plane_forward_kernel(const GridLevels g, const PlaneAxes a, int64_t n,
                                     const scalar_t* __restrict__ x,
                                     const table_t* __restrict__ table,
                                     scalar_t* __restrict__ out) {
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t i = tid % n;
  const int64_t pl = tid / n;
  if (pl >= static_cast<int64_t>(a.n_planes) * g.n_levels) return;
  const int p = static_cast<int>(pl / g.n_levels), l = static_cast<int>(pl % g.n_levels);
  const int F = g.n_features;
  const Level lv = level_of(g, l);
  const PlaneCellOf<scalar_t> c = plane_cell_of(lv, a, p, x + i * a.in_dim);
  const table_t* t = table + (static_cast<int64_t>(p) * g.n_rows + lv.offset) * F;
  plane_forward<0>(F, t + static_cast<int64_t>(c.rows.r0) * F,
                   t + static_cast<int64_t>(c.rows.r1) * F, t + static_cast<int64_t>(c.rows.r2) * F,
                   t + static_cast<int64_t>(c.rows.r3) * F, c.fu, c.fv,
                   out + i * (static_cast<int64_t>(a.n_planes) * g.n_levels * F) + pl * F);
}

template <typename scalar_t>
__global__ void plane_backward_table_kernel(const GridLevels g, const PlaneAxes a, int64_t n,
                                            const scalar_t* __restrict__ x,
                                            const scalar_t* __restrict__ grad_out,
                                            scalar_t* __restrict__ grad_table) {
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t i = tid % n;
  const int64_t pl = tid / n;
  if (pl >= static_cast<int64_t>(a.n_planes) * g.n_levels) return;
  const int p = static_cast<int>(pl / g.n_levels), l = static_cast<int>(pl % g.n_levels);
  const int F = g.n_features;
  const Level lv = level_of(g, l);
  const PlaneCellOf<scalar_t> c = plane_cell_of(lv, a, p, x + i * a.in_dim);
  scalar_t* gt = grad_table + (static_cast<int64_t>(p) * g.n_rows + lv.offset) * F;
  plane_backward<0, AtomicAccumulate>(
      F, gt + static_cast<int64_t>(c.rows.r0) * F, gt + static_cast<int64_t>(c.rows.r1) * F,
      gt + static_cast<int64_t>(c.rows.r2) * F, gt + static_cast<int64_t>(c.rows.r3) * F, c.fu,
      c.fv, grad_out + i * (static_cast<int64_t>(a.n_planes) * g.n_levels * F) + pl * F);
}

// One thread per point: every plane and level, so grad_x needs no atomics.
template <typename scalar_t, typename table_t>
__global__ void plane_backward_x_kernel(const GridLevels g, const PlaneAxes a, int64_t n,
                                        const scalar_t* __restrict__ x,
                                        const table_t* __restrict__ table,
                                        const scalar_t* __restrict__ grad_out,
                                        scalar_t* __restrict__ grad_x) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int L = g.n_levels, F = g.n_features;
  const int64_t out_stride = static_cast<int64_t>(a.n_planes) * L * F;
  for (int p = 0; p < a.n_planes; ++p) {
    scalar_t du = scalar_t(0), dv = scalar_t(0);
    const table_t* plane_table = table + static_cast<int64_t>(p) * g.n_rows * F;
    for (int l = 0; l < L; ++l) {
      const Level lv = level_of(g, l);
      const PlaneCellOf<scalar_t> c = plane_cell_of(lv, a, p, x + i * a.in_dim);
      const table_t* t = plane_table + lv.offset * F;
      plane_grad_uv<0>(F, t + static_cast<int64_t>(c.rows.r0) * F,
                       t + static_cast<int64_t>(c.rows.r1) * F,
                       t + static_cast<int64_t>(c.rows.r2) * F,
                       t + static_cast<int64_t>(c.rows.r3) * F, c.fu, c.fv,
                       static_cast<scalar_t>(lv.res),
                       grad_out + i * out_stride + (static_cast<int64_t>(p) * L + l) * F, &du, &dv);
    }
    const int64_t cu = i * a.in_dim + a.axes[p][0], cv = i * a.in_dim + a.axes[p][1];
    if (clamp_passes_grad(x[cu])) grad_x[cu] += du;
    if (clamp_passes_grad(x[cv])) grad_x[cv] += dv;
  }
}

}  // namespace

template <typename scalar_t, typename table_t>
void grid_encode_forward(const GridLevels& g, const PlaneAxes& a, int dim, int64_t n,
                         const scalar_t* x, const table_t* table, scalar_t* out) {
  const int64_t total = level_threads(g, a, n);
  if (dim == 2) {
    forward_kernel<2, scalar_t, table_t>
        <<<blocks_for(total), kThreads, 0, current_stream()>>>(g, a, n, x, table, out);
  } else {
    forward_kernel<3, scalar_t, table_t>
        <<<blocks_for(total), kThreads, 0, current_stream()>>>(g, a, n, x, table, out);
  }
  check_launch("grid_encode_forward");
}

template <typename scalar_t>
void grid_encode_backward_table(const GridLevels& g, const PlaneAxes& a, int dim, int64_t n,
                                const scalar_t* x, const scalar_t* grad_out,
                                scalar_t* grad_table) {
  const int64_t total = level_threads(g, a, n);
  if (dim == 2) {
    backward_table_kernel<2, scalar_t>
        <<<blocks_for(total), kThreads, 0, current_stream()>>>(g, a, n, x, grad_out, grad_table);
  } else {
    backward_table_kernel<3, scalar_t>
        <<<blocks_for(total), kThreads, 0, current_stream()>>>(g, a, n, x, grad_out, grad_table);
  }
  check_launch("grid_encode_backward_table");
}

template <typename scalar_t, typename table_t>
void grid_encode_backward_x(const GridLevels& g, const PlaneAxes& a, int dim, int64_t n,
                            const scalar_t* x, const table_t* table, const scalar_t* grad_out,
                            scalar_t* grad_x) {
  if (dim == 2) {
    backward_x_kernel<2, scalar_t, table_t>
        <<<blocks_for(n), kThreads, 0, current_stream()>>>(g, a, n, x, table, grad_out, grad_x);
  } else {
    backward_x_kernel<3, scalar_t, table_t>
        <<<blocks_for(n), kThreads, 0, current_stream()>>>(g, a, n, x, table, grad_out, grad_x);
  }
  check_launch("grid_encode_backward_x");
}

template <typename scalar_t, typename table_t>
void plane_encode_forward(const GridLevels& g, const PlaneAxes& a, int64_t n, const scalar_t* x,
                          const table_t* table, scalar_t* out) {
  if (n <= 0) return;
  plane_forward_kernel<scalar_t, table_t>
      <<<blocks_for(level_threads(g, a, n)), kThreads, 0, current_stream()>>>(g, a, n, x, table,
                                                                              out);
  check_launch("plane_encode_forward");
}

template <typename scalar_t, typename table_t>
void plane_encode_backward(const GridLevels& g, const PlaneAxes& a, int64_t n, const scalar_t* x,
                           const table_t* table, const scalar_t* grad_out, scalar_t* grad_table,
                           scalar_t* grad_x) {
  if (n <= 0) return;
  if (grad_table != nullptr) {
    const size_t bytes = sizeof(scalar_t) * static_cast<size_t>(a.n_planes) * g.n_rows * g.n_features;
    const cudaError_t err = cudaMemsetAsync(grad_table, 0, bytes, current_stream());
    if (err != cudaSuccess) {
      throw std::runtime_error(std::string("plane_encode_backward: cudaMemsetAsync failed: ") +
                               cudaGetErrorString(err));
    }
    plane_backward_table_kernel<scalar_t>
        <<<blocks_for(level_threads(g, a, n)), kThreads, 0, current_stream()>>>(g, a, n, x, grad_out,
                                                                                grad_table);
    check_launch("plane_encode_backward (table)");
  }
  if (grad_x != nullptr) {
    plane_backward_x_kernel<scalar_t, table_t>
        <<<blocks_for(n), kThreads, 0, current_stream()>>>(g, a, n, x, table, grad_out, grad_x);
    check_launch("plane_encode_backward (x)");
  }
}

#define INSTANTIATE(S, T)                                                                  \
  template void plane_encode_forward<S, T>(const GridLevels&, const PlaneAxes&, int64_t,   \
                                           const S*, const T*, S*);                        \
  template void plane_encode_backward<S, T>(const GridLevels&, const PlaneAxes&, int64_t,  \
                                            const S*, const T*, const S*, S*, S*);         \
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

}  // namespace cuda
}  // namespace synctalk
