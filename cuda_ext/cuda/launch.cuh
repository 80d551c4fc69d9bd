// Launch helpers shared by the CUDA kernels (no torch headers: the stream comes
// from current_stream(), defined in bindings.cpp where torch's current stream is
// known).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace synctalk {
namespace cuda {

// torch's current CUDA stream on the current device (bindings.cpp).
cudaStream_t current_stream();

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>((n + kThreads - 1) / kThreads);
}

// Throw (turned into a Python RuntimeError by pybind11) when the last launch failed.
inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": CUDA launch failed: " +
                             cudaGetErrorString(err));
  }
}

}  // namespace cuda
}  // namespace synctalk
