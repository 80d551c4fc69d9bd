// Shared definitions for the per-element math of the native ops.
//
// Every header in include/synctalk/ is plain C++17 that compiles with g++ (CPU
// build, no CUDA) and with nvcc (CUDA build). ST_HD marks functions callable from
// host and device code; under nvcc it expands to `__host__ __device__`.
#pragma once

#include <cmath>
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

// A short loop over the features of one table row: a SIMD loop on the CPU (the
// iterations are independent; g++ with -fopenmp turns F = 2 / 4 / 8 features into
// 64/128/256-bit vector operations), an unrolled loop in device code.
#if defined(__CUDA_ARCH__)
#define ST_SIMD _Pragma("unroll")
#elif defined(__CUDACC__)
#define ST_SIMD
#else
#define ST_SIMD _Pragma("omp simd")
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

// float <-> its bits.
ST_HD float float_from_bits(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
#endif
}

// exp(-x). float: Cody-Waite reduction to r in [-ln2/2, ln2/2] and a degree-7 Taylor
// polynomial (within 2 ulp of expf), written without branches or tables so that CPU
// loops over samples vectorise. Results below FLT_MIN (x > 87.33) are 0, x < -88.37 gives
// inf (the compositing ops only use x >= 0), NaN stays NaN. double: the library exp.
ST_HD float exp_neg(float x) {
  const float y = -x;
  float yc = y < -87.33f ? -87.33f : y;
  yc = yc > 88.37f ? 88.37f : yc;
  const float n = (yc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(y / ln 2)
  const float r = (yc - n * 0.693359375f) - n * -2.12194440e-4f;           // y - n ln 2
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const uint32_t scale = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;  // 2^n
  float out = p * float_from_bits(scale);
  out = y < -87.33f ? 0.0f : out;
  out = y > 88.37f ? float_from_bits(0x7F800000u) : out;
  return out;
}
ST_HD double exp_neg(double x) { return std::exp(-x); }

// 1 - exp(-s) given e = exp_neg(s). float: the Taylor series where |s| < 1/4 (there
// 1 - e would cancel digits), 1 - e elsewhere; within a few ulp of -expm1f(-s).
// double: -expm1(-s).
ST_HD float one_minus_exp_neg(float s, float e) {
  const float series =
      s * (1.0f - s * (0.5f - s * (1.0f / 6.0f - s * (1.0f / 24.0f - s * (1.0f / 120.0f -
                                                  s * (1.0f / 720.0f - s * (1.0f / 5040.0f)))))));
  const float abs_s = s < 0.0f ? -s : s;
  return abs_s < 0.25f ? series : 1.0f - e;
}
ST_HD double one_minus_exp_neg(double s, double) { return -std::expm1(-s); }

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
