// Shared definitions for the per-element math of the native ops.
//
// Every header in include/synctalk/ is plain C++17 that compiles with g++ (CPU
// build, no CUDA) and with nvcc (CUDA build). ST_HD marks functions callable from
// host and device code; under nvcc it expands to `__host__ __device__`.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define ST_HD __host__ __device__ __forceinline__
#else
#define ST_HD inline __attribute__((always_inline))
#endif

// Unroll a loop with a compile-time trip count: nvcc's pragma in device code, GCC's
// in the CPU build, nothing in the host pass of nvcc (whose front end knows neither
// the other's pragma; host code of .cu files is never run).
#if defined(__CUDA_ARCH__)
#define ST_UNROLL _Pragma("unroll")
#elif defined(__CUDACC__)
#define ST_UNROLL
#else
#define ST_UNROLL _Pragma("GCC unroll 8")
#endif

namespace synctalk {

// Arithmetic whose rounding must match the torch reference bit for bit (sample
// positions, cell indices): nvcc would otherwise contract a*b+c into one fused
// multiply-add, which rounds once instead of twice. Host code is compiled without
// -ffp-contract=fast / -ffast-math, so plain operators round each step there.
ST_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
ST_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
ST_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
ST_HD double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
ST_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
ST_HD double sub_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
ST_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
ST_HD double div_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

// IEEE 754 binary16 bits -> float, exact for every input (normals, subnormals,
// zeros, infinities, NaN). Host-side loader for fp16 embedding tables, which the
// CPU loops receive as raw 16-bit words (at::Half's storage).
ST_HD float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t man = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0x1Fu) {  // inf / NaN
    bits = sign | 0x7F800000u | (man << 13);
  } else if (exp != 0) {  // normal
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man == 0) {  // signed zero
    bits = sign;
  } else {  // subnormal: normalise the mantissa
    int e = -1;
    do {
      man <<= 1;
      ++e;
    } while ((man & 0x400u) == 0);
    bits = sign | ((112u - static_cast<uint32_t>(e)) << 23) | ((man & 0x3FFu) << 13);
  }
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  static_assert(sizeof(f) == sizeof(bits), "float must be 32 bits");
  std::memcpy(&f, &bits, sizeof(f));
  return f;
#endif
}

// Table element -> compute type. fp16 tables arrive as raw 16-bit words (HalfBits,
// at::Half's storage) in both builds; device code converts them with the hardware
// instruction, host code with half_bits_to_float.
struct HalfBits {
  uint16_t bits;
};

template <typename scalar_t, typename table_t>
struct TableLoad {
  ST_HD static scalar_t load(const table_t& v) { return static_cast<scalar_t>(v); }
};
template <typename scalar_t>
struct TableLoad<scalar_t, HalfBits> {
  ST_HD static scalar_t load(const HalfBits& v) {
#if defined(__CUDA_ARCH__)
    return static_cast<scalar_t>(__half2float(__ushort_as_half(v.bits)));
#else
    return static_cast<scalar_t>(half_bits_to_float(v.bits));
#endif
  }
};

}  // namespace synctalk
