#pragma once
// Shared helpers of the [cuda] tests: the skip without a device, one backend per scalar type, and
// element-wise comparisons that report the worst element.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <hgad/cuda/cuda_backend.cuh>
#include <hgad/rng.hpp>

/// Skips the test (a WARN and a return) when the machine has no usable CUDA device.
#define HGAD_SKIP_WITHOUT_CUDA_DEVICE()                                                      \
  do {                                                                                       \
    if (!::hgad::cuda::device_available()) {                                                 \
      WARN("skipped: no CUDA device (" << ::hgad::cuda::device_description() << ")");        \
      return;                                                                                \
    }                                                                                        \
  } while (0)

namespace hgad_test {

/// One backend per scalar type for the whole test program.
template <class Scalar>
const std::shared_ptr<hgad::cuda::CudaBackend<Scalar>>& gpu() {
  static const std::shared_ptr<hgad::cuda::CudaBackend<Scalar>> backend =
      hgad::cuda::make_cuda_backend<Scalar>();
  return backend;
}

/// Relative tolerance of the float parity tests (1e-4) and of double.
template <class Scalar>
double parity_rel() {
  return std::is_same_v<Scalar, float> ? 1e-4 : 1e-10;
}

/// The comparison of two arrays: every element finite and |got - want| <= rel (|want| + floor
/// max|want|). `floor` keeps elements that cancel to near zero from demanding more than the
/// arithmetic can give.
struct Comparison {
  bool ok = true;
  std::size_t n_bad = 0, n_non_finite = 0, worst = 0;
  double worst_ratio = 0, max_abs_want = 0;
  std::string message;
};

template <class A, class B>
Comparison compare(const std::vector<A>& got, const std::vector<B>& want, double rel,
                   double floor = 1e-3) {
  Comparison c;
  if (got.size() != want.size()) {
    c.ok = false;
    c.message = "size " + std::to_string(got.size()) + " vs " + std::to_string(want.size());
    return c;
  }
  for (const auto& w : want) c.max_abs_want = std::max(c.max_abs_want, std::abs(double(w)));
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = double(got[i]), w = double(want[i]);
    if (!std::isfinite(g) || !std::isfinite(w)) {
      ++c.n_non_finite;
      continue;
    }
    const double tol = rel * (std::abs(w) + floor * c.max_abs_want) + 1e-300;
    const double ratio = std::abs(g - w) / tol;
    if (ratio > c.worst_ratio) {
      c.worst_ratio = ratio;
      c.worst = i;
    }
    if (ratio > 1) ++c.n_bad;
  }
  c.ok = c.n_bad == 0 && c.n_non_finite == 0;
  std::ostringstream out;
  out << c.n_bad << " of " << got.size() << " elements outside rel " << rel << ", "
      << c.n_non_finite << " non-finite; worst element " << c.worst << ": got "
      << (got.empty() ? 0.0 : double(got[c.worst])) << " want "
      << (want.empty() ? 0.0 : double(want[c.worst])) << " (error / tolerance " << c.worst_ratio
      << ", max |want| " << c.max_abs_want << ")";
  c.message = out.str();
  return c;
}

/// CHECKs that got matches want (see compare, `floor` as there), naming `what` on failure.
#define HGAD_CHECK_CLOSE(what, got, want, rel, floor)                          \
  do {                                                                         \
    const auto hgad_cmp_ = ::hgad_test::compare((got), (want), (rel), (floor)); \
    INFO(what << ": " << hgad_cmp_.message);                                    \
    CHECK(hgad_cmp_.ok);                                                       \
  } while (0)

template <class Scalar>
std::vector<Scalar> random_values(hgad::Rng& rng, std::size_t n, double lo, double hi) {
  std::vector<Scalar> v(n);
  for (auto& x : v) x = Scalar(rng.uniform(lo, hi));
  return v;
}

/// A device copy of a host vector, freed with the returned buffer.
template <class Scalar>
hgad::cuda::DeviceBuffer<Scalar> upload(hgad::cuda::CudaBackend<Scalar>& gpu,
                                        const std::vector<Scalar>& host) {
  hgad::cuda::DeviceBuffer<Scalar> d(gpu.allocator_ptr(), host.size());
  gpu.copy_from_host(host.data(), d.data(), static_cast<hgad::Index>(host.size()));
  return d;
}

template <class Scalar>
std::vector<Scalar> download(hgad::cuda::CudaBackend<Scalar>& gpu, const Scalar* device,
                             std::size_t n) {
  std::vector<Scalar> host(n);
  gpu.copy_to_host(device, host.data(), static_cast<hgad::Index>(n));
  return host;
}

}  // namespace hgad_test
