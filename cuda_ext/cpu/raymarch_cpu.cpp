// OpenMP loops of ray-box intersection and occupancy-grid marching
// (math: include/synctalk/raymarch.h).
#include <omp.h>

#include <cstring>
#include <type_traits>
#include <vector>

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

namespace {

#define ST_INLINE inline __attribute__((always_inline))

// The candidates of one hitting ray: their cells (idx) and whether each interval is
// non-empty (ok), in a loop over the candidates that g++ vectorises (the step
// fractions are precomputed, the same values march_step gives).
// Per-thread buffers of one ray's candidates.
template <typename index_t, typename scalar_t>
struct Candidates {
  std::vector<index_t> idx;    // cell of each candidate
  std::vector<int32_t> ok;     // non-empty interval (int32, not bytes, so the loop
                               // vectorises at the width of its float arithmetic)
  std::vector<scalar_t> t[3];  // t_start, t_end, t_pos
  explicit Candidates(int K) : idx(K), ok(K), t{std::vector<scalar_t>(K), std::vector<scalar_t>(K),
                                                std::vector<scalar_t>(K)} {}
};

// The candidates of a hitting ray in one loop that g++ vectorises, the cell lookup fixed at
// compile time so the loop holds no branch: kPow2 uses the reciprocal extents inv
// (cell_index_pow2), otherwise the box bounds (cell_index).
template <bool kPerturb, bool kPow2, typename index_t, typename scalar_t>
ST_INLINE void candidate_cells(int K, int R, const RayView<scalar_t>& v, scalar_t span,
                               const scalar_t* __restrict steps, const scalar_t* inv,
                               index_t* __restrict idx, int32_t* __restrict ok,
                               scalar_t* __restrict t0s, scalar_t* __restrict t1s,
                               scalar_t* __restrict tps) {
  const scalar_t* __restrict noise = v.noise;
#pragma GCC ivdep
  for (int k = 0; k < K; ++k) {
    scalar_t t0, t1, tp;
    candidate_from_steps(kPerturb, v.t_near, span, steps[k], steps[k + 1],
                         kPerturb ? noise[k] : scalar_t(0), &t0, &t1, &tp);
    t0s[k] = t0;
    t1s[k] = t1;
    tps[k] = tp;
    ok[k] = t1 > t0 ? 1 : 0;
    if constexpr (kPow2)
      idx[k] = cell_index_pow2<scalar_t, index_t>(R, v.lo, inv, v.o, v.d, tp);
    else
      idx[k] = cell_index<scalar_t, index_t>(R, v.lo, v.hi, v.o, v.d, tp);
  }
}

// The candidates of one hitting ray: their intervals and positions, cells (idx) and
// whether each interval is non-empty (ok), the step fractions precomputed (the same values
// march_step gives). inv_ext: reciprocal box extents when they are powers of two (see
// cell_index_pow2), else nullptr.
template <bool kPerturb, typename index_t, typename scalar_t>
ST_INLINE void candidates_body(const MarchParams& mp, const RayView<scalar_t>& v,
                               const scalar_t* __restrict steps, const scalar_t* inv_ext,
                               index_t* __restrict idx, int32_t* __restrict ok,
                               scalar_t* __restrict t0s, scalar_t* __restrict t1s,
                               scalar_t* __restrict tps) {
  const int K = mp.n_steps, R = mp.grid_res;
  const scalar_t span = sub_rn(v.t_far, v.t_near);
  if (R == 0) {  // no grid: only the interval test
    for (int k = 0; k < K; ++k) {
      candidate_from_steps(kPerturb, v.t_near, span, steps[k], steps[k + 1],
                           kPerturb ? v.noise[k] : scalar_t(0), t0s + k, t1s + k, tps + k);
      ok[k] = t1s[k] > t0s[k] ? 1 : 0;
      idx[k] = index_t(0);
    }
    return;
  }
  if (inv_ext != nullptr) {
    const scalar_t inv[3] = {inv_ext[0], inv_ext[1], inv_ext[2]};
    candidate_cells<kPerturb, true>(K, R, v, span, steps, inv, idx, ok, t0s, t1s, tps);
  } else {
    candidate_cells<kPerturb, false>(K, R, v, span, steps, inv_ext, idx, ok, t0s, t1s, tps);
  }
}

template <typename index_t, typename scalar_t>
using CandidatesFn = void (*)(const MarchParams&, const RayView<scalar_t>&, const scalar_t*,
                              const scalar_t*, index_t*, int32_t*, scalar_t*, scalar_t*,
                              scalar_t*);

#define ST_MARCH_VARIANT(NAME, ATTR)                                                        \
  template <bool kPerturb, typename index_t, typename scalar_t>                             \
  ATTR void candidates_##NAME(const MarchParams& mp, const RayView<scalar_t>& v,            \
                              const scalar_t* steps, const scalar_t* inv_ext, index_t* idx, \
                              int32_t* ok, scalar_t* t0s, scalar_t* t1s, scalar_t* tps) {   \
    candidates_body<kPerturb>(mp, v, steps, inv_ext, idx, ok, t0s, t1s, tps);               \
  }
ST_MARCH_VARIANT(base, )
#if defined(ST_X86_VARIANTS)
ST_MARCH_VARIANT(avx2, ST_TARGET_AVX2)
ST_MARCH_VARIANT(avx512, ST_TARGET_AVX512)
#endif
#undef ST_MARCH_VARIANT

template <bool kPerturb, typename index_t, typename scalar_t>
CandidatesFn<index_t, scalar_t> candidates_fn() {
#if defined(ST_X86_VARIANTS)
  if (std::is_same<scalar_t, float>::value && std::is_same<index_t, int32_t>::value) {
    switch (cpu_isa()) {
      case CpuIsa::kAvx512:
        return &candidates_avx512<kPerturb, index_t, scalar_t>;
      case CpuIsa::kAvx2:
        return &candidates_avx2<kPerturb, index_t, scalar_t>;
      default:
        break;
    }
  }
#endif
  return &candidates_base<kPerturb, index_t, scalar_t>;
}

// Pass 1 over the rays. With `cand` (CPU packing, [N][3][K]): each ray's kept candidates'
// (t_start, t_end, t_pos), compacted at the start of its rows; with `keep` ([N, K]): the
// keep mask (march_count's contract).
template <typename index_t, typename scalar_t>
void count_rays(const MarchParams& mp, const scalar_t* rays_o, const scalar_t* rays_d,
                const scalar_t* t_near, const scalar_t* t_far, const scalar_t* aabb,
                const uint8_t* occupied, const scalar_t* noise, const scalar_t* steps,
                uint8_t* keep, scalar_t* cand, int64_t* counts) {
  const int K = mp.n_steps;
  const CandidatesFn<index_t, scalar_t> candidates =
      mp.perturb ? candidates_fn<true, index_t, scalar_t>() : candidates_fn<false, index_t, scalar_t>();
  // Box extents that are powers of two (the head box's are) turn the cell divisions
  // into exact multiplications.
  scalar_t inv_ext[3];
  bool pow2 = true;
  for (int a = 0; a < 3; ++a) {
    const scalar_t ext = sub_rn(aabb[3 + a], aabb[a]);
    pow2 = pow2 && is_pow2(ext);
    inv_ext[a] = scalar_t(1) / ext;
  }
  const scalar_t* inv = pow2 ? inv_ext : nullptr;
#pragma omp parallel if (worth_parallel(mp.n_rays * mp.n_steps))
  {
    Candidates<index_t, scalar_t> c(K);
#pragma omp for schedule(dynamic, 256)
    for (int64_t r = 0; r < mp.n_rays; ++r) {
      const RayView<scalar_t> v = ray_view(mp, r, rays_o, rays_d, t_near, t_far, aabb, noise);
      if (!(v.t_far > v.t_near)) {  // a miss keeps nothing
        if (keep != nullptr) std::memset(keep + r * K, 0, K);
        counts[r] = 0;
        continue;
      }
      candidates(mp, v, steps, inv, c.idx.data(), c.ok.data(), c.t[0].data(), c.t[1].data(),
                 c.t[2].data());
      int64_t count = 0;
      // No branches: the cells are always inside the grid.
      if (mp.occupancy_bits) {
        for (int k = 0; k < K; ++k) c.ok[k] &= bit_of(occupied, c.idx[k]);
      } else if (mp.grid_res > 0) {
        for (int k = 0; k < K; ++k) c.ok[k] &= occupied[c.idx[k]] != 0;
      }
      if (cand != nullptr) {
        scalar_t* row = cand + r * 3 * K;
        for (int k = 0; k < K; ++k) {  // branch-free compaction
          row[count] = c.t[0][k];
          row[K + count] = c.t[1][k];
          row[2 * K + count] = c.t[2][k];
          count += c.ok[k];
        }
      } else {
        for (int k = 0; k < K; ++k) {
          keep[r * K + k] = static_cast<uint8_t>(c.ok[k]);
          count += c.ok[k];
        }
      }
      counts[r] = count;
    }
  }
}

template <typename scalar_t>
std::vector<scalar_t> step_fractions(int K) {
  std::vector<scalar_t> steps(static_cast<size_t>(K) + 1);
  for (int k = 0; k <= K; ++k) steps[k] = march_step<scalar_t>(k, K);
  return steps;
}

template <typename scalar_t>
void count_any(const MarchParams& mp, const scalar_t* rays_o, const scalar_t* rays_d,
               const scalar_t* t_near, const scalar_t* t_far, const scalar_t* aabb,
               const uint8_t* occupied, const scalar_t* noise, uint8_t* keep, scalar_t* cand,
               int64_t* counts) {
  const std::vector<scalar_t> steps = step_fractions<scalar_t>(mp.n_steps);
  const int64_t R = mp.grid_res;
  if (R * R * R < (int64_t{1} << 31)) {
    count_rays<int32_t>(mp, rays_o, rays_d, t_near, t_far, aabb, occupied, noise, steps.data(),
                        keep, cand, counts);
  } else {
    count_rays<int64_t>(mp, rays_o, rays_d, t_near, t_far, aabb, occupied, noise, steps.data(),
                        keep, cand, counts);
  }
}

}  // namespace

// Pass 1 (march_ray_count of raymarch.h, split so that the arithmetic of a ray's
// candidates vectorises and the occupancy lookups follow).
template <typename scalar_t>
void march_count(const MarchParams& mp, const scalar_t* rays_o, const scalar_t* rays_d,
                 const scalar_t* t_near, const scalar_t* t_far, const scalar_t* aabb,
                 const uint8_t* occupied, const scalar_t* noise, uint8_t* keep, int64_t* counts) {
  count_any(mp, rays_o, rays_d, t_near, t_far, aabb, occupied, noise, keep,
            static_cast<scalar_t*>(nullptr), counts);
}

template <typename scalar_t>
void march_count_packed(const MarchParams& mp, const scalar_t* rays_o, const scalar_t* rays_d,
                        const scalar_t* t_near, const scalar_t* t_far, const scalar_t* aabb,
                        const uint8_t* occupied, const scalar_t* noise, scalar_t* cand,
                        int64_t* counts) {
  count_any(mp, rays_o, rays_d, t_near, t_far, aabb, occupied, noise, nullptr, cand, counts);
}

template <typename scalar_t>
void march_copy_packed(const MarchParams& mp, const scalar_t* cand, const int64_t* offsets,
                       const int64_t* counts, int64_t* ray_indices, scalar_t* t_starts,
                       scalar_t* t_ends, scalar_t* t_pos) {
  const int K = mp.n_steps;
#pragma omp parallel for schedule(static) if (worth_parallel(mp.n_rays * mp.n_steps))
  for (int64_t r = 0; r < mp.n_rays; ++r) {
    const int64_t j = offsets[r], c = counts[r];
    if (c == 0) continue;
    const scalar_t* row = cand + r * 3 * K;
    std::memcpy(t_starts + j, row, sizeof(scalar_t) * c);
    std::memcpy(t_ends + j, row + K, sizeof(scalar_t) * c);
    if (t_pos != nullptr) std::memcpy(t_pos + j, row + 2 * K, sizeof(scalar_t) * c);
    for (int64_t i = 0; i < c; ++i) ray_indices[j + i] = r;
  }
}

// Pass 2 (march_ray_fill of raymarch.h with the precomputed step fractions).
template <typename scalar_t>
void march_fill(const MarchParams& mp, const scalar_t* rays_o, const scalar_t* rays_d,
                const scalar_t* t_near, const scalar_t* t_far, const scalar_t* aabb,
                const scalar_t* noise, const uint8_t* keep, const int64_t* offsets,
                int64_t* ray_indices, scalar_t* t_starts, scalar_t* t_ends, scalar_t* t_pos) {
  const int K = mp.n_steps;
  const std::vector<scalar_t> steps = step_fractions<scalar_t>(K);
#pragma omp parallel for schedule(dynamic, 256) if (worth_parallel(mp.n_rays * mp.n_steps))
  for (int64_t r = 0; r < mp.n_rays; ++r) {
    const uint8_t* kr = keep + r * K;
    int64_t j = offsets[r];
    if (j == (r + 1 < mp.n_rays ? offsets[r + 1] : j + K + 1)) continue;  // keeps nothing
    const RayView<scalar_t> v = ray_view(mp, r, rays_o, rays_d, t_near, t_far, aabb, noise);
    const scalar_t span = sub_rn(v.t_far, v.t_near);
    for (int k = 0; k < K; ++k) {
      if (!kr[k]) continue;
      scalar_t t0, t1, tp;
      candidate_from_steps(mp.perturb, v.t_near, span, steps[k], steps[k + 1],
                           v.noise ? v.noise[k] : scalar_t(0), &t0, &t1, &tp);
      ray_indices[j] = r;
      t_starts[j] = t0;
      t_ends[j] = t1;
      if (t_pos != nullptr) t_pos[j] = tp;
      ++j;
    }
  }
}

#define INSTANTIATE(S)                                                                     \
  template void march_count_packed<S>(const MarchParams&, const S*, const S*, const S*,    \
                                      const S*, const S*, const uint8_t*, const S*, S*,    \
                                      int64_t*);                                           \
  template void march_copy_packed<S>(const MarchParams&, const S*, const int64_t*,         \
                                     const int64_t*, int64_t*, S*, S*, S*);                \
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
