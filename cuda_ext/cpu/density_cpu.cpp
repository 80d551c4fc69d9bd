// OpenMP loops of the density-grid helpers (math: include/synctalk/density.h).
#include <omp.h>

#include "synctalk/kernels.h"

namespace synctalk {
namespace cpu {

void morton3_encode(int64_t n, const int64_t* ix, const int64_t* iy, const int64_t* iz,
                    int64_t* codes) {
#pragma omp parallel for schedule(static) if (worth_parallel(n))
  for (int64_t i = 0; i < n; ++i) {
    codes[i] = morton3(static_cast<uint32_t>(ix[i]), static_cast<uint32_t>(iy[i]),
                       static_cast<uint32_t>(iz[i]));
  }
}

void morton3_decode(int64_t n, const int64_t* codes, int64_t* ix, int64_t* iy, int64_t* iz) {
#pragma omp parallel for schedule(static) if (worth_parallel(n))
  for (int64_t i = 0; i < n; ++i) {
    uint32_t x, y, z;
    synctalk::morton3_decode(static_cast<uint32_t>(codes[i]), &x, &y, &z);
    ix[i] = x;
    iy[i] = y;
    iz[i] = z;
  }
}

void pack_bitfield(int64_t n_cells, const uint8_t* cells, uint8_t* bits) {
  const int64_t n_bytes = (n_cells + 7) / 8;
#pragma omp parallel for schedule(static) if (worth_parallel(n_cells))
  for (int64_t b = 0; b < n_bytes; ++b) bits[b] = pack_byte(cells, n_cells, b);
}

void unpack_bitfield(int64_t n_cells, const uint8_t* bits, uint8_t* cells) {
#pragma omp parallel for schedule(static) if (worth_parallel(n_cells))
  for (int64_t i = 0; i < n_cells; ++i) cells[i] = bit_of(bits, i) ? 1 : 0;
}

void dilate_grid(int64_t nx, int64_t ny, int64_t nz, int64_t radius, const uint8_t* cells,
                 uint8_t* out) {
  const int64_t n = nx * ny * nz;
#pragma omp parallel for schedule(static) if (worth_parallel(n))
  for (int64_t i = 0; i < n; ++i) out[i] = dilated_cell(cells, nx, ny, nz, radius, i);
}

}  // namespace cpu
}  // namespace synctalk
