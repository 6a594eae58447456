// Register-tiled matrix products for the skinny shapes the libraries run slowly: a few dozen to
// a few hundred inputs and outputs against thousands of rows (Local-λ's taps, the lambda
// layers' content products). On a 2-core AMD EPYC, MKL's float32 product reached a quarter of
// the machine's float32 peak on them, and oneDNN's bfloat16 product about a third of its peak.
//
//   c[m, j] = (accumulate ? c[m, j] : 0) + Σ_i a[m, i] · b[i, j]
//
// a (rows, k), b (k, n) and c (rows, n) row-major. Each tile is 8 rows × up to 48 columns in
// 24 vector registers; every a value is broadcast once per tile and every b vector loaded once
// per 8 rows. Sums are float32; bfloat16 takes two inputs per lane and step (the AVX-512 BF16
// dot product), with b given as row pairs (pairs_of_rows).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "vectors.h"

namespace moebius_products {

constexpr int64_t TILE_ROWS = 8;
constexpr int64_t TILE_COLUMNS = 48;

#if defined(__AVX512F__)
using moebius_vectors::lanes;

// Calls tile(vectors, m0, height, j0) on every tile of a rows × n product: rows m0 … m0 +
// height − 1, columns j0 … j0 + 47, vectors (an std::integral_constant, 1 to 3) the 16-lane
// vectors its columns need.
template <typename Tile>
void by_tiles(int64_t rows, int64_t n, const Tile& tile) {
  for (int64_t m0 = 0; m0 < rows; m0 += TILE_ROWS) {
    const int64_t height = std::min(TILE_ROWS, rows - m0);
    for (int64_t j0 = 0; j0 < n; j0 += TILE_COLUMNS) {
      const int64_t columns = std::min(TILE_COLUMNS, n - j0);
      if (columns > 32)
        tile(std::integral_constant<int, 3>{}, m0, height, j0);
      else if (columns > 16)
        tile(std::integral_constant<int, 2>{}, m0, height, j0);
      else
        tile(std::integral_constant<int, 1>{}, m0, height, j0);
    }
  }
}

// Rows past `height` read row 0 of the tile again (in bounds) and are never stored.
template <int NV>
void float32_tile(const float* a, const float* b, float* c, int64_t height, int64_t k,
                  int64_t n, int64_t j0, bool accumulate) {
  __mmask16 mask[NV];
  __m512 acc[TILE_ROWS][NV];
  // Every loop over acc unrolled: indexed by constants only, acc lives in registers.
#pragma GCC unroll 3
  for (int q = 0; q < NV; ++q) mask[q] = lanes(n - j0 - 16 * q);
#pragma GCC unroll 8
  for (int h = 0; h < TILE_ROWS; ++h)
#pragma GCC unroll 3
    for (int q = 0; q < NV; ++q)
      acc[h][q] = accumulate && h < height
                      ? _mm512_maskz_loadu_ps(mask[q], c + h * n + j0 + 16 * q)
                      : _mm512_setzero_ps();
  for (int64_t i = 0; i < k; ++i) {
    __m512 x[NV];
#pragma GCC unroll 3
    for (int q = 0; q < NV; ++q) x[q] = _mm512_maskz_loadu_ps(mask[q], b + i * n + j0 + 16 * q);
#pragma GCC unroll 8
    for (int h = 0; h < TILE_ROWS; ++h) {
      const __m512 weight = _mm512_set1_ps(a[(h < height ? h : 0) * k + i]);
#pragma GCC unroll 3
      for (int q = 0; q < NV; ++q) acc[h][q] = _mm512_fmadd_ps(weight, x[q], acc[h][q]);
    }
  }
#pragma GCC unroll 8
  for (int h = 0; h < TILE_ROWS; ++h)
    if (h < height)
#pragma GCC unroll 3
      for (int q = 0; q < NV; ++q)
        _mm512_mask_storeu_ps(c + h * n + j0 + 16 * q, mask[q], acc[h][q]);
}

inline void float32_product(const float* a, const float* b, float* c, int64_t rows, int64_t k,
                            int64_t n, bool accumulate) {
  by_tiles(rows, n, [&](auto vectors, int64_t m0, int64_t height, int64_t j0) {
    float32_tile<decltype(vectors)::value>(a + m0 * k, b, c + m0 * n, height, k, n, j0,
                                           accumulate);
  });
}
#endif

#if defined(__AVX512BF16__)
// b_pairs (⌈k/2⌉, n): lane j of row p holds (b[2p, j], b[2p + 1, j]), zero past row k − 1.
template <int NV>
void bfloat16_tile(const uint16_t* a, const uint32_t* b_pairs, uint16_t* c, int64_t height,
                   int64_t k, int64_t n, int64_t j0, bool accumulate) {
  __mmask16 mask[NV];
  __m512 acc[TILE_ROWS][NV];
#pragma GCC unroll 3
  for (int q = 0; q < NV; ++q) mask[q] = lanes(n - j0 - 16 * q);
#pragma GCC unroll 8
  for (int h = 0; h < TILE_ROWS; ++h)
#pragma GCC unroll 3
    for (int q = 0; q < NV; ++q)
      acc[h][q] = accumulate && h < height
                      ? moebius_vectors::load16(
                            reinterpret_cast<const at::BFloat16*>(c + h * n + j0 + 16 * q),
                            mask[q])
                      : _mm512_setzero_ps();
  for (int64_t i = 0; i < k; i += 2) {
    __m512i x[NV];
#pragma GCC unroll 3
    for (int q = 0; q < NV; ++q)
      x[q] = _mm512_maskz_loadu_epi32(mask[q], b_pairs + (i / 2) * n + j0 + 16 * q);
    const bool alone = i + 1 == k;  // an odd k's last input pairs with a zero
#pragma GCC unroll 8
    for (int h = 0; h < TILE_ROWS; ++h) {
      const uint16_t* from = a + (h < height ? h : 0) * k + i;
      uint32_t two = *from;
      if (!alone) std::memcpy(&two, from, sizeof two);
      const __m512bh weight = (__m512bh)_mm512_set1_epi32(static_cast<int>(two));
#pragma GCC unroll 3
      for (int q = 0; q < NV; ++q)
        acc[h][q] = _mm512_dpbf16_ps(acc[h][q], weight, (__m512bh)x[q]);
    }
  }
#pragma GCC unroll 8
  for (int h = 0; h < TILE_ROWS; ++h)
    if (h < height)
#pragma GCC unroll 3
      for (int q = 0; q < NV; ++q)
        _mm256_mask_storeu_epi16(c + h * n + j0 + 16 * q, mask[q],
                                 (__m256i)_mm512_cvtneps_pbh(acc[h][q]));
}

inline void bfloat16_product(const uint16_t* a, const uint32_t* b_pairs, uint16_t* c,
                             int64_t rows, int64_t k, int64_t n, bool accumulate) {
  by_tiles(rows, n, [&](auto vectors, int64_t m0, int64_t height, int64_t j0) {
    bfloat16_tile<decltype(vectors)::value>(a + m0 * k, b_pairs, c + m0 * n, height, k, n, j0,
                                            accumulate);
  });
}
#endif

// (..., k, n) → (..., ⌈k/2⌉, n, 2): rows 2p and 2p + 1 interleaved lane by lane, a zero row
// after an odd k's last.
inline at::Tensor pairs_of_rows(const at::Tensor& b) {
  const int64_t k = b.size(-2);
  const auto even = k % 2 ? at::constant_pad_nd(b, {0, 0, 0, 1}) : b;
  return at::stack({even.slice(-2, 0, k + k % 2, 2), even.slice(-2, 1, k + k % 2, 2)}, -1)
      .contiguous();
}

// b (..., k, n) laid out as the register tiles of its dtype read it: row pairs in bfloat16
// where AVX-512 BF16 runs them, contiguous otherwise (also what plain loops and at::mm read).
inline at::Tensor tile_operand(const at::Tensor& b) {
#if defined(__AVX512BF16__)
  if (b.scalar_type() == at::kBFloat16) return pairs_of_rows(b);
#endif
  return b.contiguous();
}

}  // namespace moebius_products
