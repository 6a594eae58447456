// Local-λ's positional window contraction in one pass over the positions:
//
//   y[i, n, h, :] += Σ_{dy, dx < r} taps[i, n, h, dy·r + dx] · values[i, m(n) + dy·wide + dx, :]
//   taps[i, n, h, :] = q[i, n, h, :] · bank
//
// Positions n run over the image, `width` = wide − r + 1 columns; the values lie on a grid
// padded to `wide` columns, where position n = y·width + x has its window's top-left corner at
// row m(n) = y·wide + x. Only the image's positions are computed: the padding columns, 18 to 47 %
// of a padded grid at the student's 512 px levels, cost nothing.
//
// PyTorch can only run the window sum as thousands of tiny products (8 heads × r taps × v
// channels per position and kernel row). Here each block of positions gets its taps from one
// product (products.h), kept in cache, and every position's 8 heads × v outputs stay in vector
// registers while all r·r value rows stream past them. Built by moebius.nn.native with the
// running CPU's instruction set: AVX-512 for float32, AVX-512 BF16's paired dot product for
// bfloat16, plain loops (the compiler's vectorisation) otherwise.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "products.h"
#include "vectors.h"

namespace {

struct Shape {
  int64_t heads, v, r, wide;
  // The value row where position n's window starts: n's row and column on the padded grid.
  int64_t corner(int64_t n) const {
    const int64_t width = wide - r + 1;
    return (n / width) * wide + n % width;
  }
};

template <typename T>
void plain_positions(const T* taps, const T* values, T* y, int64_t first, int64_t last,
                     const Shape& s) {
  const int64_t per_head = s.r * s.r;
  std::vector<float> acc(s.heads * s.v);
  for (int64_t n = first; n < last; ++n) {
    T* out = y + n * s.heads * s.v;
    const T* t = taps + (n - first) * s.heads * per_head;
    for (int64_t e = 0; e < s.heads * s.v; ++e) acc[e] = static_cast<float>(out[e]);
    for (int64_t dy = 0; dy < s.r; ++dy) {
      for (int64_t dx = 0; dx < s.r; ++dx) {
        const T* row = values + (s.corner(n) + dy * s.wide + dx) * s.v;
        for (int64_t h = 0; h < s.heads; ++h) {
          const float weight = static_cast<float>(t[h * per_head + dy * s.r + dx]);
          float* a = acc.data() + h * s.v;
          for (int64_t j = 0; j < s.v; ++j) a[j] += weight * static_cast<float>(row[j]);
        }
      }
    }
    for (int64_t e = 0; e < s.heads * s.v; ++e) out[e] = static_cast<T>(acc[e]);
  }
}

#if defined(__AVX512F__)
// The vector kernels hold 8 heads × up to 3 vectors of 16 lanes: 24 of the 32 registers.
constexpr int64_t HEADS = 8;
constexpr int64_t COLUMNS = 48;

using namespace moebius_vectors;

// Columns [j0, j0 + columns) of one position's 8 heads, in NV vectors per head.
struct Float32 {
  using Tap = float;
  using Row = float;
  template <int NV>
  static void columns(const float* t, const float* rows, float* out, int64_t j0,
                      int64_t columns, const Shape& s);
};

template <int NV>
void Float32::columns(const float* t, const float* rows, float* out, int64_t j0, int64_t columns,
                      const Shape& s) {
  const int64_t per_head = s.r * s.r;
  __mmask16 mask[NV];
  __m512 acc[HEADS][NV];
  for (int q = 0; q < NV; ++q) mask[q] = lanes(columns - 16 * q);
  // Every loop over acc unrolled: indexed by constants only, acc lives in registers (GCC
  // otherwise keeps it on the stack and stores all 24 vectors after every tap).
#pragma GCC unroll 8
  for (int h = 0; h < HEADS; ++h)
#pragma GCC unroll 3
    for (int q = 0; q < NV; ++q)
      acc[h][q] = _mm512_maskz_loadu_ps(mask[q], out + h * s.v + j0 + 16 * q);
  for (int64_t dy = 0; dy < s.r; ++dy) {
    for (int64_t dx = 0; dx < s.r; ++dx) {
      const float* row = rows + (dy * s.wide + dx) * s.v + j0;
      const float* tap = t + dy * s.r + dx;
      __m512 x[NV];
      for (int q = 0; q < NV; ++q) x[q] = _mm512_maskz_loadu_ps(mask[q], row + 16 * q);
      for (int h = 0; h < HEADS; ++h) {
        const __m512 weight = _mm512_set1_ps(tap[h * per_head]);
        for (int q = 0; q < NV; ++q) acc[h][q] = _mm512_fmadd_ps(weight, x[q], acc[h][q]);
      }
    }
  }
#pragma GCC unroll 8
  for (int h = 0; h < HEADS; ++h)
#pragma GCC unroll 3
    for (int q = 0; q < NV; ++q)
      _mm512_mask_storeu_ps(out + h * s.v + j0 + 16 * q, mask[q], acc[h][q]);
}
#endif

#if defined(__AVX512BF16__)
// pairs[m, j] holds (values[m, j], values[m + 1, j]) in one 32-bit lane, the operand layout of
// the bfloat16 dot product, which adds two products per lane: taps dx and dx + 1 in one step.
struct BFloat16 {
  using Tap = uint16_t;
  using Row = uint32_t;  // a value pair
  template <int NV>
  static void columns(const uint16_t* t, const uint32_t* pairs, uint16_t* out, int64_t j0,
                      int64_t columns, const Shape& s);
};

template <int NV>
void BFloat16::columns(const uint16_t* t, const uint32_t* pairs, uint16_t* out, int64_t j0,
                       int64_t columns, const Shape& s) {
  const int64_t per_head = s.r * s.r;
  __mmask16 mask[NV];
  __m512 acc[HEADS][NV];
  for (int q = 0; q < NV; ++q) mask[q] = lanes(columns - 16 * q);
  // As in Float32::columns, every loop over acc unrolled.
#pragma GCC unroll 8
  for (int h = 0; h < HEADS; ++h)
#pragma GCC unroll 3
    for (int q = 0; q < NV; ++q)
      acc[h][q] = load16(reinterpret_cast<const at::BFloat16*>(out + h * s.v + j0 + 16 * q),
                         mask[q]);
  for (int64_t dy = 0; dy < s.r; ++dy) {
    for (int64_t dx = 0; dx < s.r; dx += 2) {
      const uint32_t* row = pairs + (dy * s.wide + dx) * s.v + j0;
      const uint16_t* tap = t + dy * s.r + dx;
      const bool alone = dx + 1 == s.r;  // an odd row's last tap pairs with a zero
      __m512i x[NV];
      for (int q = 0; q < NV; ++q) x[q] = _mm512_maskz_loadu_epi32(mask[q], row + 16 * q);
      for (int h = 0; h < HEADS; ++h) {
        uint32_t two = tap[h * per_head];
        if (!alone) std::memcpy(&two, tap + h * per_head, sizeof two);
        const __m512bh weight = (__m512bh)_mm512_set1_epi32(static_cast<int>(two));
        for (int q = 0; q < NV; ++q)
          acc[h][q] = _mm512_dpbf16_ps(acc[h][q], weight, (__m512bh)x[q]);
      }
    }
  }
#pragma GCC unroll 8
  for (int h = 0; h < HEADS; ++h)
#pragma GCC unroll 3
    for (int q = 0; q < NV; ++q)
      _mm256_mask_storeu_epi16(out + h * s.v + j0 + 16 * q, mask[q],
                               (__m256i)_mm512_cvtneps_pbh(acc[h][q]));
}
#endif

#if defined(__AVX512F__)
template <typename Kernel>
void vector_positions(const typename Kernel::Tap* taps, const typename Kernel::Row* rows,
                      typename Kernel::Tap* y, int64_t first, int64_t last, const Shape& s) {
  for (int64_t n = first; n < last; ++n) {
    const auto* t = taps + (n - first) * HEADS * s.r * s.r;
    auto* out = y + n * HEADS * s.v;
    const auto* corner = rows + s.corner(n) * s.v;
    for (int64_t j0 = 0; j0 < s.v; j0 += COLUMNS) {
      const int64_t columns = std::min(COLUMNS, s.v - j0);
      if (columns > 32)
        Kernel::template columns<3>(t, corner, out, j0, columns, s);
      else if (columns > 16)
        Kernel::template columns<2>(t, corner, out, j0, columns, s);
      else
        Kernel::template columns<1>(t, corner, out, j0, columns, s);
    }
  }
}
#endif

// Positions per block: a block's taps, (block · heads) × r², come from one product and stay in
// the core's cache until its window sums have read them (0.9 MB in float32 at 8 heads and
// r = 15: within a server core's L2). Fewer, larger blocks paid with oneDNN's bfloat16 product:
// on a 2-core AMD EPYC (AVX-512 BF16), 128 positions took 15.7 ms over the student's three
// 512 px levels against 18.5 ms with 32 and 21.4 ms with 16; float32 within 3 % from 16 to 128.
constexpr int64_t BLOCK = 128;

// Calls positions(taps, first, last) on blocks of image i's positions, spread over the threads;
// taps starts with position `first`'s. bank: the kernel bank as tile_operand() lays it out.
template <typename T, typename F>
void by_blocks(const at::Tensor& q, const at::Tensor& bank, int64_t outputs, int64_t i,
               const F& positions) {
  const int64_t n = q.size(1), heads = q.size(2), k = q.size(3);
  at::parallel_for(0, (n + BLOCK - 1) / BLOCK, 1, [&](int64_t first, int64_t last) {
    for (int64_t block = first; block < last; ++block) {
      const int64_t start = block * BLOCK, count = std::min(BLOCK, n - start);
      const auto rows = q[i].narrow(0, start, count).reshape({count * heads, k}).contiguous();
#if defined(__AVX512F__)
      if (q.scalar_type() == at::kFloat) {
        auto taps = at::empty({count * heads, outputs}, q.options());
        moebius_products::float32_product(rows.data_ptr<float>(), bank.data_ptr<float>(),
                                          taps.data_ptr<float>(), count * heads, k, outputs,
                                          false);
        positions(reinterpret_cast<const T*>(taps.data_ptr()), start, start + count);
        continue;
      }
#endif
#if defined(__AVX512BF16__)
      if (q.scalar_type() == at::kBFloat16) {
        auto taps = at::empty({count * heads, outputs}, q.options());
        moebius_products::bfloat16_product(reinterpret_cast<const uint16_t*>(rows.data_ptr()),
                                           reinterpret_cast<const uint32_t*>(bank.data_ptr()),
                                           reinterpret_cast<uint16_t*>(taps.data_ptr()),
                                           count * heads, k, outputs, false);
        positions(reinterpret_cast<const T*>(taps.data_ptr()), start, start + count);
        continue;
      }
#endif
      const auto taps = at::mm(rows, bank);
      positions(reinterpret_cast<const T*>(taps.data_ptr()), start, start + count);
    }
  });
}

}  // namespace

void window_contraction(const at::Tensor& q, const at::Tensor& bank,
                        const at::Tensor& values, const at::Tensor& y, int64_t wide, int64_t r) {
  TORCH_CHECK(q.dim() == 4 && bank.dim() == 2 && values.dim() == 3 && y.dim() == 4,
              "expected q (b, n, heads, k), bank (k, r*r), values (b, rows, v), y (b, n, heads, v)");
  TORCH_CHECK(values.is_contiguous() && y.is_contiguous(), "values and y must be contiguous");
  const auto dtype = values.scalar_type();
  TORCH_CHECK(q.scalar_type() == dtype && bank.scalar_type() == dtype && y.scalar_type() == dtype,
              "q, bank, values and y must share one dtype");
  const int64_t b = q.size(0), n = q.size(1), rows = values.size(1);
  const Shape s{q.size(2), values.size(2), r, wide};
  TORCH_CHECK(bank.size(0) == q.size(3) && bank.size(1) == r * r && values.size(0) == b &&
                  y.size(0) == b && y.size(1) == n && y.size(2) == s.heads && y.size(3) == s.v,
              "q, bank, values and y disagree in shape");
  TORCH_CHECK(r >= 1 && wide >= r, "the padded grid must be at least r columns wide");
  const int64_t width = wide - r + 1;
  TORCH_CHECK(n % width == 0, "q's positions must fill whole rows of wide - r + 1 columns");
  TORCH_CHECK(n == 0 || s.corner(n - 1) + (r - 1) * (wide + 1) < rows,
              "the last windows reach past the value rows");
  // The bank as the taps' product reads it, once for every image.
  const auto operand = moebius_products::tile_operand(bank);
  const int64_t taps = bank.size(1);
#if defined(__AVX512BF16__)
  if (dtype == at::kBFloat16 && s.heads == HEADS) {
    const auto next = at::constant_pad_nd(values.narrow(1, 1, rows - 1), {0, 0, 0, 1});
    const auto pairs = at::stack({values, next}, -1);  // (b, rows, v, 2)
    for (int64_t i = 0; i < b; ++i) {
      const auto p = reinterpret_cast<const uint32_t*>(pairs[i].data_ptr());
      const auto out = reinterpret_cast<uint16_t*>(y[i].data_ptr());
      by_blocks<uint16_t>(q, operand, taps, i,
                          [&](const uint16_t* t, int64_t first, int64_t last) {
                            vector_positions<BFloat16>(t, p, out, first, last, s);
                          });
    }
    return;
  }
#endif
#if defined(__AVX512F__)
  if (dtype == at::kFloat && s.heads == HEADS) {
    for (int64_t i = 0; i < b; ++i) {
      const float* v = values[i].data_ptr<float>();
      float* out = y[i].data_ptr<float>();
      by_blocks<float>(q, operand, taps, i, [&](const float* t, int64_t first, int64_t last) {
        vector_positions<Float32>(t, v, out, first, last, s);
      });
    }
    return;
  }
#endif
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "window_contraction", [&] {
    for (int64_t i = 0; i < b; ++i) {
      const scalar_t* v = values[i].data_ptr<scalar_t>();
      scalar_t* out = y[i].data_ptr<scalar_t>();
      by_blocks<scalar_t>(q, operand, taps, i,
                          [&](const scalar_t* t, int64_t first, int64_t last) {
                            plain_positions(t, v, out, first, last, s);
                          });
    }
  });
}

// y is written in place; the schema says so, so that PyTorch never reorders the call.
TORCH_LIBRARY(moebius, m) {
  m.def("window_contraction(Tensor q, Tensor bank, Tensor values, Tensor(a!) y, int wide, int r) -> ()");
  m.impl("window_contraction", c10::DispatchKey::CPU, TORCH_FN(window_contraction));
}
