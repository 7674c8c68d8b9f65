// NcclCommunicator (hgad/cuda/nccl_communicator.cuh): the GPU's rank-order sum against the host's,
// and, with one rank (one GPU), a data-parallel CUDA level summing its gradients through NCCL
// against the same level without a communicator. Two ranks need two GPUs; the multi-rank sums
// are the host algorithm's (tests/parallel/data_parallel.test.cpp runs it through SumsOnDevice).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <hgad/cuda/cuda_level.cuh>
#include <hgad/cuda/nccl_communicator.cuh>
#include <hgad/flow/positional_encoding.hpp>
#include <hgad/parallel/communicator.hpp>

#include "cuda_host/level_parity.hpp"
#include "cuda_test_util.cuh"

TEMPLATE_TEST_CASE("The GPU's rank-order sum has the bits of the host's", "[cuda][nccl]", float,
                   double) {
  HGAD_SKIP_WITHOUT_CUDA_DEVICE();
  using T = TestType;
  const std::size_t ranks = 5, slice = 1001;
  // Values of very different sizes, so that another order of the additions rounds differently.
  hgad::Rng rng(3);
  std::vector<T> received(ranks * slice);
  for (std::size_t i = 0; i < received.size(); ++i)
    received[i] = T(std::ldexp(rng.normal(), static_cast<int>(i % 7) * 9 - 27));
  std::vector<T> expected(slice), reversed(slice);
  for (std::size_t i = 0; i < slice; ++i) {
    T sum = received[i];  // written out here: ((s_0 + s_1) + s_2) + ...
    for (std::size_t r = 1; r < ranks; ++r) sum += received[r * slice + i];
    expected[i] = sum;
    T back = received[(ranks - 1) * slice + i];
    for (std::size_t r = ranks - 1; r-- > 0;) back += received[r * slice + i];
    reversed[i] = back;
  }
  REQUIRE(std::memcmp(expected.data(), reversed.data(), slice * sizeof(T)) != 0);

  auto gpu = hgad_test::gpu<T>();
  hgad::Tensor<T> in = hgad::Tensor<T>::from_vector({hgad::Index(received.size())}, received).to(gpu);
  hgad::Tensor<T> out = hgad::Tensor<T>::empty({hgad::Index(slice)}, gpu);
  hgad::cuda::rank_order_sum_on_gpu(in.data(), slice, ranks, out.data(), gpu->stream());
  const hgad::Tensor<T> got = out.cpu();
  CHECK(std::memcmp(got.data(), expected.data(), slice * sizeof(T)) == 0);
}

TEST_CASE(
    "A CUDA level summing its gradients through NCCL over one rank trains as without a "
    "communicator, bit for bit",
    "[cuda][nccl]") {
  HGAD_SKIP_WITHOUT_CUDA_DEVICE();
  const hgad::Index D = 24, P = 16, h = 4, w = 4, B = 3, N = B * h * w, K = 3, M = 2;
  hgad::Rng rng(21);
  hgad::SequenceFlow<float> flow(D, P, 3, hgad::AllInOneOptions::hgad(), rng);
  hgad::GaussianMixturePrior<float> prior(K, M, D, rng);
  auto gpu = hgad_test::gpu<float>();
  hgad::LevelTraining training;
  hgad::EngineLevelDevice<float, hgad::cuda::CudaLevel<float>> plain(hgad::Device::cuda, flow, &prior,
                                                                     training, gpu);
  hgad::EngineLevelDevice<float, hgad::cuda::CudaLevel<float>> summed(hgad::Device::cuda, flow, &prior,
                                                                      training, gpu);
  hgad::SingleProcess host;
  hgad::cuda::NcclCommunicator nccl(host, gpu->device_index());
  CHECK(nccl.size() == 1);
  summed.set_data_parallel(nccl, 1.0);

  const hgad::Tensor<float> pos = hgad::positional_encoding_2d<float>(P, h, w);
  std::vector<std::int64_t> labels(static_cast<std::size_t>(N));
  for (hgad::Index n = 0; n < N; ++n) labels[static_cast<std::size_t>(n)] = (n / (h * w)) % K;
  const int steps = 4;
  for (int step = 0; step < steps; ++step) {
    const hgad::Tensor<float> x = hgad::Tensor<float>::randn({N, D}, rng);
    const int stage = step < 2 ? 1 : 2;
    const auto a = plain.train_step(x, pos, labels, stage, 1e-3, {0, step});
    const auto b = summed.train_step(x, pos, labels, stage, 1e-3, {0, step});
    INFO("step " << step);
    for (std::size_t k = 0; k < a.named().size(); ++k) CHECK(a.named()[k].second == b.named()[k].second);
  }
  CHECK(nccl.gpu_sums() == steps);  // every step's gradients went through NCCL

  // Two fresh models (parameters of their own, not handles on one) to copy the levels into.
  hgad::Rng rng_a(5), rng_b(6);
  hgad::SequenceFlow<float> flow_a(D, P, 3, hgad::AllInOneOptions::hgad(), rng_a);
  hgad::SequenceFlow<float> flow_b(D, P, 3, hgad::AllInOneOptions::hgad(), rng_b);
  hgad::GaussianMixturePrior<float> prior_a(K, M, D, rng_a), prior_b(K, M, D, rng_b);
  plain.engine().copy_parameters_to(flow_a, prior_a);
  summed.engine().copy_parameters_to(flow_b, prior_b);
  const auto a = hgad_test::level_tensors(flow_a, prior_a, false, true);
  const auto b = hgad_test::level_tensors(flow_b, prior_b, false, true);
  const auto start = hgad_test::level_tensors(flow, prior, false, true);
  REQUIRE(a.size() == b.size());
  bool moved = false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    INFO(a[i].first);
    CHECK(a[i].second == b[i].second);
    moved = moved || a[i].second != start[i].second;
  }
  CHECK(moved);  // the steps trained the level
}
