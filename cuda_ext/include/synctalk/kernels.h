// Entry points of the native ops: thin loops over the per-element math of the other
// headers. cpu:: is compiled by g++ with OpenMP (cuda_ext/cpu/*.cpp), cuda:: by nvcc
// (cuda_ext/cuda/*.cu, only in a CUDA build). Both take raw pointers to contiguous
// arrays and sizes, never torch types, so these files build without torch headers.
// Tensor checks and allocation live in cuda_ext/bindings.cpp.
//
// scalar_t is float or double; table_t is scalar_t, or HalfBits (fp16 table) with
// scalar_t = float.
#pragma once

#include <cstdint>

#include "synctalk/alive.h"
#include "synctalk/common.h"
#include "synctalk/grid.h"
#include "synctalk/composite.h"
#include "synctalk/density.h"
#include "synctalk/raymarch.h"

namespace synctalk {

namespace cpu {
#include "synctalk/ops.inc"

// Whether a CPU loop over `work` elements is worth an OpenMP team: below this,
// waking threads costs more than it saves (much more on a busy machine).
inline bool worth_parallel(int64_t work) { return work >= (int64_t{1} << 15); }

// Instruction sets of the vectorised float32 CPU loops (2-D grids, marching,
// compositing): each such loop is compiled once per set from the same inline body
// (ST_CPU_VARIANTS) and the best one this CPU supports is chosen once at run time
// (cpu/plane_cpu.cpp); set_cpu_isa() picks a lower one (tests, benchmarks) and
// returns false when the CPU lacks the one asked for.
enum class CpuIsa { kBase = 0, kAvx2 = 1, kAvx512 = 2 };

// Marching on the CPU without a keep mask: march_count_packed leaves each ray's kept
// candidates (t_start, t_end, t_pos) compacted at the start of its rows of cand
// [N][3][K] (and their number in counts); march_copy_packed copies them into the packed
// outputs at offsets (t_pos may be nullptr). Same samples as march_count + march_fill.
template <typename scalar_t>
void march_count_packed(const MarchParams& mp, const scalar_t* rays_o, const scalar_t* rays_d,
                        const scalar_t* t_near, const scalar_t* t_far, const scalar_t* aabb,
                        const uint8_t* occupied, const scalar_t* noise, scalar_t* cand,
                        int64_t* counts);
template <typename scalar_t>
void march_copy_packed(const MarchParams& mp, const scalar_t* cand, const int64_t* offsets,
                       const int64_t* counts, int64_t* ray_indices, scalar_t* t_starts,
                       scalar_t* t_ends, scalar_t* t_pos);
CpuIsa cpu_isa();
bool set_cpu_isa(CpuIsa isa);

#if defined(__x86_64__) && defined(__GNUC__)
#define ST_X86_VARIANTS 1
#define ST_TARGET_AVX2 __attribute__((target("avx2,fma,bmi,bmi2")))
// AVX-512 instructions on 256-bit vectors (measured faster here than 512-bit ones).
#define ST_TARGET_AVX512                                                           \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi,bmi2," \
                        "prefer-vector-width=256")))
#endif
}  // namespace cpu

namespace cuda {
#include "synctalk/ops.inc"
}  // namespace cuda

}  // namespace synctalk
