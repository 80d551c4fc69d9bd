// OpenMP loops of volume compositing (math: include/synctalk/composite.h).
//
// The forward runs in four passes: per-sample optics over all samples (vectorised),
// each ray's prefix sums of the thicknesses (in double), per-sample transmittance and
// weights (vectorised), each ray's sums. They use the same functions of composite.h as
// the one-sweep composite_ray_forward of the CUDA kernels. The vectorised passes exist
// in the instruction-set variants of kernels.h (float32), and the per-ray loops are
// specialised for the usual channel counts (3 colours, 0 to 4 extras), whose per-ray
// accumulators then stay in registers.
#include <omp.h>

#include <algorithm>
#include <type_traits>

#include "synctalk/kernels.h"

namespace synctalk {
namespace cpu {
namespace {

constexpr int64_t kBlock = 4096;  // samples per vectorised block

#define ST_INLINE inline __attribute__((always_inline))

// Pass 1 over samples [i0, i1): alpha and exp(-s) to their outputs, s to trans (for now).
template <typename scalar_t>
ST_INLINE void optics_body(int64_t i0, int64_t i1, const CompositeInputs<scalar_t>& in,
                           const CompositeOutputs<scalar_t>& out) {
  const scalar_t* __restrict sigmas = in.sigmas;
  const scalar_t* __restrict t0 = in.t_starts;
  const scalar_t* __restrict t1 = in.t_ends;
  scalar_t* __restrict alphas = out.alphas;
  scalar_t* __restrict expneg = out.expneg;
  scalar_t* __restrict thick = out.trans;
#pragma GCC ivdep
  for (int64_t i = i0; i < i1; ++i) {
    const SampleOptics<scalar_t> o = sample_optics(sigmas[i], t0[i], t1[i]);
    alphas[i] = o.a;
    expneg[i] = o.e;
    thick[i] = o.s;
  }
}

// Pass 3 over samples [i0, i1): trans holds the optical depth before each sample; make
// it the transmittance, and the weights.
template <typename scalar_t>
ST_INLINE void weights_body(int64_t i0, int64_t i1, const CompositeOutputs<scalar_t>& out) {
  scalar_t* __restrict trans = out.trans;
  scalar_t* __restrict weights = out.weights;
  const scalar_t* __restrict alphas = out.alphas;
#pragma GCC ivdep
  for (int64_t i = i0; i < i1; ++i) {
    const scalar_t T = transmittance_of<scalar_t>(trans[i]);
    trans[i] = T;
    weights[i] = T * alphas[i];
  }
}

template <typename scalar_t>
struct SamplePasses {
  void (*optics)(int64_t, int64_t, const CompositeInputs<scalar_t>&,
                 const CompositeOutputs<scalar_t>&);
  void (*weights)(int64_t, int64_t, const CompositeOutputs<scalar_t>&);
};

#define ST_COMPOSITE_VARIANT(NAME, ATTR)                                                     \
  template <typename scalar_t>                                                               \
  ATTR void optics_##NAME(int64_t i0, int64_t i1, const CompositeInputs<scalar_t>& in,      \
                          const CompositeOutputs<scalar_t>& out) {                           \
    optics_body(i0, i1, in, out);                                                            \
  }                                                                                          \
  template <typename scalar_t>                                                               \
  ATTR void weights_##NAME(int64_t i0, int64_t i1, const CompositeOutputs<scalar_t>& out) { \
    weights_body(i0, i1, out);                                                               \
  }
ST_COMPOSITE_VARIANT(base, )
#if defined(ST_X86_VARIANTS)
ST_COMPOSITE_VARIANT(avx2, ST_TARGET_AVX2)
ST_COMPOSITE_VARIANT(avx512, ST_TARGET_AVX512)
#endif
#undef ST_COMPOSITE_VARIANT

template <typename scalar_t>
SamplePasses<scalar_t> sample_passes() {
#if defined(ST_X86_VARIANTS)
  if (std::is_same<scalar_t, float>::value) {
    switch (cpu_isa()) {
      case CpuIsa::kAvx512:
        return {&optics_avx512<scalar_t>, &weights_avx512<scalar_t>};
      case CpuIsa::kAvx2:
        return {&optics_avx2<scalar_t>, &weights_avx2<scalar_t>};
      default:
        break;
    }
  }
#endif
  return {&optics_base<scalar_t>, &weights_base<scalar_t>};
}

// Calls FN<CT, KT>(args) with compile-time channel counts for 3 colours and 0..4 extras,
// FN<0, -1> (counts read from dm) otherwise.
#define ST_CHANNEL_DISPATCH(FN, dm, ...)              \
  do {                                                \
    if ((dm).n_color == 3 && (dm).n_extras <= 4) {    \
      switch ((dm).n_extras) {                        \
        case 0: FN<3, 0>(__VA_ARGS__); break;         \
        case 1: FN<3, 1>(__VA_ARGS__); break;         \
        case 2: FN<3, 2>(__VA_ARGS__); break;         \
        case 3: FN<3, 3>(__VA_ARGS__); break;         \
        default: FN<3, 4>(__VA_ARGS__); break;        \
      }                                               \
    } else {                                          \
      FN<0, -1>(__VA_ARGS__);                         \
    }                                                 \
  } while (0)

template <int CT, int KT, typename scalar_t>
void ray_sums(const CompositeDims& dm, const int64_t* offsets, const int64_t* counts,
              const CompositeInputs<scalar_t>& in, const CompositeOutputs<scalar_t>& out) {
#pragma omp for schedule(static)
  for (int64_t r = 0; r < dm.n_rays; ++r) {
    composite_ray_sums<CT, KT, scalar_t>(dm, r, offsets[r], counts[r], in, out);
  }
}

template <int CT, int KT, typename scalar_t>
void ray_backward(const CompositeDims& dm, const int64_t* offsets, const int64_t* counts,
                  const CompositeInputs<scalar_t>& in, const scalar_t* weights,
                  const scalar_t* trans, const scalar_t* expneg, const scalar_t* opacity,
                  const CompositeGrads<scalar_t>& g, const CompositeInputGrads<scalar_t>& grad) {
#pragma omp parallel for schedule(dynamic, 256) if (worth_parallel(dm.n_samples + dm.n_rays))
  for (int64_t r = 0; r < dm.n_rays; ++r) {
    composite_ray_backward<CT, KT, scalar_t>(dm, r, offsets[r], counts[r], in, weights, trans,
                                             expneg, opacity, g, grad);
  }
}

}  // namespace

template <typename scalar_t>
void composite_forward(const CompositeDims& dm, const int64_t* offsets, const int64_t* counts,
                       const CompositeInputs<scalar_t>& in,
                       const CompositeOutputs<scalar_t>& out) {
  const int64_t S = dm.n_samples, N = dm.n_rays;
  const int64_t n_blocks = (S + kBlock - 1) / kBlock;
  const SamplePasses<scalar_t> passes = sample_passes<scalar_t>();
#pragma omp parallel if (worth_parallel(S + N))
  {
#pragma omp for schedule(static)
    for (int64_t b = 0; b < n_blocks; ++b) {
      passes.optics(b * kBlock, std::min(S, (b + 1) * kBlock), in, out);
    }
#pragma omp for schedule(static)
    for (int64_t r = 0; r < N; ++r) {  // exclusive prefix sums of the thicknesses
      double optical = 0.0;
      for (int64_t i = offsets[r]; i < offsets[r] + counts[r]; ++i) {
        const scalar_t s = out.trans[i];
        out.trans[i] = static_cast<scalar_t>(optical);
        optical += static_cast<double>(s);
      }
    }
#pragma omp for schedule(static)
    for (int64_t b = 0; b < n_blocks; ++b) {
      passes.weights(b * kBlock, std::min(S, (b + 1) * kBlock), out);
    }
    ST_CHANNEL_DISPATCH(ray_sums, dm, dm, offsets, counts, in, out);
  }
}

template <typename scalar_t>
void composite_backward(const CompositeDims& dm, const int64_t* offsets, const int64_t* counts,
                        const CompositeInputs<scalar_t>& in, const scalar_t* weights,
                        const scalar_t* trans, const scalar_t* expneg, const scalar_t* opacity,
                        const CompositeGrads<scalar_t>& g,
                        const CompositeInputGrads<scalar_t>& grad) {
  ST_CHANNEL_DISPATCH(ray_backward, dm, dm, offsets, counts, in, weights, trans, expneg, opacity,
                      g, grad);
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

}  // namespace cpu
}  // namespace synctalk
