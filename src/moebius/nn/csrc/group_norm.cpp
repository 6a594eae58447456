// GroupNorm (optionally followed by SiLU) of a channels-last map x, plus an optional value t
// per image and channel added to x first (the time embedding a residual block adds just before
// its norm), in two passes over x:
//
//   pass 1: per image and channel c, S1 = Σ (x − k_c) and S2 = Σ (x − k_c)² over the pixels,
//           k_c being the channel's value at the first pixel;
//   pass 2: y = silu?(x · a_c + b_c), a_c = γ_c / √(var_g + ε), b_c = β_c − mean_g · a_c.
//
// A group's mean and variance follow from its channels' shifted sums exactly (in float64):
//   mean_g = Σ_c (S1_c + N k_c) / (N C_g),
//   N var_g C_g = Σ_c [S2_c − 2 (mean_g − k_c) S1_c + N (mean_g − k_c)²].
// Shifting by a value of the channel itself keeps S2 well conditioned when a channel's mean is
// large against its spread, where PyTorch's channels-last kernel (E[x²] − E[x]²) loses its
// digits. PyTorch's path needs a centring pass, the norm's two, and one more for the SiLU.
// Adding t_c to a channel moves its values and k_c alike, so S1 and S2 stay as they are: t only
// enters through k_c + t_c and b_c + t_c · a_c, and costs no pass of its own.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "vectors.h"

namespace {

// Pixels per task of the statistics pass: partial sums in float32 over this many pixels, then
// added up in float64.
constexpr int64_t CHUNK = 256;

template <typename T>
void channel_sums(const T* x, const float* shift, double* s1, double* s2, int64_t first,
                  int64_t last, int64_t channels) {
  std::vector<float> a(channels, 0.0f), b(channels, 0.0f);
  int64_t c = 0;
#if defined(__AVX512F__)
  using namespace moebius_vectors;
  for (; c < channels; c += 16) {
    const __mmask16 mask = lanes(channels - c);
    const __m512 k = load16(shift + c, mask);
    __m512 sum = _mm512_setzero_ps(), squares = _mm512_setzero_ps();
    for (int64_t p = first; p < last; ++p) {
      const __m512 d = _mm512_sub_ps(load16(x + p * channels + c, mask), k);
      sum = _mm512_add_ps(sum, d);
      squares = _mm512_fmadd_ps(d, d, squares);
    }
    _mm512_mask_storeu_ps(a.data() + c, mask, sum);
    _mm512_mask_storeu_ps(b.data() + c, mask, squares);
  }
#else
  for (int64_t p = first; p < last; ++p) {
    for (c = 0; c < channels; ++c) {
      const float d = static_cast<float>(x[p * channels + c]) - shift[c];
      a[c] += d;
      b[c] += d * d;
    }
  }
#endif
  for (c = 0; c < channels; ++c) {
    s1[c] += a[c];
    s2[c] += b[c];
  }
}

template <typename T>
void normalise(const T* x, T* y, const float* scale, const float* offset, int64_t first,
               int64_t last, int64_t channels, bool silu) {
#if defined(__AVX512F__)
  using namespace moebius_vectors;
  for (int64_t p = first; p < last; ++p) {
    for (int64_t c = 0; c < channels; c += 16) {
      const __mmask16 mask = lanes(channels - c);
      __m512 v = _mm512_fmadd_ps(load16(x + p * channels + c, mask), load16(scale + c, mask),
                                 load16(offset + c, mask));
      if (silu) v = moebius_vectors::silu(v);
      store16(y + p * channels + c, v, mask);
    }
  }
#else
  for (int64_t p = first; p < last; ++p) {
    for (int64_t c = 0; c < channels; ++c) {
      float v = static_cast<float>(x[p * channels + c]) * scale[c] + offset[c];
      if (silu) v = v / (1.0f + std::exp(-v));
      y[p * channels + c] = static_cast<T>(v);
    }
  }
#endif
}

template <typename T>
void run(const at::Tensor& x, const at::Tensor& y, const float* gamma, const float* beta,
         const float* added, int64_t groups, double eps, bool silu) {
  const int64_t batch = x.size(0), channels = x.size(1), pixels = x.size(2) * x.size(3);
  const int64_t per_group = channels / groups;
  const T* in = reinterpret_cast<const T*>(x.data_ptr());
  T* out = reinterpret_cast<T*>(y.data_ptr());
  const int64_t chunks = (pixels + CHUNK - 1) / CHUNK;
  for (int64_t i = 0; i < batch; ++i) {
    const T* image = in + i * pixels * channels;
    std::vector<float> shift(channels);
    for (int64_t c = 0; c < channels; ++c) shift[c] = static_cast<float>(image[c]);
    // Each thread adds its chunks' sums into its own row; the rows are added after.
    const int64_t threads = at::get_num_threads();
    std::vector<double> s1(threads * channels, 0.0), s2(threads * channels, 0.0);
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      const int64_t row = at::get_thread_num() * channels;
      for (int64_t chunk = begin; chunk < end; ++chunk)
        channel_sums(image, shift.data(), s1.data() + row, s2.data() + row, chunk * CHUNK,
                     std::min(pixels, (chunk + 1) * CHUNK), channels);
    });
    for (int64_t t = 1; t < threads; ++t) {
      for (int64_t c = 0; c < channels; ++c) {
        s1[c] += s1[t * channels + c];
        s2[c] += s2[t * channels + c];
      }
    }
    // t_c, and k_c + t_c: the value x + t's sums S1 and S2 are taken from.
    std::vector<double> moved(channels, 0.0);
    std::vector<double> origin(shift.begin(), shift.end());
    for (int64_t c = 0; added != nullptr && c < channels; ++c) {
      moved[c] = added[i * channels + c];
      origin[c] += moved[c];
    }
    std::vector<float> scale(channels), offset(channels);
    const double n = static_cast<double>(pixels);
    for (int64_t g = 0; g < groups; ++g) {
      double total = 0.0;
      for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) total += s1[c] + n * origin[c];
      const double count = n * per_group;
      const double mean = total / count;
      double squares = 0.0;
      for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
        const double d = mean - origin[c];
        squares += s2[c] - 2.0 * d * s1[c] + n * d * d;
      }
      const double rstd = 1.0 / std::sqrt(std::max(squares / count, 0.0) + eps);
      for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
        scale[c] = static_cast<float>(gamma[c] * rstd);
        offset[c] = static_cast<float>(beta[c] + (moved[c] - mean) * gamma[c] * rstd);
      }
    }
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      normalise(image, out + i * pixels * channels, scale.data(), offset.data(), begin * CHUNK,
                std::min(pixels, end * CHUNK), channels, silu);
    });
  }
}

}  // namespace

at::Tensor group_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                      int64_t groups, double eps, bool silu,
                      const std::optional<at::Tensor>& added) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "expected a channels-last map (b, c, h, w)");
  const int64_t channels = x.size(1);
  TORCH_CHECK(groups > 0 && channels % groups == 0, "the channels must split into the groups");
  TORCH_CHECK(weight.numel() == channels && bias.numel() == channels,
              "expected a weight and a bias per channel");
  TORCH_CHECK(x.size(2) * x.size(3) > 0, "expected a non-empty map");
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "x must be float32 or bfloat16");
  const auto gamma = weight.to(at::kFloat).contiguous();
  const auto beta = bias.to(at::kFloat).contiguous();
  at::Tensor moved;
  if (added.has_value()) {
    TORCH_CHECK(added->numel() == x.size(0) * channels,
                "expected one added value per image and channel");
    moved = added->to(at::kFloat).contiguous();
  }
  const float* t = moved.defined() ? moved.data_ptr<float>() : nullptr;
  auto y = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  if (dtype == at::kFloat)
    run<float>(x, y, gamma.data_ptr<float>(), beta.data_ptr<float>(), t, groups, eps, silu);
  else
    run<at::BFloat16>(x, y, gamma.data_ptr<float>(), beta.data_ptr<float>(), t, groups, eps,
                      silu);
  return y;
}

TORCH_LIBRARY_FRAGMENT(moebius, m) {
  m.def(
      "group_norm(Tensor x, Tensor weight, Tensor bias, int groups, float eps, bool silu, "
      "Tensor? added=None) -> Tensor");
  m.impl("group_norm", c10::DispatchKey::CPU, TORCH_FN(group_norm));
}
