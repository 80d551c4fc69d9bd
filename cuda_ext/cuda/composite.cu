// CUDA kernels of volume compositing (math: include/synctalk/composite.h).
// One thread per ray: the per-ray prefix products are a short sequential sweep.
#include "launch.cuh"
#include "synctalk/kernels.h"

namespace synctalk {
namespace cuda {
namespace {

template <typename scalar_t>
__global__ void forward_kernel(const CompositeDims dm, const int64_t* __restrict__ offsets,
                               const int64_t* __restrict__ counts,
                               const CompositeInputs<scalar_t> in,
                               const CompositeOutputs<scalar_t> out) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= dm.n_rays) return;
  composite_ray_forward<scalar_t>(dm, r, offsets[r], counts[r], in, out);
}

template <typename scalar_t>
__global__ void backward_kernel(const CompositeDims dm, const int64_t* __restrict__ offsets,
                                const int64_t* __restrict__ counts,
                                const CompositeInputs<scalar_t> in,
                                const scalar_t* __restrict__ weights,
                                const scalar_t* __restrict__ trans,
                                const scalar_t* __restrict__ expneg,
                                const scalar_t* __restrict__ opacity,
                                const CompositeGrads<scalar_t> g,
                                const CompositeInputGrads<scalar_t> grad) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= dm.n_rays) return;
  composite_ray_backward<0, -1, scalar_t>(dm, r, offsets[r], counts[r], in, weights, trans, expneg,
                                   opacity, g, grad);
}

}  // namespace

template <typename scalar_t>
void composite_forward(const CompositeDims& dm, const int64_t* offsets, const int64_t* counts,
                       const CompositeInputs<scalar_t>& in,
                       const CompositeOutputs<scalar_t>& out) {
  forward_kernel<scalar_t><<<blocks_for(dm.n_rays), kThreads, 0, current_stream()>>>(
      dm, offsets, counts, in, out);
  check_launch("composite_forward");
}

template <typename scalar_t>
void composite_backward(const CompositeDims& dm, const int64_t* offsets, const int64_t* counts,
                        const CompositeInputs<scalar_t>& in, const scalar_t* weights,
                        const scalar_t* trans, const scalar_t* expneg, const scalar_t* opacity,
                        const CompositeGrads<scalar_t>& g,
                        const CompositeInputGrads<scalar_t>& grad) {
  backward_kernel<scalar_t><<<blocks_for(dm.n_rays), kThreads, 0, current_stream()>>>(
      dm, offsets, counts, in, weights, trans, expneg, opacity, g, grad);
  check_launch("composite_backward");
}

#define INSTANTIATE(S)                                                                     \
  template void composite_forward<S>(const CompositeDims&, const int64_t*, const int64_t*, \
                                     const CompositeInputs<S>&, const CompositeOutputs<S>&); \
  template void composite_backward<S>(const CompositeDims&, const int64_t*, const int64_t*, \
                                      const CompositeInputs<S>&, const S*, const S*,        \
                                      const S*, const S*, const CompositeGrads<S>&,         \
                                      const CompositeInputGrads<S>&);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace cuda
}  // namespace synctalk
