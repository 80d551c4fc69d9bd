// CUDA kernels of the density-grid helpers (math: include/synctalk/density.h).
#include "launch.cuh"
#include "synctalk/kernels.h"

namespace synctalk {
namespace cuda {
namespace {

__global__ void morton3_encode_kernel(int64_t n, const int64_t* __restrict__ ix,
                                      const int64_t* __restrict__ iy,
                                      const int64_t* __restrict__ iz,
                                      int64_t* __restrict__ codes) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  codes[i] = morton3(static_cast<uint32_t>(ix[i]), static_cast<uint32_t>(iy[i]),
                     static_cast<uint32_t>(iz[i]));
}

__global__ void morton3_decode_kernel(int64_t n, const int64_t* __restrict__ codes,
                                      int64_t* __restrict__ ix, int64_t* __restrict__ iy,
                                      int64_t* __restrict__ iz) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  uint32_t x, y, z;
  synctalk::morton3_decode(static_cast<uint32_t>(codes[i]), &x, &y, &z);
  ix[i] = x;
  iy[i] = y;
  iz[i] = z;
}

__global__ void pack_kernel(int64_t n_cells, const uint8_t* __restrict__ cells,
                            uint8_t* __restrict__ bits) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= (n_cells + 7) / 8) return;
  bits[b] = pack_byte(cells, n_cells, b);
}

__global__ void unpack_kernel(int64_t n_cells, const uint8_t* __restrict__ bits,
                              uint8_t* __restrict__ cells) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n_cells) return;
  cells[i] = bit_of(bits, i) ? 1 : 0;
}

__global__ void dilate_kernel(int64_t nx, int64_t ny, int64_t nz, int64_t radius,
                              const uint8_t* __restrict__ cells, uint8_t* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= nx * ny * nz) return;
  out[i] = dilated_cell(cells, nx, ny, nz, radius, i);
}

}  // namespace

void dilate_grid(int64_t nx, int64_t ny, int64_t nz, int64_t radius, const uint8_t* cells,
                 uint8_t* out) {
  const int64_t n = nx * ny * nz;
  dilate_kernel<<<blocks_for(n), kThreads, 0, current_stream()>>>(nx, ny, nz, radius, cells, out);
  check_launch("dilate_grid");
}

void morton3_encode(int64_t n, const int64_t* ix, const int64_t* iy, const int64_t* iz,
                    int64_t* codes) {
  morton3_encode_kernel<<<blocks_for(n), kThreads, 0, current_stream()>>>(n, ix, iy, iz, codes);
  check_launch("morton3_encode");
}

void morton3_decode(int64_t n, const int64_t* codes, int64_t* ix, int64_t* iy, int64_t* iz) {
  morton3_decode_kernel<<<blocks_for(n), kThreads, 0, current_stream()>>>(n, codes, ix, iy, iz);
  check_launch("morton3_decode");
}

void pack_bitfield(int64_t n_cells, const uint8_t* cells, uint8_t* bits) {
  pack_kernel<<<blocks_for((n_cells + 7) / 8), kThreads, 0, current_stream()>>>(n_cells, cells,
                                                                               bits);
  check_launch("pack_bitfield");
}

void unpack_bitfield(int64_t n_cells, const uint8_t* bits, uint8_t* cells) {
  unpack_kernel<<<blocks_for(n_cells), kThreads, 0, current_stream()>>>(n_cells, bits, cells);
  check_launch("unpack_bitfield");
}

}  // namespace cuda
}  // namespace synctalk
