// CUDA kernels of the alive-ray loop (math: include/synctalk/alive.h). One thread per
// alive ray.
#include "launch.cuh"
#include "synctalk/kernels.h"

namespace synctalk {
namespace cuda {
namespace {

template <typename scalar_t>
__global__ void march_next_kernel(const MarchParams mp, int64_t n_alive, int k,
                                  const int64_t* __restrict__ alive,
                                  const scalar_t* __restrict__ rays_o,
                                  const scalar_t* __restrict__ rays_d,
                                  const scalar_t* __restrict__ t_near,
                                  const scalar_t* __restrict__ t_far,
                                  const scalar_t* __restrict__ aabb,
                                  const uint8_t* __restrict__ occupied,
                                  int64_t* __restrict__ next_index,
                                  scalar_t* __restrict__ t_starts, scalar_t* __restrict__ t_ends,
                                  int64_t* __restrict__ count) {
  const int64_t a = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (a >= n_alive) return;
  const int64_t r = alive[a];
  scalar_t* t0 = t_starts + a * k;
  scalar_t* t1 = t_ends + a * k;
  if (r < 0 || r >= mp.n_rays) {  // never read out of bounds
    for (int j = 0; j < k; ++j) t0[j] = t1[j] = scalar_t(0);
    count[a] = 0;
    return;
  }
  const RayView<scalar_t> v = ray_view(mp, r, rays_o, rays_d, t_near, t_far, aabb,
                                       static_cast<const scalar_t*>(nullptr));
  // Divisions for the cells (cell_index): the same cells as the CPU's pow2 path.
  count[a] = march_next_ray<scalar_t>(mp, v, occupied, nullptr, next_index[r], k, t0, t1,
                                      next_index + r);
}

template <typename scalar_t>
__global__ void composite_step_kernel(const StepDims dm, scalar_t early_stop,
                                      const StepInputs<scalar_t> in,
                                      const RayAccumulators<scalar_t> acc,
                                      scalar_t* __restrict__ weights) {
  const int64_t a = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (a >= dm.n_alive) return;
  composite_step_ray<scalar_t>(dm, a, early_stop, in, acc, weights);
}

}  // namespace

template <typename scalar_t>
void march_next(const MarchParams& mp, int64_t n_alive, int k, const int64_t* alive,
                const scalar_t* rays_o, const scalar_t* rays_d, const scalar_t* t_near,
                const scalar_t* t_far, const scalar_t* aabb, const uint8_t* occupied,
                int64_t* next_index, scalar_t* t_starts, scalar_t* t_ends, int64_t* count) {
  march_next_kernel<scalar_t><<<blocks_for(n_alive), kThreads, 0, current_stream()>>>(
      mp, n_alive, k, alive, rays_o, rays_d, t_near, t_far, aabb, occupied, next_index, t_starts,
      t_ends, count);
  check_launch("march_next");
}

template <typename scalar_t>
void composite_step(const StepDims& dm, scalar_t early_stop, const StepInputs<scalar_t>& in,
                    const RayAccumulators<scalar_t>& acc, scalar_t* weights) {
  composite_step_kernel<scalar_t><<<blocks_for(dm.n_alive), kThreads, 0, current_stream()>>>(
      dm, early_stop, in, acc, weights);
  check_launch("composite_step");
}

#define INSTANTIATE(S)                                                                     \
  template void march_next<S>(const MarchParams&, int64_t, int, const int64_t*, const S*,  \
                              const S*, const S*, const S*, const S*, const uint8_t*,      \
                              int64_t*, S*, S*, int64_t*);                                 \
  template void composite_step<S>(const StepDims&, S, const StepInputs<S>&,                \
                                  const RayAccumulators<S>&, S*);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace cuda
}  // namespace synctalk
