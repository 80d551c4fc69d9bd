// Density (occupancy) grid helpers: Morton order, bitfield packing and dilation.
#pragma once

#include "synctalk/common.h"

namespace synctalk {

// Spread the low 10 bits of v so that bit b lands at bit 3b.
ST_HD uint32_t spread_bits3(uint32_t v) {
  v &= 0x3FFu;
  v = (v | (v << 16)) & 0x030000FFu;
  v = (v | (v << 8)) & 0x0300F00Fu;
  v = (v | (v << 4)) & 0x030C30C3u;
  v = (v | (v << 2)) & 0x09249249u;
  return v;
}

// Inverse of spread_bits3: gather every third bit (starting at bit 0).
ST_HD uint32_t compact_bits3(uint32_t v) {
  v &= 0x09249249u;
  v = (v | (v >> 2)) & 0x030C30C3u;
  v = (v | (v >> 4)) & 0x0300F00Fu;
  v = (v | (v >> 8)) & 0x030000FFu;
  v = (v | (v >> 16)) & 0x000003FFu;
  return v;
}

// Morton (Z-order) code of a cell with coordinates < 1024: x in bits 0,3,6,...,
// y in bits 1,4,..., z in bits 2,5,....
ST_HD uint32_t morton3(uint32_t x, uint32_t y, uint32_t z) {
  return spread_bits3(x) | (spread_bits3(y) << 1) | (spread_bits3(z) << 2);
}

ST_HD void morton3_decode(uint32_t code, uint32_t* x, uint32_t* y, uint32_t* z) {
  *x = compact_bits3(code);
  *y = compact_bits3(code >> 1);
  *z = compact_bits3(code >> 2);
}

// Byte b of a bitfield holds cells 8b..8b+7, cell 8b+k at bit k (cells past
// n_cells read as empty).
ST_HD uint8_t pack_byte(const uint8_t* cells, int64_t n_cells, int64_t b) {
  uint32_t byte = 0;
  for (int k = 0; k < 8; ++k) {
    const int64_t i = 8 * b + k;
    if (i < n_cells && cells[i]) byte |= 1u << k;
  }
  return static_cast<uint8_t>(byte);
}

ST_HD bool bit_of(const uint8_t* bitfield, int64_t cell) {
  return (bitfield[cell >> 3] >> (cell & 7)) & 1u;
}

// Cell i (C order: z fastest) of an nx × ny × nz grid of 0/1 bytes after a binary
// dilation by a (2r + 1)³ cube: 1 when any cell within Chebyshev distance r is 1
// (the grid does not wrap; cells outside it count as empty).
ST_HD uint8_t dilated_cell(const uint8_t* cells, int64_t nx, int64_t ny, int64_t nz, int64_t r,
                           int64_t i) {
  const int64_t z = i % nz, y = (i / nz) % ny, x = i / (ny * nz);
  const int64_t x0 = x - r < 0 ? 0 : x - r, x1 = x + r >= nx ? nx - 1 : x + r;
  const int64_t y0 = y - r < 0 ? 0 : y - r, y1 = y + r >= ny ? ny - 1 : y + r;
  const int64_t z0 = z - r < 0 ? 0 : z - r, z1 = z + r >= nz ? nz - 1 : z + r;
  for (int64_t a = x0; a <= x1; ++a)
    for (int64_t b = y0; b <= y1; ++b) {
      const uint8_t* row = cells + (a * ny + b) * nz;
      for (int64_t c = z0; c <= z1; ++c)
        if (row[c]) return 1;
    }
  return 0;
}

}  // namespace synctalk
