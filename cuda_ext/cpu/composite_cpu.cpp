// OpenMP loops of volume compositing (math: include/synctalk/composite.h).
#include <omp.h>

#include "synctalk/kernels.h"

namespace synctalk {
namespace cpu {

template <typename scalar_t>
void composite_forward(const CompositeDims& dm, const int64_t* offsets, const int64_t* counts,
                       const CompositeInputs<scalar_t>& in,
                       const CompositeOutputs<scalar_t>& out) {
#pragma omp parallel for schedule(dynamic, 256) if (worth_parallel(dm.n_samples + dm.n_rays))
  for (int64_t r = 0; r < dm.n_rays; ++r) {
    composite_ray_forward<scalar_t>(dm, r, offsets[r], counts[r], in, out);
  }
}

template <typename scalar_t>
void composite_backward(const CompositeDims& dm, const int64_t* offsets, const int64_t* counts,
                        const CompositeInputs<scalar_t>& in, const scalar_t* weights,
                        const scalar_t* trans, const scalar_t* opacity,
                        const CompositeGrads<scalar_t>& g,
                        const CompositeInputGrads<scalar_t>& grad) {
#pragma omp parallel for schedule(dynamic, 256) if (worth_parallel(dm.n_samples + dm.n_rays))
  for (int64_t r = 0; r < dm.n_rays; ++r) {
    composite_ray_backward<scalar_t>(dm, r, offsets[r], counts[r], in, weights, trans, opacity,
                                     g, grad);
  }
}

#define INSTANTIATE(S)                                                                     \
  template void composite_forward<S>(const CompositeDims&, const int64_t*, const int64_t*, \
                                     const CompositeInputs<S>&, const CompositeOutputs<S>&); \
  template void composite_backward<S>(const CompositeDims&, const int64_t*, const int64_t*, \
                                      const CompositeInputs<S>&, const S*, const S*,        \
                                      const S*, const CompositeGrads<S>&,                   \
                                      const CompositeInputGrads<S>&);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace cpu
}  // namespace synctalk
