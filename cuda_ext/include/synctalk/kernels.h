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
}  // namespace cpu

namespace cuda {
#include "synctalk/ops.inc"
}  // namespace cuda

}  // namespace synctalk
