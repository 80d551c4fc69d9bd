// CPU loops of the 2-D grid encoding: one plane or the tri-plane (math: the plane_*
// functions of include/synctalk/grid.h).
//
// Layout of the work, chosen for random points and tables larger than the L2 cache
// (measured on a busy 2-core machine, where other processes keep evicting it):
//
// * Loops are level-major: one (plane, level) "column" at a time over many points, so
//   the column's block of the table is pulled into cache once and then read / updated
//   by all of them. Columns of large levels (kLargeLevelBytes of table per plane) run
//   over super-chunks of up to kMaxChunk points; the small ones over sub-chunks whose
//   scratch stays in the L2 cache.
// * A column pass runs in kCell-point steps of two parts: a vectorised pass over the
//   points computing their cells (rows and fractions, SoA buffers), then a per-point
//   pass doing the table reads / updates with the feature-wide plane_forward_dense /
//   plane_backward_dense; on very large levels the next step's rows are prefetched.
// * The forward writes each column to level-major scratch and transposes the scratch
//   into the output rows (through a small buffer, whole rows per memcpy); the backward
//   transposes grad_out rows into that layout first.
// * The table gradient is zeroed level by level inside the loop (just before the level
//   is first updated) and needs no atomics: threads split the columns, which own
//   disjoint rows. The forward splits super-chunks between threads.
//
// Each of those steps exists in up to three instruction-set variants selected once at
// run time (AVX-512, AVX2, baseline x86-64 / any other CPU), all compiled from the same
// inline bodies; only float32 inputs with float32 tables get the SIMD variants. In the
// AVX-512 variant, levels of F = 2 features (one 64-bit word per table row) also
// vectorise the per-point table pass across points: the forward gathers the four corners
// of 8 points at once, the backward computes the corner contributions of 16 points in
// vectors and adds them row by row — the same operations in the same order, so every
// variant gives the same bits.
#include <omp.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>

#include "synctalk/kernels.h"

namespace synctalk {
namespace cpu {
namespace {

// Sizes (see the top of the file). Large levels (more than kLargeLevelBytes of table per
// plane) run over super-chunks of up to kMaxChunk points whose level-major scratch
// (those columns only) stays within kScratchBytes; small levels over sub-chunks whose
// scratch (the small columns) fits in about a third of a 2 MB L2 cache.
constexpr int kCell = 256;                                  // points per cell pass
constexpr int kRowBlock = 64;                               // output rows per memcpy
constexpr int64_t kScratchBytes = int64_t{16} << 20;        // large-column scratch, at most
constexpr int64_t kMaxChunk = 65536;                        // points per super-chunk, at most
constexpr int64_t kSubChunkBytes = int64_t{640} << 10;      // small-column scratch
constexpr int64_t kLargeLevelBytes = int64_t{256} << 10;    // large level, per plane
constexpr int64_t kPrefetchBytes = int64_t{768} << 10;      // prefetch rows of levels this big
constexpr int kAhead = 16;                                  // points ahead to prefetch

#define ST_INLINE inline __attribute__((always_inline))

// Compile-time instruction set of a variant's inline bodies (the CpuIsa values).
constexpr int kIsaBase = 0, kIsaAvx512 = 2;

template <typename scalar_t>
struct CellBuf {
  alignas(64) uint32_t r[4][kCell];  // rows: corner 0 (dense) or corners 0..3 (hashed)
  alignas(64) scalar_t fu[kCell];
  alignas(64) scalar_t fv[kCell];
};

// Grow-only, 64-byte aligned per-thread scratch memory (kept between calls, so that a
// training loop does not page-fault fresh buffers in every step).
class Workspace {
 public:
  void* get(size_t bytes) {
    if (bytes > size_) {
      buf_.reset(static_cast<unsigned char*>(std::aligned_alloc(64, round_up(bytes))));
      if (!buf_) throw std::bad_alloc();
      size_ = round_up(bytes);
    }
    return buf_.get();
  }

 private:
  struct Free {
    void operator()(unsigned char* p) const { std::free(p); }
  };
  static size_t round_up(size_t b) { return (b + 63) / 64 * 64; }
  std::unique_ptr<unsigned char, Free> buf_;
  size_t size_ = 0;
};

Workspace& thread_workspace() {
  thread_local Workspace ws;
  return ws;
}

Workspace& shared_workspace() {
  thread_local Workspace ws;  // the calling thread's; shared with its OpenMP team
  return ws;
}

// Everything one call shares.
template <typename scalar_t, typename table_t>
struct Call {
  GridLevels g;
  PlaneAxes a;
  int64_t n;
  int64_t sc;   // points per super-chunk
  int64_t sub;  // points per sub-chunk (small levels)
  const scalar_t* x;
  const table_t* table;
  const scalar_t* grad_out;
  scalar_t* out;
  scalar_t* grad_table;
  scalar_t* grad_x;
};

int64_t level_rows(const GridLevels& g, int l) {
  return (l + 1 < g.n_levels ? g.offset[l + 1] : g.n_rows) - g.offset[l];
}

// Per-thread buffers of one chunk: clamped coordinates [in_dim][sc], two cell
// buffers, the input-gradient accumulators [in_dim][sc] and (forward) the scratch.
template <typename scalar_t>
struct ChunkBufs {
  scalar_t* xs;
  CellBuf<scalar_t>* cells;  // [2]
  scalar_t* gx;
  scalar_t* rows;     // kRowBlock output rows (forward)
  scalar_t* scratch;
};

template <typename scalar_t>
ChunkBufs<scalar_t> chunk_bufs(Workspace& ws, int in_dim, int64_t sc, int64_t row_elems,
                               int64_t scratch_elems) {
  auto padded = [](size_t b) { return (b + 63) / 64 * 64; };
  const size_t xs_bytes = padded(sizeof(scalar_t) * in_dim * sc);
  const size_t cell_bytes = sizeof(CellBuf<scalar_t>) * 2;
  const size_t row_bytes = padded(sizeof(scalar_t) * kRowBlock * row_elems);
  const size_t sc_bytes = sizeof(scalar_t) * scratch_elems;
  unsigned char* base =
      static_cast<unsigned char*>(ws.get(2 * xs_bytes + cell_bytes + row_bytes + sc_bytes));
  ChunkBufs<scalar_t> b;
  b.xs = reinterpret_cast<scalar_t*>(base);
  b.gx = reinterpret_cast<scalar_t*>(base + xs_bytes);
  b.cells = reinterpret_cast<CellBuf<scalar_t>*>(base + 2 * xs_bytes);
  b.rows = reinterpret_cast<scalar_t*>(base + 2 * xs_bytes + cell_bytes);
  b.scratch = reinterpret_cast<scalar_t*>(base + 2 * xs_bytes + cell_bytes + row_bytes);
  return b;
}

// ------------------------------------------------------------------ inline bodies

template <typename scalar_t>
ST_INLINE void clamp_coords(const scalar_t* __restrict x, int in_dim, int64_t i0, int64_t m,
                            int64_t sc, scalar_t* __restrict xs) {
  for (int d = 0; d < in_dim; ++d) {
    scalar_t* __restrict dst = xs + d * sc;
    const scalar_t* __restrict src = x + i0 * in_dim + d;
    for (int64_t j = 0; j < m; ++j) dst[j] = clamp_unit(src[j * in_dim]);
  }
}

// The cells of points [0, m) of one plane / level (vectorised over the points).
template <bool kHashed, typename scalar_t>
ST_INLINE void cell_pass(const Level& lv, int m, const scalar_t* __restrict xu,
                         const scalar_t* __restrict xv, CellBuf<scalar_t>& b) {
  const uint32_t res = lv.res, mask = lv.mask;
  uint32_t* __restrict r0 = b.r[0];
  uint32_t* __restrict r1 = b.r[1];
  uint32_t* __restrict r2 = b.r[2];
  uint32_t* __restrict r3 = b.r[3];
  scalar_t* __restrict fu = b.fu;
  scalar_t* __restrict fv = b.fv;
#pragma GCC ivdep
  for (int j = 0; j < m; ++j) {
    const AxisCell<scalar_t> u = axis_cell(xu[j], res), v = axis_cell(xv[j], res);
    if (kHashed) {
      const PlaneRows r = plane_rows_hashed(mask, u.i0, v.i0);
      r0[j] = r.r0;
      r1[j] = r.r1;
      r2[j] = r.r2;
      r3[j] = r.r3;
    } else {
      r0[j] = plane_row_dense(res, u.i0, v.i0);
    }
    fu[j] = u.frac;
    fv[j] = v.frac;
  }
}

// Run `body(j0, cells, cnt, next_cells, next_cnt)` over steps of kCell of the m points of
// one plane / level, after their cell pass; the next step's cells are computed first,
// so that a body can prefetch rows ahead across the step boundary.
template <bool kHashed, typename scalar_t, typename Body>
ST_INLINE void level_pass(const Level& lv, int64_t m, const scalar_t* xu, const scalar_t* xv,
                          CellBuf<scalar_t>* cells, Body&& body) {
  int cur = 0;
  int cnt = static_cast<int>(std::min<int64_t>(kCell, m));
  if (cnt <= 0) return;
  cell_pass<kHashed>(lv, cnt, xu, xv, cells[0]);
  for (int64_t j0 = 0; j0 < m; j0 += kCell) {
    const int64_t j1 = j0 + kCell;
    int next = 0;
    if (j1 < m) {
      next = static_cast<int>(std::min<int64_t>(kCell, m - j1));
      cell_pass<kHashed>(lv, next, xu + j1, xv + j1, cells[cur ^ 1]);
    }
    body(j0, cells[cur], cnt, cells[cur ^ 1], next);
    cur ^= 1;
    cnt = next;
  }
}

// Software prefetch of the rows point j + kAhead will touch (in `base`, rows of F
// elements), used on levels too large for the cache; j + kAhead may fall in the next
// step's cells.
template <bool kHashed, typename scalar_t, typename T>
ST_INLINE void prefetch_ahead(const T* base, int64_t F, int64_t s, int j, const CellBuf<scalar_t>& b,
                              int cnt, const CellBuf<scalar_t>& nb, int next_cnt) {
  int q = j + kAhead;
  const CellBuf<scalar_t>* src = &b;
  if (q >= cnt) {
    q -= cnt;
    src = &nb;
    if (q >= next_cnt) return;
  }
  const int64_t q0 = src->r[0][q];
  __builtin_prefetch(base + q0 * F);
  __builtin_prefetch(base + (kHashed ? static_cast<int64_t>(src->r[2][q]) : q0 + s) * F);
}

#if defined(ST_X86_VARIANTS)
// AVX-512 table passes of a 2-feature float32 level (called once per kCell points, not
// inlined: the bodies that call them are not all compiled for AVX-512). A row is one
// 64-bit word; the corners of point j are rows r[0..3][j] (hashed) or r0, r0 + 1,
// r0 + s, r0 + s + 1 (dense, s = res + 1, r0 = r[0][j]).
#define ST_X512 ST_TARGET_AVX512 __attribute__((noinline))

// v[idx] (the zero-masking form of the permute, like the masked loads and gathers below:
// GCC 12's plain forms warn about their undefined pass-through lanes).
ST_TARGET_AVX512 inline __attribute__((always_inline)) __m512 permute_ps(__m512i idx, __m512 v) {
  return _mm512_maskz_permutexvar_ps(0xFFFF, idx, v);
}

// Forward of points [0, cnt) in steps of 8 into dst [cnt][2] (as plane_forward:
// lerp(lerp(t0, t2, fv), lerp(t1, t3, fv), fu)); returns the points done (a multiple
// of 8; the caller does the rest).
template <bool kHashed, bool kPrefetch>
ST_X512 int forward_points_f2_x512(const Level& lv, const float* t, const CellBuf<float>& b,
                                   int cnt, const CellBuf<float>& nb, int next_cnt, float* dst) {
  const long long* rows = reinterpret_cast<const long long*>(t);
  const __m512i dup = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
  const __m256i one = _mm256_set1_epi32(1);
  const __m512i zero = _mm512_setzero_si512();
  const __m256i stride = _mm256_set1_epi32(static_cast<int>(lv.res + 1u));
  int j = 0;
  for (; j + 8 <= cnt; j += 8) {
    if (kPrefetch) {
      for (int k = 0; k < 8; ++k) {
        prefetch_ahead<kHashed>(t, 2, lv.res + 1, j + k, b, cnt, nb, next_cnt);
      }
    }
    const __m256i i0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(b.r[0] + j));
    __m256i i1, i2, i3;
    if (kHashed) {
      i1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(b.r[1] + j));
      i2 = _mm256_load_si256(reinterpret_cast<const __m256i*>(b.r[2] + j));
      i3 = _mm256_load_si256(reinterpret_cast<const __m256i*>(b.r[3] + j));
    } else {
      i1 = _mm256_add_epi32(i0, one);
      i2 = _mm256_add_epi32(i0, stride);
      i3 = _mm256_add_epi32(i2, one);
    }
    const __m512 c0 = _mm512_castsi512_ps(_mm512_mask_i32gather_epi64(zero, 0xFF, i0, rows, 8));
    const __m512 c1 = _mm512_castsi512_ps(_mm512_mask_i32gather_epi64(zero, 0xFF, i1, rows, 8));
    const __m512 c2 = _mm512_castsi512_ps(_mm512_mask_i32gather_epi64(zero, 0xFF, i2, rows, 8));
    const __m512 c3 = _mm512_castsi512_ps(_mm512_mask_i32gather_epi64(zero, 0xFF, i3, rows, 8));
    const __m512 fu = permute_ps(dup, _mm512_maskz_loadu_ps(0xFF, b.fu + j));
    const __m512 fv = permute_ps(dup, _mm512_maskz_loadu_ps(0xFF, b.fv + j));
    const __m512 lo = _mm512_add_ps(c0, _mm512_mul_ps(fv, _mm512_sub_ps(c2, c0)));
    const __m512 hi = _mm512_add_ps(c1, _mm512_mul_ps(fv, _mm512_sub_ps(c3, c1)));
    _mm512_storeu_ps(dst + 2 * j, _mm512_add_ps(lo, _mm512_mul_ps(fu, _mm512_sub_ps(hi, lo))));
  }
  return j;
}

// Table-gradient backward of points [0, cnt) in steps of 16 (as plane_backward /
// plane_backward_dense): per point q = (g0 (1-fu), g1 (1-fu), g0 fu, g1 fu), corners
// (0, 1) get q (1-fv) and corners (2, 3) q fv, computed in vectors, then added to the
// rows point by point, corner by corner. Returns the points done (a multiple of 16).
template <bool kHashed, bool kPrefetch>
ST_X512 int backward_points_f2_x512(const Level& lv, const CellBuf<float>& b, int cnt,
                                    const CellBuf<float>& nb, int next_cnt, const float* g,
                                    float* gt) {
  alignas(64) float low[64], high[64];  // 16 points x 4: corners (0, 1) and (2, 3)
  const __m512i lane = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  const __m512i gidx = _mm512_set_epi32(7, 6, 7, 6, 5, 4, 5, 4, 3, 2, 3, 2, 1, 0, 1, 0);
  const __m512 one = _mm512_set1_ps(1.0f);
  const int64_t s2 = 2 * (static_cast<int64_t>(lv.res) + 1);
  int j = 0;
  for (; j + 16 <= cnt; j += 16) {
    if (kPrefetch) {
      for (int k = 0; k < 16; ++k) {
        prefetch_ahead<kHashed>(gt, 2, lv.res + 1, j + k, b, cnt, nb, next_cnt);
      }
    }
    for (int h = 0; h < 4; ++h) {  // 4 points per vector
      const int q0 = j + 4 * h;
      const __m512 fu = permute_ps(lane, _mm512_maskz_loadu_ps(0xF, b.fu + q0));
      const __m512 fv = permute_ps(lane, _mm512_maskz_loadu_ps(0xF, b.fv + q0));
      const __m512 gg = permute_ps(gidx, _mm512_maskz_loadu_ps(0xFF, g + 2 * q0));
      const __m512 w = _mm512_mask_blend_ps(0xCCCC, _mm512_sub_ps(one, fu), fu);
      const __m512 q = _mm512_mul_ps(gg, w);
      _mm512_store_ps(low + 16 * h, _mm512_mul_ps(q, _mm512_sub_ps(one, fv)));
      _mm512_store_ps(high + 16 * h, _mm512_mul_ps(q, fv));
    }
    for (int k = 0; k < 16; ++k) {
      const float* a = low + 4 * k;
      const float* c = high + 4 * k;
      if (kHashed) {
        float* r0 = gt + 2 * static_cast<int64_t>(b.r[0][j + k]);
        float* r1 = gt + 2 * static_cast<int64_t>(b.r[1][j + k]);
        float* r2 = gt + 2 * static_cast<int64_t>(b.r[2][j + k]);
        float* r3 = gt + 2 * static_cast<int64_t>(b.r[3][j + k]);
        r0[0] += a[0];
        r0[1] += a[1];
        r1[0] += a[2];
        r1[1] += a[3];
        r2[0] += c[0];
        r2[1] += c[1];
        r3[0] += c[2];
        r3[1] += c[3];
      } else {
        float* lo = gt + 2 * static_cast<int64_t>(b.r[0][j + k]);
        float* hi = lo + s2;
        _mm_storeu_ps(lo, _mm_add_ps(_mm_loadu_ps(lo), _mm_load_ps(a)));
        _mm_storeu_ps(hi, _mm_add_ps(_mm_loadu_ps(hi), _mm_load_ps(c)));
      }
    }
  }
  return j;
}

// Transposes between point-major rows and level-major columns of 8-byte elements (an
// F = 2 float32 or F = 1 float64 feature vector) in 8 x 8 blocks: 8 points of 8 columns
// are 8 vector loads, 24 shuffles and 8 vector stores.
ST_TARGET_AVX512 inline __attribute__((always_inline)) void transpose8x8_q(__m512i* r) {
  const __m512i lo = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0);
  const __m512i hi = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
  const __m512i lo2 = _mm512_set_epi64(11, 10, 9, 8, 3, 2, 1, 0);
  const __m512i hi2 = _mm512_set_epi64(15, 14, 13, 12, 7, 6, 5, 4);
  __m512i t[8], u[8];
  for (int k = 0; k < 4; ++k) {
    t[2 * k] = _mm512_maskz_unpacklo_epi64(0xFF, r[2 * k], r[2 * k + 1]);  // a0 b0 a2 b2 ..
    t[2 * k + 1] = _mm512_maskz_unpackhi_epi64(0xFF, r[2 * k], r[2 * k + 1]);  // a1 b1 a3 b3 ..
  }
  for (int k = 0; k < 2; ++k) {  // rows 4k .. 4k + 3
    u[4 * k] = _mm512_permutex2var_epi64(t[4 * k], lo, t[4 * k + 2]);          // elements 0, 4
    u[4 * k + 1] = _mm512_permutex2var_epi64(t[4 * k], hi, t[4 * k + 2]);      // 2, 6
    u[4 * k + 2] = _mm512_permutex2var_epi64(t[4 * k + 1], lo, t[4 * k + 3]);  // 1, 5
    u[4 * k + 3] = _mm512_permutex2var_epi64(t[4 * k + 1], hi, t[4 * k + 3]);  // 3, 7
  }
  r[0] = _mm512_permutex2var_epi64(u[0], lo2, u[4]);
  r[4] = _mm512_permutex2var_epi64(u[0], hi2, u[4]);
  r[2] = _mm512_permutex2var_epi64(u[1], lo2, u[5]);
  r[6] = _mm512_permutex2var_epi64(u[1], hi2, u[5]);
  r[1] = _mm512_permutex2var_epi64(u[2], lo2, u[6]);
  r[5] = _mm512_permutex2var_epi64(u[2], hi2, u[6]);
  r[3] = _mm512_permutex2var_epi64(u[3], lo2, u[7]);
  r[7] = _mm512_permutex2var_epi64(u[3], hi2, u[7]);
}

// rows[j * PL + pl] = cols[pl][j] for j < m.
ST_X512 void cols_to_rows_q_x512(int PL, int64_t m, const long long* const* cols,
                                 long long* rows) {
  int64_t j = 0;
  for (; j + 8 <= m; j += 8) {
    for (int pl = 0; pl < PL; pl += 8) {
      const int nc = std::min(8, PL - pl);
      __m512i r[8];
      for (int k = 0; k < 8; ++k) {
        r[k] = k < nc ? _mm512_loadu_si512(cols[pl + k] + j) : _mm512_setzero_si512();
      }
      transpose8x8_q(r);
      const __mmask8 keep = static_cast<__mmask8>((1u << nc) - 1u);
      for (int k = 0; k < 8; ++k) _mm512_mask_storeu_epi64(rows + (j + k) * PL + pl, keep, r[k]);
    }
  }
  for (; j < m; ++j) {
    for (int pl = 0; pl < PL; ++pl) rows[j * PL + pl] = cols[pl][j];
  }
}

// cols[pl][j] = rows[j * PL + pl] for j < m.
ST_X512 void rows_to_cols_q_x512(int PL, int64_t m, const long long* rows,
                                 long long* const* cols) {
  int64_t j = 0;
  for (; j + 8 <= m; j += 8) {
    for (int pl = 0; pl < PL; pl += 8) {
      const int nc = std::min(8, PL - pl);
      const __mmask8 keep = static_cast<__mmask8>((1u << nc) - 1u);
      __m512i r[8];
      for (int k = 0; k < 8; ++k) r[k] = _mm512_maskz_loadu_epi64(keep, rows + (j + k) * PL + pl);
      transpose8x8_q(r);
      for (int k = 0; k < nc; ++k) _mm512_storeu_si512(cols[pl + k] + j, r[k]);
    }
  }
  for (; j < m; ++j) {
    for (int pl = 0; pl < PL; ++pl) cols[pl][j] = rows[j * PL + pl];
  }
}
#undef ST_X512
#endif

// Whether a variant's table passes take the AVX-512 F = 2 paths above.
template <int kIsa, int FT, typename scalar_t, typename table_t>
constexpr bool kX512F2 =
#if defined(ST_X86_VARIANTS)
    kIsa == kIsaAvx512 && FT == 2 && std::is_same<scalar_t, float>::value &&
    std::is_same<table_t, float>::value;
#else
    false;
#endif

template <int kIsa, int FT, bool kHashed, bool kPrefetch, typename scalar_t, typename table_t>
ST_INLINE void forward_points(int F, const Level& lv, const table_t* __restrict t,
                              const CellBuf<scalar_t>& b, int cnt, const CellBuf<scalar_t>& nb,
                              int next_cnt, scalar_t* __restrict dst) {
  const int64_t s = static_cast<int64_t>(lv.res) + 1;
  int j = 0;
#if defined(ST_X86_VARIANTS)
  if constexpr (kX512F2<kIsa, FT, scalar_t, table_t>) {
    j = forward_points_f2_x512<kHashed, kPrefetch>(lv, t, b, cnt, nb, next_cnt, dst);
  }
#endif
  for (; j < cnt; ++j) {
    if (kPrefetch) prefetch_ahead<kHashed>(t, F, s, j, b, cnt, nb, next_cnt);
    const table_t* c0 = t + static_cast<int64_t>(b.r[0][j]) * F;
    if (kHashed) {
      plane_forward<FT>(F, c0, t + static_cast<int64_t>(b.r[1][j]) * F,
                        t + static_cast<int64_t>(b.r[2][j]) * F,
                        t + static_cast<int64_t>(b.r[3][j]) * F, b.fu[j], b.fv[j], dst + j * F);
    } else if (FT > 0) {
      plane_forward_dense<(FT > 0 ? FT : 1)>(c0, c0 + s * F, b.fu[j], b.fv[j], dst + j * F);
    } else {
      plane_forward<FT>(F, c0, c0 + F, c0 + s * F, c0 + (s + 1) * F, b.fu[j], b.fv[j],
                        dst + j * F);
    }
  }
}

template <int kIsa, int FT, bool kHashed, bool kPrefetch, typename scalar_t, typename table_t>
ST_INLINE void backward_points(int F, const Level& lv, const table_t* __restrict t,
                               const CellBuf<scalar_t>& b, int cnt, const CellBuf<scalar_t>& nb,
                               int next_cnt, const scalar_t* __restrict g,
                               scalar_t* __restrict gt, scalar_t* __restrict gu,
                               scalar_t* __restrict gv) {
  const int64_t s = static_cast<int64_t>(lv.res) + 1;
  const scalar_t res = static_cast<scalar_t>(lv.res);
  int j = 0;
#if defined(ST_X86_VARIANTS)
  if constexpr (kX512F2<kIsa, FT, scalar_t, table_t>) {
    if (gt != nullptr && gu == nullptr) {
      j = backward_points_f2_x512<kHashed, kPrefetch>(lv, b, cnt, nb, next_cnt, g, gt);
    }
  }
#endif
  for (; j < cnt; ++j) {
    if (kPrefetch) prefetch_ahead<kHashed>(gt, F, s, j, b, cnt, nb, next_cnt);
    const int64_t q0 = b.r[0][j];
    const int64_t q1 = kHashed ? b.r[1][j] : q0 + 1;
    const int64_t q2 = kHashed ? b.r[2][j] : q0 + s;
    const int64_t q3 = kHashed ? b.r[3][j] : q0 + s + 1;
    const scalar_t fu = b.fu[j], fv = b.fv[j];
    const scalar_t* gj = g + j * F;
    if (gt != nullptr) {
      if (!kHashed && FT > 0) {
        plane_backward_dense<(FT > 0 ? FT : 1), PlainAdd>(gt + q0 * F, gt + q2 * F, fu, fv, gj);
      } else {
        plane_backward<FT, PlainAdd>(F, gt + q0 * F, gt + q1 * F, gt + q2 * F, gt + q3 * F, fu,
                                     fv, gj);
      }
    }
    if (gu != nullptr) {
      plane_grad_uv<FT>(F, t + q0 * F, t + q1 * F, t + q2 * F, t + q3 * F, fu, fv, res, gj,
                        gu + j, gv + j);
    }
  }
}

// The transposes between point-major rows [m][PL][F] and per-column (level-major)
// scratch move whole F-vectors ("elements", E bytes) in 2 x 2 blocks (two points x two
// columns), which g++ turns into full-width loads and stores. Column pl of point j is
// cols[pl][j].
template <size_t E>
struct __attribute__((may_alias)) Elem {
  unsigned char b[E];
};

template <size_t E>
ST_INLINE void cols_to_rows_elems(int PL, int64_t m, const Elem<E>* const* cols,
                                  Elem<E>* __restrict rows) {
  int64_t j = 0;
  for (; j + 2 <= m; j += 2) {
    Elem<E>* r0 = rows + j * PL;
    Elem<E>* r1 = r0 + PL;
    int pl = 0;
    for (; pl + 2 <= PL; pl += 2) {
      const Elem<E>* s0 = cols[pl] + j;
      const Elem<E>* s1 = cols[pl + 1] + j;
      const Elem<E> a0 = s0[0], a1 = s0[1], b0 = s1[0], b1 = s1[1];
      r0[pl] = a0;
      r0[pl + 1] = b0;
      r1[pl] = a1;
      r1[pl + 1] = b1;
    }
    for (; pl < PL; ++pl) {
      r0[pl] = cols[pl][j];
      r1[pl] = cols[pl][j + 1];
    }
  }
  for (; j < m; ++j) {
    for (int pl = 0; pl < PL; ++pl) rows[j * PL + pl] = cols[pl][j];
  }
}

template <size_t E>
ST_INLINE void rows_to_cols_elems(int PL, int64_t m, const Elem<E>* __restrict rows,
                                  Elem<E>* const* cols) {
  constexpr int kTile = 64;
  for (int64_t j0 = 0; j0 < m; j0 += kTile) {
    const int64_t j1 = std::min<int64_t>(m, j0 + kTile);
    // The tile's rows are read column pair by column pair; fetch the next tile's
    // (contiguous) rows meanwhile.
    const char* next = reinterpret_cast<const char*>(rows + j1 * PL);
    const char* next_end = reinterpret_cast<const char*>(rows + std::min<int64_t>(m, j1 + kTile) * PL);
    for (; next < next_end; next += 64) __builtin_prefetch(next);
    int pl = 0;
    for (; pl + 2 <= PL; pl += 2) {
      Elem<E>* d0 = cols[pl];
      Elem<E>* d1 = cols[pl + 1];
      int64_t j = j0;
      for (; j + 2 <= j1; j += 2) {
        const Elem<E>* r0 = rows + j * PL + pl;
        const Elem<E>* r1 = r0 + PL;
        const Elem<E> a0 = r0[0], a1 = r0[1], b0 = r1[0], b1 = r1[1];
        d0[j] = a0;
        d0[j + 1] = b0;
        d1[j] = a1;
        d1[j + 1] = b1;
      }
      for (; j < j1; ++j) {
        d0[j] = rows[j * PL + pl];
        d1[j] = rows[j * PL + pl + 1];
      }
    }
    for (; pl < PL; ++pl) {
      for (int64_t j = j0; j < j1; ++j) cols[pl][j] = rows[j * PL + pl];
    }
  }
}

// Rows [m][PL*F] from columns; F-vectors of scalars.
template <int kIsa, int FT, typename scalar_t>
ST_INLINE void cols_to_rows(int F, int PL, int64_t m, scalar_t* const* cols,
                            scalar_t* __restrict rows) {
#if defined(ST_X86_VARIANTS)
  if constexpr (kIsa == kIsaAvx512 && sizeof(scalar_t) * FT == 8) {
    cols_to_rows_q_x512(PL, m, reinterpret_cast<const long long* const*>(cols),
                        reinterpret_cast<long long*>(rows));
    return;
  }
#endif
  if (FT > 0) {
    constexpr size_t E = sizeof(scalar_t) * (FT > 0 ? FT : 1);
    cols_to_rows_elems<E>(PL, m, reinterpret_cast<const Elem<E>* const*>(cols),
                          reinterpret_cast<Elem<E>*>(rows));
    return;
  }
  for (int64_t j = 0; j < m; ++j) {
    for (int pl = 0; pl < PL; ++pl) {
      for (int f = 0; f < F; ++f) rows[(j * PL + pl) * F + f] = cols[pl][j * F + f];
    }
  }
}

// Columns from rows [m][PL*F].
template <int kIsa, int FT, typename scalar_t>
ST_INLINE void rows_to_cols(int F, int PL, int64_t m, const scalar_t* __restrict rows,
                            scalar_t* const* cols) {
#if defined(ST_X86_VARIANTS)
  if constexpr (kIsa == kIsaAvx512 && sizeof(scalar_t) * FT == 8) {
    rows_to_cols_q_x512(PL, m, reinterpret_cast<const long long*>(rows),
                        reinterpret_cast<long long* const*>(cols));
    return;
  }
#endif
  if (FT > 0) {
    constexpr size_t E = sizeof(scalar_t) * (FT > 0 ? FT : 1);
    rows_to_cols_elems<E>(PL, m, reinterpret_cast<const Elem<E>*>(rows),
                          reinterpret_cast<Elem<E>* const*>(cols));
    return;
  }
  for (int64_t j = 0; j < m; ++j) {
    for (int pl = 0; pl < PL; ++pl) {
      for (int f = 0; f < F; ++f) cols[pl][j * F + f] = rows[(j * PL + pl) * F + f];
    }
  }
}

template <int kIsa, int FT, bool kHashed, bool kPrefetch, typename scalar_t, typename table_t>
ST_INLINE void forward_level(int F, const Level& lv, int64_t m, const scalar_t* xu,
                             const scalar_t* xv, CellBuf<scalar_t>* cells, const table_t* t,
                             scalar_t* dst) {
  level_pass<kHashed>(lv, m, xu, xv, cells,
                      [&](int64_t j0, const CellBuf<scalar_t>& b, int cnt,
                          const CellBuf<scalar_t>& nb, int next_cnt) {
                        forward_points<kIsa, FT, kHashed, kPrefetch>(F, lv, t, b, cnt, nb,
                                                                     next_cnt, dst + j0 * F);
                      });
}

template <int kIsa, int FT, bool kHashed, bool kPrefetch, typename scalar_t, typename table_t>
ST_INLINE void backward_level(int F, const Level& lv, int64_t m, const scalar_t* xu,
                              const scalar_t* xv, CellBuf<scalar_t>* cells, const table_t* t,
                              const scalar_t* go, scalar_t* gt, scalar_t* gu, scalar_t* gv) {
  level_pass<kHashed>(lv, m, xu, xv, cells,
                      [&](int64_t j0, const CellBuf<scalar_t>& b, int cnt,
                          const CellBuf<scalar_t>& nb, int next_cnt) {
                        backward_points<kIsa, FT, kHashed, kPrefetch>(
                            F, lv, t, b, cnt, nb, next_cnt, go + j0 * F, gt,
                            gu ? gu + j0 : nullptr, gv ? gv + j0 : nullptr);
                      });
}

// One (plane, level) pass of the forward over m points: values to dst [m][F].
template <int kIsa, int FT, typename scalar_t, typename table_t>
ST_INLINE void forward_column(const Call<scalar_t, table_t>& c, int p, int l, int64_t m,
                              const scalar_t* xu, const scalar_t* xv, CellBuf<scalar_t>* cells,
                              scalar_t* dst) {
  const GridLevels& g = c.g;
  const int F = FT > 0 ? FT : g.n_features;
  const Level lv = level_of(g, l);
  const table_t* t = c.table + (p * g.n_rows + lv.offset) * F;
  const bool pf = level_rows(g, l) * F * static_cast<int64_t>(sizeof(table_t)) >= kPrefetchBytes;
  if (lv.hashed) {
    if (pf) {
      forward_level<kIsa, FT, true, true>(F, lv, m, xu, xv, cells, t, dst);
    } else {
      forward_level<kIsa, FT, true, false>(F, lv, m, xu, xv, cells, t, dst);
    }
  } else if (pf) {
    forward_level<kIsa, FT, false, true>(F, lv, m, xu, xv, cells, t, dst);
  } else {
    forward_level<kIsa, FT, false, false>(F, lv, m, xu, xv, cells, t, dst);
  }
}

// Which columns (plane, level) are "large": levels whose table block exceeds
// kLargeLevelBytes per plane. Large columns run over a whole super-chunk; the others
// over cache-sized sub-chunks (see the top of the file).
struct Columns {
  int n_large = 0, n_small = 0;
  int slot[kMaxPlanes * kMaxLevels];   // index among the large / small columns
  bool large[kMaxPlanes * kMaxLevels];
};

template <typename scalar_t, typename table_t>
Columns columns_of(const Call<scalar_t, table_t>& c) {
  Columns cols;
  const int L = c.g.n_levels;
  for (int p = 0; p < c.a.n_planes; ++p) {
    for (int l = 0; l < L; ++l) {
      const bool big = level_rows(c.g, l) * c.g.n_features *
                           static_cast<int64_t>(sizeof(scalar_t)) >= kLargeLevelBytes;
      cols.large[p * L + l] = big;
      cols.slot[p * L + l] = big ? cols.n_large++ : cols.n_small++;
    }
  }
  return cols;
}

// The forward of points [i0, i0 + m) (m <= c.sc), single-threaded.
template <int kIsa, int FT, typename scalar_t, typename table_t>
ST_INLINE void forward_chunk_body(const Call<scalar_t, table_t>& c, int64_t i0, int64_t m) {
  const GridLevels& g = c.g;
  const int F = FT > 0 ? FT : g.n_features, L = g.n_levels, P = c.a.n_planes, PL = P * L;
  const Columns cols = columns_of(c);
  const int64_t large_elems = static_cast<int64_t>(cols.n_large) * c.sc * F;
  ChunkBufs<scalar_t> bufs =
      chunk_bufs<scalar_t>(thread_workspace(), c.a.in_dim, c.sc, static_cast<int64_t>(PL) * F,
                           large_elems + static_cast<int64_t>(cols.n_small) * c.sub * F);
  scalar_t* large = bufs.scratch;
  scalar_t* small = bufs.scratch + large_elems;
  clamp_coords(c.x, c.a.in_dim, i0, m, c.sc, bufs.xs);
  for (int col = 0; col < PL; ++col) {
    if (!cols.large[col]) continue;
    const int p = col / L;
    forward_column<kIsa, FT>(c, p, col % L, m, bufs.xs + c.a.axes[p][0] * c.sc,
                             bufs.xs + c.a.axes[p][1] * c.sc, bufs.cells,
                             large + static_cast<int64_t>(cols.slot[col]) * c.sc * F);
  }
  scalar_t* src[kMaxPlanes * kMaxLevels];
  scalar_t* shifted[kMaxPlanes * kMaxLevels];
  for (int64_t j0 = 0; j0 < m; j0 += c.sub) {
    const int64_t mm = std::min(c.sub, m - j0);
    for (int col = 0; col < PL; ++col) {
      if (cols.large[col]) {
        src[col] = large + (static_cast<int64_t>(cols.slot[col]) * c.sc + j0) * F;
        continue;
      }
      const int p = col / L;
      src[col] = small + static_cast<int64_t>(cols.slot[col]) * c.sub * F;
      forward_column<kIsa, FT>(c, p, col % L, mm, bufs.xs + c.a.axes[p][0] * c.sc + j0,
                               bufs.xs + c.a.axes[p][1] * c.sc + j0, bufs.cells, src[col]);
    }
    // Rows go through a cache-resident buffer of kRowBlock rows and then out with one
    // memcpy each (whole cache lines, which the CPU writes without reading them first).
    for (int64_t r0 = 0; r0 < mm; r0 += kRowBlock) {
      const int64_t rr = std::min<int64_t>(kRowBlock, mm - r0);
      for (int col = 0; col < PL; ++col) shifted[col] = src[col] + r0 * F;
      cols_to_rows<kIsa, FT>(F, PL, rr, shifted, bufs.rows);
      std::memcpy(c.out + (i0 + j0 + r0) * PL * F, bufs.rows, sizeof(scalar_t) * rr * PL * F);
    }
  }
}

// The backward of column `col` over m points whose grad_out is go [m][F] and whose
// clamped coordinates are xu, xv; adds to the table gradient (zeroing the level's rows
// first when `zero`) and to the input gradient gu, gv [m] (when c.grad_x).
template <int kIsa, int FT, typename scalar_t, typename table_t>
ST_INLINE void backward_column_body(const Call<scalar_t, table_t>& c, int col, int64_t m,
                                    const scalar_t* xu, const scalar_t* xv, const scalar_t* go,
                                    scalar_t* gu, scalar_t* gv, bool zero,
                                    CellBuf<scalar_t>* cells) {
  const GridLevels& g = c.g;
  const int F = FT > 0 ? FT : g.n_features, L = g.n_levels;
  const int p = col / L, l = col % L;
  const Level lv = level_of(g, l);
  const int64_t rows = level_rows(g, l);
  const table_t* t = c.table + (p * g.n_rows + lv.offset) * F;
  scalar_t* gt = c.grad_table ? c.grad_table + (p * g.n_rows + lv.offset) * F : nullptr;
  if (gt != nullptr && zero) std::memset(gt, 0, sizeof(scalar_t) * rows * F);
  // Prefetch the gradient rows of large levels (the input gradient alone reads the
  // table, which is not prefetched).
  const bool pf = gt != nullptr && rows * F * static_cast<int64_t>(sizeof(scalar_t)) >= kPrefetchBytes;
  if (lv.hashed) {
    if (pf) {
      backward_level<kIsa, FT, true, true>(F, lv, m, xu, xv, cells, t, go, gt, gu, gv);
    } else {
      backward_level<kIsa, FT, true, false>(F, lv, m, xu, xv, cells, t, go, gt, gu, gv);
    }
  } else if (pf) {
    backward_level<kIsa, FT, false, true>(F, lv, m, xu, xv, cells, t, go, gt, gu, gv);
  } else {
    backward_level<kIsa, FT, false, false>(F, lv, m, xu, xv, cells, t, go, gt, gu, gv);
  }
}

// ------------------------------------------------------- instruction-set variants

template <typename scalar_t, typename table_t>
struct Kernels {
  void (*forward_chunk)(const Call<scalar_t, table_t>&, int64_t, int64_t);
  void (*rows_to_cols)(int, int, int64_t, const scalar_t*, scalar_t* const*);
  void (*backward_column)(const Call<scalar_t, table_t>&, int, int64_t, const scalar_t*,
                          const scalar_t*, const scalar_t*, scalar_t*, scalar_t*, bool,
                          CellBuf<scalar_t>*);
};

#define ST_PLANE_VARIANT(NAME, ATTR, ISA)                                                     \
  template <int FT, typename scalar_t, typename table_t>                                     \
  ATTR void forward_chunk_##NAME(const Call<scalar_t, table_t>& c, int64_t i0, int64_t m) {  \
    forward_chunk_body<ISA, FT>(c, i0, m);                                                    \
  }                                                                                           \
  template <int FT, typename scalar_t>                                                        \
  ATTR void rows_to_cols_##NAME(int F, int PL, int64_t m, const scalar_t* rows,               \
                                scalar_t* const* cols) {                                      \
    rows_to_cols<ISA, FT>(F, PL, m, rows, cols);                                              \
  }                                                                                           \
  template <int FT, typename scalar_t, typename table_t>                                     \
  ATTR void backward_column_##NAME(const Call<scalar_t, table_t>& c, int col, int64_t m,     \
                                   const scalar_t* xu, const scalar_t* xv,                   \
                                   const scalar_t* go, scalar_t* gu, scalar_t* gv, bool zero, \
                                   CellBuf<scalar_t>* cells) {                                \
    backward_column_body<ISA, FT>(c, col, m, xu, xv, go, gu, gv, zero, cells);                \
  }                                                                                           \
  template <int FT, typename scalar_t, typename table_t>                                     \
  Kernels<scalar_t, table_t> kernels_##NAME() {                                               \
    return {&forward_chunk_##NAME<FT, scalar_t, table_t>, &rows_to_cols_##NAME<FT, scalar_t>, \
            &backward_column_##NAME<FT, scalar_t, table_t>};                                  \
  }

ST_PLANE_VARIANT(base, , kIsaBase)
#if defined(ST_X86_VARIANTS)
ST_PLANE_VARIANT(avx2, ST_TARGET_AVX2, kIsaBase)  // the scalar table passes, auto-vectorised
ST_PLANE_VARIANT(avx512, ST_TARGET_AVX512, kIsaAvx512)
#endif
#undef ST_PLANE_VARIANT

// The instruction set the float32 loops use: the best this CPU supports, or the one
// set_cpu_isa() chose.
CpuIsa detect_isa() {
#if defined(ST_X86_VARIANTS)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq");
  return avx512 ? CpuIsa::kAvx512 : (avx2 ? CpuIsa::kAvx2 : CpuIsa::kBase);
#else
  return CpuIsa::kBase;
#endif
}

CpuIsa& isa_choice() {
  static CpuIsa isa = detect_isa();
  return isa;
}

template <int FT, typename scalar_t, typename table_t>
Kernels<scalar_t, table_t> select_kernels() {
#if defined(ST_X86_VARIANTS)
  if (std::is_same<scalar_t, float>::value && std::is_same<table_t, float>::value) {
    switch (isa_choice()) {
      case CpuIsa::kAvx512:
        return kernels_avx512<FT, scalar_t, table_t>();
      case CpuIsa::kAvx2:
        return kernels_avx2<FT, scalar_t, table_t>();
      default:
        break;
    }
  }
#endif
  return kernels_base<FT, scalar_t, table_t>();
}

template <typename scalar_t, typename table_t>
Kernels<scalar_t, table_t> kernels_for(int n_features) {
  switch (n_features) {
    case 1:
      return select_kernels<1, scalar_t, table_t>();
    case 2:
      return select_kernels<2, scalar_t, table_t>();
    case 4:
      return select_kernels<4, scalar_t, table_t>();
    case 8:
      return select_kernels<8, scalar_t, table_t>();
    default:
      return select_kernels<0, scalar_t, table_t>();
  }
}

int64_t round_cells(int64_t v) { return std::max<int64_t>(kCell, (v + kCell - 1) / kCell * kCell); }

template <typename scalar_t, typename table_t>
Call<scalar_t, table_t> make_call(const GridLevels& g, const PlaneAxes& a, int64_t n,
                                  const scalar_t* x, const table_t* table, bool split_chunks) {
  Call<scalar_t, table_t> c{};
  c.g = g;
  c.a = a;
  c.n = n;
  c.x = x;
  c.table = table;
  const Columns cols = columns_of(c);
  const int64_t elem = static_cast<int64_t>(g.n_features) * sizeof(scalar_t);
  // Super-chunk: the large columns' scratch within kScratchBytes.
  int64_t sc = cols.n_large > 0 ? kScratchBytes / (cols.n_large * elem) : kMaxChunk;
  sc = std::min(kMaxChunk, sc);
  const int threads = omp_get_max_threads();
  if (split_chunks && threads > 1 && worth_parallel(n * a.n_planes * g.n_levels)) {
    sc = std::min(sc, (n + 2 * threads - 1) / (2 * threads));  // two chunks per thread
  }
  c.sc = std::min(round_cells(sc), round_cells(n));
  // Sub-chunk: the small columns' scratch within kSubChunkBytes.
  const int64_t sub = cols.n_small > 0 ? kSubChunkBytes / (cols.n_small * elem) : c.sc;
  c.sub = std::min(c.sc, round_cells(std::min(sub, c.sc) / kCell * kCell));
  return c;
}

}  // namespace

// ------------------------------------------------------------------ entry points

CpuIsa cpu_isa() { return isa_choice(); }

bool set_cpu_isa(CpuIsa isa) {
  if (static_cast<int>(isa) > static_cast<int>(detect_isa())) return false;
  isa_choice() = isa;
  return true;
}

template <typename scalar_t, typename table_t>
void plane_encode_forward(const GridLevels& g, const PlaneAxes& a, int64_t n, const scalar_t* x,
                          const table_t* table, scalar_t* out) {
  if (n <= 0) return;
  Call<scalar_t, table_t> c = make_call(g, a, n, x, table, /*split_chunks=*/true);
  c.out = out;
  const Kernels<scalar_t, table_t> k = kernels_for<scalar_t, table_t>(g.n_features);
  const int64_t n_chunks = (n + c.sc - 1) / c.sc;
  const int64_t work = n * a.n_planes * g.n_levels;
#pragma omp parallel for schedule(dynamic, 1) if (n_chunks > 1 && worth_parallel(work))
  for (int64_t ch = 0; ch < n_chunks; ++ch) {
    const int64_t i0 = ch * c.sc;
    k.forward_chunk(c, i0, std::min(c.sc, n - i0));
  }
}

template <typename scalar_t, typename table_t>
void plane_encode_backward(const GridLevels& g, const PlaneAxes& a, int64_t n, const scalar_t* x,
                           const table_t* table, const scalar_t* grad_out, scalar_t* grad_table,
                           scalar_t* grad_x) {
  if (n <= 0 || (grad_table == nullptr && grad_x == nullptr)) return;
  Call<scalar_t, table_t> c = make_call(g, a, n, x, table, /*split_chunks=*/false);
  c.grad_out = grad_out;
  c.grad_table = grad_table;
  c.grad_x = grad_x;
  const Kernels<scalar_t, table_t> k = kernels_for<scalar_t, table_t>(g.n_features);
  const Columns cols = columns_of(c);
  const int F = g.n_features, L = g.n_levels, P = a.n_planes, PL = P * L, D = a.in_dim;
  const int64_t large_elems = static_cast<int64_t>(cols.n_large) * c.sc * F;
  scalar_t* large = static_cast<scalar_t*>(shared_workspace().get(
      sizeof(scalar_t) * static_cast<size_t>(large_elems + static_cast<int64_t>(cols.n_small) * c.sub * F)));
  scalar_t* small = large + large_elems;
  const int64_t work = n * PL;
#pragma omp parallel if (PL > 1 && worth_parallel(work))
  {
    ChunkBufs<scalar_t> bufs = chunk_bufs<scalar_t>(thread_workspace(), D, c.sc, 0, 0);
    for (int64_t i0 = 0; i0 < n; i0 += c.sc) {
      const int64_t m = std::min(c.sc, n - i0);
      clamp_coords(x, D, i0, m, c.sc, bufs.xs);
      if (grad_x != nullptr) std::memset(bufs.gx, 0, sizeof(scalar_t) * D * c.sc);
      // Small columns: per sub-chunk, from a cache-sized scratch; the large columns'
      // grad_out goes to their super-chunk scratch on the way.
      for (int64_t j0 = 0; j0 < m; j0 += c.sub) {
        const int64_t mm = std::min(c.sub, m - j0);
#pragma omp single
        {
          scalar_t* dst[kMaxPlanes * kMaxLevels];
          for (int col = 0; col < PL; ++col) {
            dst[col] = cols.large[col] ? large + (static_cast<int64_t>(cols.slot[col]) * c.sc + j0) * F
                                       : small + static_cast<int64_t>(cols.slot[col]) * c.sub * F;
          }
          k.rows_to_cols(F, PL, mm, grad_out + (i0 + j0) * PL * F, dst);
        }
#pragma omp for schedule(dynamic, 1)
        for (int col = 0; col < PL; ++col) {
          if (cols.large[col]) continue;
          const int p = col / L;
          scalar_t* gu = grad_x ? bufs.gx + a.axes[p][0] * c.sc + j0 : nullptr;
          scalar_t* gv = grad_x ? bufs.gx + a.axes[p][1] * c.sc + j0 : nullptr;
          k.backward_column(c, col, mm, bufs.xs + a.axes[p][0] * c.sc + j0,
                            bufs.xs + a.axes[p][1] * c.sc + j0,
                            small + static_cast<int64_t>(cols.slot[col]) * c.sub * F, gu, gv,
                            i0 == 0 && j0 == 0, bufs.cells);
        }
      }
      // Large columns over the whole super-chunk.
#pragma omp for schedule(dynamic, 1) nowait
      for (int col = 0; col < PL; ++col) {
        if (!cols.large[col]) continue;
        const int p = col / L;
        scalar_t* gu = grad_x ? bufs.gx + a.axes[p][0] * c.sc : nullptr;
        scalar_t* gv = grad_x ? bufs.gx + a.axes[p][1] * c.sc : nullptr;
        k.backward_column(c, col, m, bufs.xs + a.axes[p][0] * c.sc, bufs.xs + a.axes[p][1] * c.sc,
                          large + static_cast<int64_t>(cols.slot[col]) * c.sc * F, gu, gv, i0 == 0,
                          bufs.cells);
      }
      if (grad_x != nullptr) {
#pragma omp critical(synctalk_plane_grad_x)
        for (int64_t j = 0; j < m; ++j) {
          for (int d = 0; d < D; ++d) {
            const int64_t col = (i0 + j) * D + d;
            if (clamp_passes_grad(x[col])) grad_x[col] += bufs.gx[d * c.sc + j];
          }
        }
      }
#pragma omp barrier
    }
  }
}

#define INSTANTIATE(S, T)                                                                     \
  template void plane_encode_forward<S, T>(const GridLevels&, const PlaneAxes&, int64_t,      \
                                           const S*, const T*, S*);                           \
  template void plane_encode_backward<S, T>(const GridLevels&, const PlaneAxes&, int64_t,     \
                                            const S*, const T*, const S*, S*, S*);
INSTANTIATE(float, float)
INSTANTIATE(float, HalfBits)
INSTANTIATE(double, double)
#undef INSTANTIATE

}  // namespace cpu
}  // namespace synctalk
