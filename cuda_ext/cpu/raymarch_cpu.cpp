// OpenMP loops of ray-box intersection and occupancy-grid marching
// (math: include/synctalk/raymarch.h).
#include <omp.h>

#include "synctalk/kernels.h"

namespace synctalk {
namespace cpu {

template <typename scalar_t>
void ray_aabb(int64_t n, const scalar_t* rays_o, const scalar_t* rays_d, const scalar_t* aabb,
              scalar_t near, scalar_t* t_near, scalar_t* t_far) {
#pragma omp parallel for schedule(static) if (worth_parallel(n))
  for (int64_t r = 0; r < n; ++r) {
    ray_aabb_one<scalar_t>(rays_o + 3 * r, rays_d + 3 * r, aabb, aabb + 3, near, t_near + r,
                           t_far + r);
  }
}

template <typename scalar_t>
void march_count(const MarchParams& mp, const scalar_t* rays_o, const scalar_t* rays_d,
                 const scalar_t* t_near, const scalar_t* t_far, const scalar_t* aabb,
                 const uint8_t* occupied, const scalar_t* noise, uint8_t* keep, int64_t* counts) {
#pragma omp parallel for schedule(dynamic, 256) if (worth_parallel(mp.n_rays * mp.n_steps))
  for (int64_t r = 0; r < mp.n_rays; ++r) {
    const RayView<scalar_t> v = ray_view(mp, r, rays_o, rays_d, t_near, t_far, aabb, noise);
    counts[r] = march_ray_count(mp, v, occupied, keep + r * mp.n_steps);
  }
}

template <typename scalar_t>
void march_fill(const MarchParams& mp, const scalar_t* rays_o, const scalar_t* rays_d,
                const scalar_t* t_near, const scalar_t* t_far, const scalar_t* aabb,
                const scalar_t* noise, const uint8_t* keep, const int64_t* offsets,
                int64_t* ray_indices, scalar_t* t_starts, scalar_t* t_ends, scalar_t* t_pos) {
#pragma omp parallel for schedule(dynamic, 256) if (worth_parallel(mp.n_rays * mp.n_steps))
  for (int64_t r = 0; r < mp.n_rays; ++r) {
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

}  // namespace cpu
}  // namespace synctalk
