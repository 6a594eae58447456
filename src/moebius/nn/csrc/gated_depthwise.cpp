// MixFFN's middle in one pass over its hidden map:
//
//   d = depthwise3×3(h) + bias          (zero padding, one 3×3 kernel per channel)
//   out[..., c] = d[..., c] · silu(d[..., C + c])       for c < C
//
// PyTorch runs this as a convolution writing all 2C channels, a SiLU over the gate half and a
// product, each a full pass through memory over maps of tens of MB. Here each output row is
// made from its three input rows while they are in cache, and only the C gated channels are
// written. h and out are token-major, (b, height·width, channels): the layout of the matrix
// products on either side, so no copy is needed. Accumulation is in float32 for every dtype.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "vectors.h"

namespace {

struct Map {
  int64_t height, width, channels;  // channels: the gated outputs' count, C (h has 2C)
};

// Channels per task: the three input rows of a block of 64 value and 64 gate channels stay in
// the core's L1/L2 cache while its output row is made.
constexpr int64_t BLOCK = 64;

inline float load(float x) { return x; }
inline float load(at::BFloat16 x) { return static_cast<float>(x); }

// taps: (9, 2C) float32, the kernel of channel c at taps[(dy·3 + dx)·2C + c]; bias: (2C,).
template <typename T>
void plain_row(const T* h, T* out, const float* taps, const float* bias, int64_t y,
               int64_t first, int64_t last, const Map& m) {
  const int64_t wide = 2 * m.channels;
  std::vector<float> d(2 * (last - first));
  for (int64_t x = 0; x < m.width; ++x) {
    for (int64_t c = first; c < last; ++c) {
      d[c - first] = bias[c];
      d[last - first + c - first] = bias[m.channels + c];
    }
    for (int64_t dy = -1; dy <= 1; ++dy) {
      if (y + dy < 0 || y + dy >= m.height) continue;
      for (int64_t dx = -1; dx <= 1; ++dx) {
        if (x + dx < 0 || x + dx >= m.width) continue;
        const T* p = h + ((y + dy) * m.width + x + dx) * wide;
        const float* k = taps + ((dy + 1) * 3 + dx + 1) * wide;
        for (int64_t c = first; c < last; ++c) {
          d[c - first] += k[c] * load(p[c]);
          d[last - first + c - first] += k[m.channels + c] * load(p[m.channels + c]);
        }
      }
    }
    T* o = out + (y * m.width + x) * m.channels;
    for (int64_t c = first; c < last; ++c) {
      const float gate = d[last - first + c - first];
      o[c] = static_cast<T>(d[c - first] * gate / (1.0f + std::exp(-gate)));
    }
  }
}

#if defined(__AVX512F__)
using namespace moebius_vectors;

// How many pixels ahead the row loop asks for its input: pixels lie 2C channels apart, each on
// its own page at the model's widths, where the hardware prefetchers do not follow.
constexpr int64_t PREFETCH_AHEAD = 16;

// Output row y for channels [first, last), 16 value and 16 gate channels at a time, along the
// row: each half's 3×3 window slides in registers (three columns of three rows), so every input
// vector is loaded once per output row. Rows above and below the map read `zeros` (2C + 16
// zeros) at every pixel, so the loop has no branch for them.
template <typename T>
void vector_row(const T* h, T* out, const float* taps, const float* bias, int64_t y,
                int64_t first, int64_t last, const Map& m, const T* zeros) {
  const int64_t wide = 2 * m.channels;
  const __m512 zero = _mm512_setzero_ps();
  const T* rows[3];
  int64_t step[3];
  for (int i = 0; i < 3; ++i) {
    const bool inside = y + i - 1 >= 0 && y + i - 1 < m.height;
    rows[i] = inside ? h + (y + i - 1) * m.width * wide : zeros;
    step[i] = inside ? wide : 0;
  }
  for (int64_t c = first; c < last; c += 16) {
    const __mmask16 mask = lanes(last - c);
    const int64_t g = m.channels + c;
    const __m512 value_bias = load16(bias + c, mask), gate_bias = load16(bias + g, mask);
    // The 9 value and 9 gate taps of these channels, loaded once for the whole row.
    __m512 value_taps[9], gate_taps[9];
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) {
      value_taps[t] = load16(taps + t * wide + c, mask);
      gate_taps[t] = load16(taps + t * wide + g, mask);
    }
    // Columns x − 1 and x of each kernel row, for the value and the gate half.
    // (Every loop over these arrays is unrolled, so that they stay in registers.)
    __m512 value_left[3], value_middle[3], gate_left[3], gate_middle[3];
#pragma GCC unroll 3
    for (int i = 0; i < 3; ++i) {
      value_left[i] = gate_left[i] = zero;
      value_middle[i] = load16(rows[i] + c, mask);
      gate_middle[i] = load16(rows[i] + g, mask);
    }
    T* o = out + y * m.width * m.channels + c;
    for (int64_t x = 0; x < m.width; ++x) {
      const bool edge = x + 1 == m.width;
      __m512 value = value_bias, gate = gate_bias;
#pragma GCC unroll 3
      for (int i = 0; i < 3; ++i) {
        const T* next = rows[i] + (x + 1) * step[i];
        // A prefetch never faults, so past the row's end it needs no check.
        _mm_prefetch(reinterpret_cast<const char*>(next + PREFETCH_AHEAD * step[i] + c),
                     _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(next + PREFETCH_AHEAD * step[i] + g),
                     _MM_HINT_T0);
        const __m512 value_right = edge ? zero : load16(next + c, mask);
        const __m512 gate_right = edge ? zero : load16(next + g, mask);
        value = _mm512_fmadd_ps(value_taps[3 * i], value_left[i], value);
        value = _mm512_fmadd_ps(value_taps[3 * i + 1], value_middle[i], value);
        value = _mm512_fmadd_ps(value_taps[3 * i + 2], value_right, value);
        gate = _mm512_fmadd_ps(gate_taps[3 * i], gate_left[i], gate);
        gate = _mm512_fmadd_ps(gate_taps[3 * i + 1], gate_middle[i], gate);
        gate = _mm512_fmadd_ps(gate_taps[3 * i + 2], gate_right, gate);
        value_left[i] = value_middle[i];
        value_middle[i] = value_right;
        gate_left[i] = gate_middle[i];
        gate_middle[i] = gate_right;
      }
      store16(o + x * m.channels, _mm512_mul_ps(value, silu(gate)), mask);
    }
  }
}
#endif

template <typename T>
void run(const at::Tensor& h, const at::Tensor& out, const float* taps, const float* bias,
         const Map& m) {
  const int64_t batch = h.size(0), blocks = (m.channels + BLOCK - 1) / BLOCK;
  const T* in = reinterpret_cast<const T*>(h.data_ptr());
  T* o = reinterpret_cast<T*>(out.data_ptr());
  const int64_t image_in = m.height * m.width * 2 * m.channels;
  const int64_t image_out = m.height * m.width * m.channels;
  // Tasks: (image, output row, channel block), so that even one small map spreads over threads.
  at::parallel_for(0, batch * m.height * blocks, 1, [&](int64_t begin, int64_t end) {
#if defined(__AVX512F__)
    const std::vector<T> zeros(2 * m.channels + 16, T(0));
#endif
    for (int64_t task = begin; task < end; ++task) {
      const int64_t block = task % blocks, y = task / blocks % m.height, i = task / blocks / m.height;
      const int64_t first = block * BLOCK, last = std::min(m.channels, first + BLOCK);
#if defined(__AVX512F__)
      vector_row(in + i * image_in, o + i * image_out, taps, bias, y, first, last, m, zeros.data());
#else
      plain_row(in + i * image_in, o + i * image_out, taps, bias, y, first, last, m);
#endif
    }
  });
}

}  // namespace

at::Tensor gated_depthwise(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
                           int64_t height, int64_t width) {
  TORCH_CHECK(h.dim() == 3 && h.is_contiguous(), "expected h contiguous (b, height*width, 2C)");
  const int64_t wide = h.size(2);
  TORCH_CHECK(wide % 2 == 0 && h.size(1) == height * width,
              "h must hold height*width positions of an even channel count");
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == wide && weight.size(1) == 1 &&
                  weight.size(2) == 3 && weight.size(3) == 3,
              "expected a depthwise 3x3 weight (2C, 1, 3, 3)");
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == wide, "expected a bias of 2C");
  const auto dtype = h.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "h must be float32 or bfloat16");
  const auto taps = weight.to(at::kFloat).reshape({wide, 9}).t().contiguous();  // (9, 2C)
  const auto b = bias.to(at::kFloat).contiguous();
  const Map m{height, width, wide / 2};
  auto out = at::empty({h.size(0), h.size(1), m.channels}, h.options());
  if (dtype == at::kFloat)
    run<float>(h, out, taps.data_ptr<float>(), b.data_ptr<float>(), m);
  else
    run<at::BFloat16>(h, out, taps.data_ptr<float>(), b.data_ptr<float>(), m);
  return out;
}

TORCH_LIBRARY_FRAGMENT(moebius, m) {
  m.def("gated_depthwise(Tensor h, Tensor weight, Tensor bias, int height, int width) -> Tensor");
  m.impl("gated_depthwise", c10::DispatchKey::CPU, TORCH_FN(gated_depthwise));
}
