// OpenMP loops of the alive-ray loop (math: include/synctalk/alive.h): one iteration per
// alive ray.
#include <omp.h>

#include "synctalk/kernels.h"

namespace synctalk {
namespace cpu {

template <typename scalar_t>
void march_next(const MarchParams& mp, int64_t n_alive, int k, const int64_t* alive,
                const scalar_t* rays_o, const scalar_t* rays_d, const scalar_t* t_near,
                const scalar_t* t_far, const scalar_t* aabb, const uint8_t* occupied,
                int64_t* next_index, scalar_t* t_starts, scalar_t* t_ends, int64_t* count) {
  // Box extents that are powers of two (the head box's are) turn the cell divisions into
  // exact multiplications (cell_index_pow2).
  scalar_t inv_ext[3];
  bool pow2 = true;
  for (int a = 0; a < 3; ++a) {
    const scalar_t ext = sub_rn(aabb[3 + a], aabb[a]);
    pow2 = pow2 && is_pow2(ext);
    inv_ext[a] = scalar_t(1) / ext;
  }
  const scalar_t* inv = pow2 ? inv_ext : nullptr;
#pragma omp parallel for schedule(dynamic, 256) if (worth_parallel(n_alive * mp.n_steps))
  for (int64_t a = 0; a < n_alive; ++a) {
    const int64_t r = alive[a];
    scalar_t* t0 = t_starts + a * k;
    scalar_t* t1 = t_ends + a * k;
    if (r < 0 || r >= mp.n_rays) {  // checked in Python; never read out of bounds
      for (int j = 0; j < k; ++j) t0[j] = t1[j] = scalar_t(0);
      count[a] = 0;
      continue;
    }
    const RayView<scalar_t> v = ray_view(mp, r, rays_o, rays_d, t_near, t_far, aabb,
                                         static_cast<const scalar_t*>(nullptr));
    count[a] = march_next_ray(mp, v, occupied, inv, next_index[r], k, t0, t1, next_index + r);
  }
}

template <typename scalar_t>
void composite_step(const StepDims& dm, scalar_t early_stop, const StepInputs<scalar_t>& in,
                    const RayAccumulators<scalar_t>& acc, scalar_t* weights) {
#pragma omp parallel for schedule(static) if (worth_parallel(dm.n_alive * dm.k))
  for (int64_t a = 0; a < dm.n_alive; ++a) {
    composite_step_ray(dm, a, early_stop, in, acc, weights);
  }
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

}  // namespace cpu
}  // namespace synctalk
