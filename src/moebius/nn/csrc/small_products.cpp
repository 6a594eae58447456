// out[i] = a[i] · b[i] (+ out[i]) for a batch of skinny products: (rows, k) · (k, n) with k and
// n from a few to a few hundred, the lambda layers' content products (queries against a k×v
// lambda per image). Each task is a band of rows of one product, on the register tiles of
// products.h; plain loops where the CPU lacks AVX-512 (float32) or AVX-512 BF16 (bfloat16).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "products.h"

namespace {

// Rows per task: 8 register tiles, enough work per task to pay for scheduling it.
constexpr int64_t BAND = 64;

template <typename T>
void plain_product(const T* a, const T* b, T* c, int64_t rows, int64_t k, int64_t n,
                   bool accumulate) {
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t j = 0; j < n; ++j) {
      float sum = accumulate ? static_cast<float>(c[m * n + j]) : 0.0f;
      for (int64_t i = 0; i < k; ++i)
        sum += static_cast<float>(a[m * k + i]) * static_cast<float>(b[i * n + j]);
      c[m * n + j] = static_cast<T>(sum);
    }
}

}  // namespace

void small_products(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out,
                    bool accumulate) {
  TORCH_CHECK(a.dim() == 3 && b.dim() == 3 && out.dim() == 3,
              "expected a (batch, rows, k), b (batch, k, n) and out (batch, rows, n)");
  const int64_t batch = a.size(0), rows = a.size(1), k = a.size(2), n = b.size(2);
  TORCH_CHECK(b.size(0) == batch && b.size(1) == k && out.size(0) == batch &&
                  out.size(1) == rows && out.size(2) == n,
              "a, b and out disagree in shape");
  const auto dtype = a.scalar_type();
  TORCH_CHECK(b.scalar_type() == dtype && out.scalar_type() == dtype,
              "a, b and out must share one dtype");
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "expected float32 or bfloat16");
  TORCH_CHECK(a.is_contiguous() && out.is_contiguous(), "a and out must be contiguous");
  const int64_t bands = (rows + BAND - 1) / BAND;
  const auto right = moebius_products::tile_operand(b);  // one copy whatever b's layout
  at::parallel_for(0, batch * bands, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / bands, first = task % bands * BAND;
      const int64_t count = std::min(BAND, rows - first);
      const int64_t a_at = (i * rows + first) * k, c_at = (i * rows + first) * n;
      if (dtype == at::kFloat) {
        const float* x = a.data_ptr<float>() + a_at;
        const float* w = right.data_ptr<float>() + i * k * n;
        float* c = out.data_ptr<float>() + c_at;
#if defined(__AVX512F__)
        moebius_products::float32_product(x, w, c, count, k, n, accumulate);
#else
        plain_product(x, w, c, count, k, n, accumulate);
#endif
        continue;
      }
      const auto* x = reinterpret_cast<const at::BFloat16*>(a.data_ptr()) + a_at;
      auto* c = reinterpret_cast<at::BFloat16*>(out.data_ptr()) + c_at;
#if defined(__AVX512BF16__)
      const int64_t pair_rows = (k + 1) / 2;
      moebius_products::bfloat16_product(
          reinterpret_cast<const uint16_t*>(x),
          reinterpret_cast<const uint32_t*>(right.data_ptr()) + i * pair_rows * n,
          reinterpret_cast<uint16_t*>(c), count, k, n, accumulate);
#else
      const auto* w = reinterpret_cast<const at::BFloat16*>(right.data_ptr()) + i * k * n;
      plain_product(x, w, c, count, k, n, accumulate);
#endif
    }
  });
}

TORCH_LIBRARY_FRAGMENT(moebius, m) {
  m.def("small_products(Tensor a, Tensor b, Tensor(a!) out, bool accumulate) -> ()");
  m.impl("small_products", c10::DispatchKey::CPU, TORCH_FN(small_products));
}
