// CUDA kernels of ray-box intersection and occupancy-grid marching
// (math: include/synctalk/raymarch.h). One thread per ray.
#include "launch.cuh"
#include "synctalk/kernels.h"

namespace synctalk {
namespace cuda {
namespace {

template <typename scalar_t>
__global__ void ray_aabb_kernel(int64_t n, const scalar_t* __restrict__ rays_o,
                                const scalar_t* __restrict__ rays_d,
                                const scalar_t* __restrict__ aabb, scalar_t near,
                                scalar_t* __restrict__ t_near, scalar_t* __restrict__ t_far) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n) return;
  const scalar_t box[6] = {aabb[0], aabb[1], aabb[2], aabb[3], aabb[4], aabb[5]};
  ray_aabb_one<scalar_t>(rays_o + 3 * r, rays_d + 3 * r, box, box + 3, near, t_near + r,
                         t_far + r);
}

template <typename scalar_t>
__global__ void march_count_kernel(const MarchParams mp, const scalar_t* __restrict__ rays_o,
                                   const scalar_t* __restrict__ rays_d,
                                   const scalar_t* __restrict__ t_near,
                                   const scalar_t* __restrict__ t_far,
                                   const scalar_t* __restrict__ aabb,
                                   const uint8_t* __restrict__ occupied,
                                   const scalar_t* __restrict__ noise,
                                   uint8_t* __restrict__ keep, int64_t* __restrict__ counts) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= mp.n_rays) return;
  const RayView<scalar_t> v = ray_view(mp, r, rays_o, rays_d, t_near, t_far, aabb, noise);
  counts[r] = march_ray_count(mp, v, occupied, keep + r * mp.n_steps);
}

template <typename scalar_t>
__global__ void march_fill_kernel(const MarchParams mp, const scalar_t* __restrict__ rays_o,
                                  const scalar_t* __restrict__ rays_d,
                                  const scalar_t* __restrict__ t_near,
                                  const scalar_t* __restrict__ t_far,
                                  const scalar_t* __restrict__ aabb,
                                  const scalar_t* __restrict__ noise,
                                  const uint8_t* __restrict__ keep,
                                  const int64_t* __restrict__ offsets,
                                  int64_t* __restrict__ ray_indices,
                                  scalar_t* __restrict__ t_starts, scalar_t* __restrict__ t_ends,
                                  scalar_t* __restrict__ t_pos) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= mp.n_rays) return;
  const RayView<scalar_t> v = ray_view(mp, r, rays_o, rays_d, t_near, t_far, aabb, noise);
  int64_t j = offsets[r];
  march_ray_fill(mp, v, keep + r * mp.n_steps, [&](scalar_t t0, scalar_t t1, scalar_t tp) {
    ray_indices[j] = r;
    t_starts[j] = t0;
    t_ends[j] = t1;
    if (t_pos != nullptr) t_pos[j] = tp;
    ++j;
  });
}

}  // namespace

template <typename scalar_t>
void ray_aabb(int64_t n, const scalar_t* rays_o, const scalar_t* rays_d, const scalar_t* aabb,
              scalar_t near, scalar_t* t_near, scalar_t* t_far) {
  ray_aabb_kernel<scalar_t><<<blocks_for(n), kThreads, 0, current_stream()>>>(
      n, rays_o, rays_d, aabb, near, t_near, t_far);
  check_launch("ray_aabb");
}

template <typename scalar_t>
void march_count(const MarchParams& mp, const scalar_t* rays_o, const scalar_t* rays_d,
                 const scalar_t* t_near, const scalar_t* t_far, const scalar_t* aabb,
                 const uint8_t* occupied, const scalar_t* noise, uint8_t* keep, int64_t* counts) {
  march_count_kernel<scalar_t><<<blocks_for(mp.n_rays), kThreads, 0, current_stream()>>>(
      mp, rays_o, rays_d, t_near, t_far, aabb, occupied, noise, keep, counts);
  check_launch("march_count");
}

template <typename scalar_t>
void march_fill(const MarchParams& mp, const scalar_t* rays_o, const scalar_t* rays_d,
                const scalar_t* t_near, const scalar_t* t_far, const scalar_t* aabb,
                const scalar_t* noise, const uint8_t* keep, const int64_t* offsets,
                int64_t* ray_indices, scalar_t* t_starts, scalar_t* t_ends, scalar_t* t_pos) {
  march_fill_kernel<scalar_t><<<blocks_for(mp.n_rays), kThreads, 0, current_stream()>>>(
      mp, rays_o, rays_d, t_near, t_far, aabb, noise, keep, offsets, ray_indices, t_starts,
      t_ends, t_pos);
  check_launch("march_fill");
}

#define INSTANTIATE(S)                                                                     \
  template void ray_aabb<S>(int64_t, const S*, const S*, const S*, S, S*, S*);             \
  template void march_count<S>(const MarchParams&, const S*, const S*, const S*, const S*, \
                               const S*, const uint8_t*, const S*, uint8_t*, int64_t*);    \
  template void march_fill<S>(const MarchParams&, const S*, const S*, const S*, const S*,  \
                              const S*, const S*, const uint8_t*, const int64_t*,          \
                              int64_t*, S*, S*, S*);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace cuda
}  // namespace synctalk
