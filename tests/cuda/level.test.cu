// CudaLevel, one HGAD level trained and scored on the GPU, against the fused CPU path: forward,
// scores and three full training steps (loss terms, gradients and parameters after each step).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <hgad/cuda/cuda_level.cuh>

#include "cuda_host/level_parity.hpp"
#include "cuda_test_util.cuh"

namespace {

template <class Scalar>
auto make_cuda_level() {
  return [](const hgad::SequenceFlow<Scalar>& flow, const hgad::GaussianMixturePrior<Scalar>& prior,
            const hgad::cuda::LevelOptions& options) {
    return hgad::cuda::CudaLevel<Scalar>(flow, prior, hgad_test::gpu<Scalar>(), options);
  };
}

}  // namespace

TEST_CASE("CudaLevel matches the fused CPU path over three training steps in double", "[cuda]") {
  HGAD_SKIP_WITHOUT_CUDA_DEVICE();
  hgad_test::LevelParityConfig c;
  c.D = 37;
  c.P = 12;
  c.n_blocks = 3;
  c.K = 4;
  c.M = 3;
  c.B = 3;
  c.h = 4;
  c.w = 5;
  SECTION("small level, condition table, pinned clamp") {
    hgad_test::check_level_parity<double>(c, make_cuda_level<double>());
  }
  SECTION("small level, condition rows, head clamp") {
    c.condition_table = false;
    c.clamp = hgad::SoftClamp::head;
    c.seed = 3;
    hgad_test::check_level_parity<double>(c, make_cuda_level<double>());
  }
  SECTION("the paper's level sizes") {
    hgad_test::LevelParityConfig paper;  // D 200, P 256, 12 blocks, K 15, M 10
    paper.B = 4;
    paper.h = 8;
    paper.w = 8;
    hgad_test::check_level_parity<double>(paper, make_cuda_level<double>());
  }
}

TEST_CASE("CudaLevel matches the fused CPU path at the paper's level sizes in float", "[cuda]") {
  HGAD_SKIP_WITHOUT_CUDA_DEVICE();
  hgad_test::LevelParityConfig c;  // D 200, P 256, 12 blocks, K 15, M 10
  c.resync = true;
  SECTION("8 images of 16 x 16 positions, condition table") {
    c.B = 8;
    c.h = 16;
    c.w = 16;
    hgad_test::check_level_parity<float>(c, make_cuda_level<float>());
  }
  SECTION("2 images of 16 x 16 positions, condition rows") {
    c.B = 2;
    c.h = 16;
    c.w = 16;
    c.condition_table = false;
    c.seed = 7;
    hgad_test::check_level_parity<float>(c, make_cuda_level<float>());
  }
}

TEST_CASE("CudaLevel steps of one size reuse cached memory and stop at non-finite input", "[cuda]") {
  HGAD_SKIP_WITHOUT_CUDA_DEVICE();
  const hgad::Index D = 200, P = 256, h = 32, w = 32, B = 2, N = B * h * w;
  hgad::Rng rng(11);
  hgad::SequenceFlow<float> flow(D, P, 12, hgad::AllInOneOptions::hgad(), rng);
  hgad::GaussianMixturePrior<float> prior(15, 10, D, rng);
  auto gpu = hgad_test::gpu<float>();
  hgad::cuda::CudaLevel<float> level(flow, prior, gpu);
  hgad::Tensor<float> x = hgad::Tensor<float>::randn({N, D}, rng).to(gpu);
  hgad::Tensor<float> pos = hgad::positional_encoding_2d<float>(P, h, w).to(gpu);
  std::vector<std::int64_t> labels(static_cast<std::size_t>(N));
  for (hgad::Index n = 0; n < N; ++n) labels[static_cast<std::size_t>(n)] = (n / (h * w)) % 15;

  const auto first = level.train_step(x, pos, labels, 2);
  REQUIRE(std::isfinite(first.total));
  const std::size_t allocations = gpu->allocator().n_device_allocations();
  float previous = first.total;
  for (int step = 0; step < 3; ++step) {
    const auto terms = level.train_step(x, pos, labels, 2);
    REQUIRE(std::isfinite(terms.total));
    previous = terms.total;
  }
  CHECK(gpu->allocator().n_device_allocations() == allocations);
  CHECK(previous < first.total);  // four Adam steps on one batch lower its loss
  WARN("CudaLevel N = " << N << ": peak device memory of the allocator "
                        << double(gpu->allocator().peak_bytes_in_use()) / (1 << 20) << " MiB");

  // A NaN feature: NonFiniteError, and the parameters stay as they were.
  hgad::SequenceFlow<float> before_flow(D, P, 12, hgad::AllInOneOptions::hgad(), rng);
  hgad::GaussianMixturePrior<float> before_prior(15, 10, D, rng);
  level.copy_parameters_to(before_flow, before_prior);
  hgad::Tensor<float> bad = x.cpu();
  bad(5, 7) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_AS(level.train_step(bad, pos, labels, 2), hgad::NonFiniteError);
  hgad::SequenceFlow<float> after_flow(D, P, 12, hgad::AllInOneOptions::hgad(), rng);
  hgad::GaussianMixturePrior<float> after_prior(15, 10, D, rng);
  level.copy_parameters_to(after_flow, after_prior);
  const auto a = hgad_test::level_tensors(before_flow, before_prior, false, true);
  const auto b = hgad_test::level_tensors(after_flow, after_prior, false, true);
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    INFO(a[i].first);
    CHECK(a[i].second == b[i].second);
  }
  CHECK_THROWS_AS(level.train_step(x, pos, std::vector<std::int64_t>(N, 15), 2), hgad::Error);
}
