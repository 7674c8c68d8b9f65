// Parity of every CudaBackend kernel with the CPU backend, and the autograd ops running on the GPU.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <hgad/autograd.hpp>
#include <hgad/cpu_backend.hpp>
#include <hgad/cuda/cuda_backend.cuh>
#include <hgad/tensor.hpp>

#include "cuda_test_util.cuh"

using hgad::Index;
using hgad_test::download;
using hgad_test::upload;

TEST_CASE("CudaBackend copies, fills and reuses cached device memory", "[cuda]") {
  HGAD_SKIP_WITHOUT_CUDA_DEVICE();
  auto& gpu = *hgad_test::gpu<float>();
  hgad::Rng rng(1);
  const auto host = hgad_test::random_values<float>(rng, 1000, -3, 3);
  auto a = upload(gpu, host);
  CHECK(download(gpu, a.data(), host.size()) == host);

  hgad::cuda::DeviceBuffer<float> b(gpu.allocator_ptr(), host.size());
  gpu.copy(a.data(), b.data(), 1000);
  CHECK(download(gpu, b.data(), host.size()) == host);

  gpu.fill(b.data(), 1000, 0.0f);
  CHECK(download(gpu, b.data(), 1000) == std::vector<float>(1000, 0.0f));
  gpu.fill(b.data(), 1000, 2.5f);
  CHECK(download(gpu, b.data(), 1000) == std::vector<float>(1000, 2.5f));

  // copy2d: a 7 x 9 block between strided matrices (ld 13 and 11), set, accumulated, broadcast.
  hgad::CpuBackend<float> cpu;
  std::vector<float> dst_host = hgad_test::random_values<float>(rng, 7 * 11, -1, 1);
  for (int mode = 0; mode < 3; ++mode) {
    const bool accumulate = mode == 1;
    const Index src_ld = mode == 2 ? 0 : 13;
    auto d = upload(gpu, dst_host);
    gpu.copy2d(7, 9, a.data(), src_ld, d.data(), 11, accumulate);
    std::vector<float> want = dst_host;
    cpu.copy2d(7, 9, host.data(), src_ld, want.data(), 11, accumulate);
    INFO("copy2d mode " << mode);
    CHECK(download(gpu, d.data(), want.size()) == want);
  }

  // The cache: freeing and re-allocating the same sizes does not call cudaMalloc again.
  {
    float* p = gpu.allocate(12345);
    float* q = gpu.allocate(777);
    gpu.deallocate(p, 12345);
    gpu.deallocate(q, 777);
  }
  const std::size_t before = gpu.allocator().n_device_allocations();
  for (int i = 0; i < 5; ++i) {
    float* p = gpu.allocate(12345);
    float* q = gpu.allocate(777);
    gpu.deallocate(q, 777);
    gpu.deallocate(p, 12345);
  }
  CHECK(gpu.allocator().n_device_allocations() == before);
  CHECK(gpu.allocator().peak_bytes_in_use() >= gpu.allocator().bytes_in_use());
  CHECK(gpu.allocate(0) == nullptr);
}

TEMPLATE_TEST_CASE("CudaBackend GEMM matches the CPU backend for every transpose", "[cuda]", float,
                   double) {
  HGAD_SKIP_WITHOUT_CUDA_DEVICE();
  using S = TestType;
  auto& gpu = *hgad_test::gpu<S>();
  hgad::CpuBackend<S> cpu;
  hgad::Rng rng(2);
  const Index m = 37, n = 53, k = 29;
  for (auto ta : {hgad::Transpose::no, hgad::Transpose::yes}) {
    for (auto tb : {hgad::Transpose::no, hgad::Transpose::yes}) {
      for (S beta : {S(0), S(0.5)}) {
        const Index a_rows = ta == hgad::Transpose::no ? m : k, a_cols = ta == hgad::Transpose::no ? k : m;
        const Index b_rows = tb == hgad::Transpose::no ? k : n, b_cols = tb == hgad::Transpose::no ? n : k;
        const Index lda = a_cols + 3, ldb = b_cols + 2, ldc = n + 5;
        const auto A = hgad_test::random_values<S>(rng, static_cast<std::size_t>(a_rows * lda), -1, 1);
        const auto B = hgad_test::random_values<S>(rng, static_cast<std::size_t>(b_rows * ldb), -1, 1);
        const auto C0 = hgad_test::random_values<S>(rng, static_cast<std::size_t>(m * ldc), -1, 1);
        std::vector<S> want = C0;
        cpu.gemm(ta, tb, m, n, k, S(0.7), A.data(), lda, B.data(), ldb, beta, want.data(), ldc);
        auto dA = upload(gpu, A), dB = upload(gpu, B), dC = upload(gpu, C0);
        gpu.gemm(ta, tb, m, n, k, S(0.7), dA.data(), lda, dB.data(), ldb, beta, dC.data(), ldc);
        INFO("trans_a " << (ta == hgad::Transpose::yes) << " trans_b " << (tb == hgad::Transpose::yes)
                        << " beta " << beta);
        HGAD_CHECK_CLOSE("gemm", download(gpu, dC.data(), want.size()), want,
                         hgad_test::parity_rel<S>(), 1e-2);
      }
    }
  }
}

TEST_CASE("CudaBackend element-wise kernels match the CPU backend", "[cuda]") {
  HGAD_SKIP_WITHOUT_CUDA_DEVICE();
  auto& gpu = *hgad_test::gpu<float>();
  hgad::CpuBackend<float> cpu;
  hgad::Rng rng(3);
  const std::size_t n = 10007;
  const auto x_any = hgad_test::random_values<float>(rng, n, -4, 4);
  const auto x_pos = hgad_test::random_values<float>(rng, n, 0.1, 3);
  const hgad::UnaryOp unary_ops[] = {
      hgad::UnaryOp::identity, hgad::UnaryOp::neg,       hgad::UnaryOp::exp,
      hgad::UnaryOp::log,      hgad::UnaryOp::tanh,      hgad::UnaryOp::sigmoid,
      hgad::UnaryOp::softplus, hgad::UnaryOp::relu,      hgad::UnaryOp::square,
      hgad::UnaryOp::scale,    hgad::UnaryOp::add_scalar, hgad::UnaryOp::reciprocal};
  for (auto op : unary_ops) {
    const auto& x = op == hgad::UnaryOp::log || op == hgad::UnaryOp::reciprocal ? x_pos : x_any;
    for (float param : {0.5f, 1.7f}) {
      std::vector<float> want(n);
      cpu.unary(op, Index(n), x.data(), want.data(), param);
      auto dx = upload(gpu, x);
      hgad::cuda::DeviceBuffer<float> dy(gpu.allocator_ptr(), n);
      gpu.unary(op, Index(n), dx.data(), dy.data(), param);
      INFO("unary op " << static_cast<int>(op) << " param " << param);
      HGAD_CHECK_CLOSE("unary", download(gpu, dy.data(), n), want, 1e-4, 1e-3);
    }
  }
  const auto a = hgad_test::random_values<float>(rng, n, -1, 1);
  const auto b = hgad_test::random_values<float>(rng, n, 0.5, 2);
  const hgad::BinaryOp binary_ops[] = {
      hgad::BinaryOp::add,           hgad::BinaryOp::sub,           hgad::BinaryOp::mul,
      hgad::BinaryOp::div,           hgad::BinaryOp::relu_backward, hgad::BinaryOp::tanh_backward,
      hgad::BinaryOp::sigmoid_backward, hgad::BinaryOp::softplus_backward};
  auto da = upload(gpu, a), db = upload(gpu, b);
  hgad::cuda::DeviceBuffer<float> dy(gpu.allocator_ptr(), n);
  for (auto op : binary_ops) {
    std::vector<float> want(n);
    cpu.binary(op, Index(n), a.data(), b.data(), want.data(), 0.5f);
    gpu.binary(op, Index(n), da.data(), db.data(), dy.data(), 0.5f);
    INFO("binary op " << static_cast<int>(op));
    HGAD_CHECK_CLOSE("binary", download(gpu, dy.data(), n), want, 1e-4, 1e-3);
    // Broadcast over rows (b has cols values) and columns (b has rows values): 97 x 103.
    for (auto how : {hgad::Broadcast::row, hgad::Broadcast::col}) {
      const Index rows = 97, cols = 103;
      std::vector<float> want_b(static_cast<std::size_t>(rows * cols));
      cpu.binary_broadcast(op, how, rows, cols, a.data(), b.data(), want_b.data(), 0.5f);
      gpu.binary_broadcast(op, how, rows, cols, da.data(), db.data(), dy.data(), 0.5f);
      INFO("broadcast " << (how == hgad::Broadcast::row ? "row" : "col"));
      HGAD_CHECK_CLOSE("binary_broadcast", download(gpu, dy.data(), want_b.size()), want_b, 1e-4,
                       1e-3);
    }
  }
  // axpy
  std::vector<float> want = b;
  cpu.axpy(Index(n), -0.3f, a.data(), want.data());
  auto dyb = upload(gpu, b);
  gpu.axpy(Index(n), -0.3f, da.data(), dyb.data());
  HGAD_CHECK_CLOSE("axpy", download(gpu, dyb.data(), n), want, 1e-4, 1e-3);
}

TEMPLATE_TEST_CASE("CudaBackend reductions match the CPU backend", "[cuda]", float, double) {
  HGAD_SKIP_WITHOUT_CUDA_DEVICE();
  using S = TestType;
  auto& gpu = *hgad_test::gpu<S>();
  hgad::CpuBackend<S> cpu;
  hgad::Rng rng(4);
  const double rel = hgad_test::parity_rel<S>();
  for (auto [rows, cols] : {std::pair<Index, Index>{1, 1}, {33, 1}, {1000, 15}, {64, 200}, {5, 4099}}) {
    const auto x = hgad_test::random_values<S>(rng, static_cast<std::size_t>(rows * cols), -5, 5);
    auto dx = upload(gpu, x);
    hgad::cuda::DeviceBuffer<S> dy(gpu.allocator_ptr(), static_cast<std::size_t>(std::max(rows, cols)));
    INFO("rows " << rows << " cols " << cols);
    for (auto op : {hgad::Reduce::sum, hgad::Reduce::max, hgad::Reduce::logsumexp}) {
      std::vector<S> want(static_cast<std::size_t>(rows));
      cpu.reduce_rows(op, rows, cols, x.data(), want.data());
      gpu.reduce_rows(op, rows, cols, dx.data(), dy.data());
      INFO("reduce op " << static_cast<int>(op));
      HGAD_CHECK_CLOSE("reduce_rows", download(gpu, dy.data(), want.size()), want, rel, 1e-2);
      const S all_want = cpu.reduce_all(op, rows * cols, x.data());
      const S all_got = gpu.reduce_all(op, rows * cols, dx.data());
      HGAD_CHECK_CLOSE("reduce_all", std::vector<S>{all_got}, std::vector<S>{all_want}, rel, 1e-1);
    }
    for (bool accumulate : {false, true}) {
      std::vector<S> init = hgad_test::random_values<S>(rng, static_cast<std::size_t>(cols), -1, 1);
      std::vector<S> want = init;
      cpu.sum_cols(rows, cols, x.data(), want.data(), accumulate);
      auto dcols = upload(gpu, init);
      gpu.sum_cols(rows, cols, dx.data(), dcols.data(), accumulate);
      INFO("sum_cols accumulate " << accumulate);
      HGAD_CHECK_CLOSE("sum_cols", download(gpu, dcols.data(), want.size()), want, rel, 1e-1);
    }
  }
  // A long buffer through the two-pass reduce_all, against double-precision references.
  const auto big = hgad_test::random_values<S>(rng, 1000003, -1, 1);
  auto dbig = upload(gpu, big);
  double sum = 0, abs_sum = 0, max = -1e300, exp_sum = 0;
  for (S v : big) {
    sum += double(v);
    abs_sum += std::abs(double(v));
    max = std::max(max, double(v));
  }
  for (S v : big) exp_sum += std::exp(double(v) - max);
  const double want_all[3] = {sum, max, max + std::log(exp_sum)};
  // A tree sum's rounding error stays below log2(n) eps sum |x|; 1e-6 sum |x| in float.
  const double abs_tol[3] = {(std::is_same_v<S, float> ? 1e-6 : 1e-13) * abs_sum, 0,
                             std::is_same_v<S, float> ? 1e-4 : 1e-10};
  int i = 0;
  for (auto op : {hgad::Reduce::sum, hgad::Reduce::max, hgad::Reduce::logsumexp}) {
    const double got = double(gpu.reduce_all(op, Index(big.size()), dbig.data()));
    INFO("reduce_all op " << static_cast<int>(op) << " got " << got << " want " << want_all[i]);
    REQUIRE(std::isfinite(got));
    CHECK(std::abs(got - want_all[i]) <= abs_tol[i] + 1e-6 * std::abs(want_all[i]));
    ++i;
  }
  CHECK(gpu.all_finite(Index(big.size()), dbig.data()));
  std::vector<S> with_nan = big;
  with_nan[777777] = std::numeric_limits<S>::quiet_NaN();
  auto dnan = upload(gpu, with_nan);
  CHECK_FALSE(gpu.all_finite(Index(with_nan.size()), dnan.data()));
  std::vector<S> with_inf(100, S(1));
  with_inf[3] = -std::numeric_limits<S>::infinity();
  auto dinf = upload(gpu, with_inf);
  CHECK_FALSE(gpu.all_finite(100, dinf.data()));
  CHECK(std::isnan(gpu.reduce_all(hgad::Reduce::max, Index(with_nan.size()), dnan.data())));
}

TEST_CASE("CudaBackend softmax rows and their backward match the CPU backend", "[cuda]") {
  HGAD_SKIP_WITHOUT_CUDA_DEVICE();
  auto& gpu = *hgad_test::gpu<float>();
  hgad::CpuBackend<float> cpu;
  hgad::Rng rng(5);
  for (auto [rows, cols] : {std::pair<Index, Index>{1, 1}, {300, 15}, {64, 200}, {3, 1500}}) {
    const auto n = static_cast<std::size_t>(rows * cols);
    const auto x = hgad_test::random_values<float>(rng, n, -6, 6);
    const auto gy = hgad_test::random_values<float>(rng, n, -1, 1);
    const auto gx0 = hgad_test::random_values<float>(rng, n, -1, 1);
    auto dx = upload(gpu, x), dgy = upload(gpu, gy);
    hgad::cuda::DeviceBuffer<float> dy(gpu.allocator_ptr(), n);
    for (bool log : {false, true}) {
      INFO("rows " << rows << " cols " << cols << " log " << log);
      std::vector<float> y(n);
      cpu.softmax_rows(rows, cols, x.data(), y.data(), log);
      gpu.softmax_rows(rows, cols, dx.data(), dy.data(), log);
      HGAD_CHECK_CLOSE("softmax_rows", download(gpu, dy.data(), n), y, 1e-4, 1e-3);
      for (bool accumulate : {false, true}) {
        std::vector<float> gx = gx0;
        cpu.softmax_rows_backward(rows, cols, y.data(), gy.data(), gx.data(), log, accumulate);
        auto dyc = upload(gpu, y);
        auto dgx = upload(gpu, gx0);
        gpu.softmax_rows_backward(rows, cols, dyc.data(), dgy.data(), dgx.data(), log, accumulate);
        INFO("accumulate " << accumulate);
        HGAD_CHECK_CLOSE("softmax_rows_backward", download(gpu, dgx.data(), n), gx, 1e-4, 1e-2);
      }
    }
  }
}

TEST_CASE("CudaBackend gathers and scatter-adds rows like the CPU backend", "[cuda]") {
  HGAD_SKIP_WITHOUT_CUDA_DEVICE();
  auto& gpu = *hgad_test::gpu<float>();
  hgad::CpuBackend<float> cpu;
  hgad::Rng rng(6);
  const Index src_rows = 15, cols = 37;
  const std::vector<std::int64_t> index = {3, 0, 14, 3, 3, 7, 0, 9, 14, 1, 2, 3};
  const Index n_index = Index(index.size());
  const auto src = hgad_test::random_values<float>(rng, static_cast<std::size_t>(src_rows * cols), -2, 2);
  auto dsrc = upload(gpu, src);
  std::vector<float> want(static_cast<std::size_t>(n_index * cols));
  cpu.gather_rows(index.data(), n_index, cols, src.data(), want.data());
  hgad::cuda::DeviceBuffer<float> dg(gpu.allocator_ptr(), want.size());
  gpu.gather_rows(index.data(), n_index, cols, dsrc.data(), dg.data());
  CHECK(download(gpu, dg.data(), want.size()) == want);

  const auto rows_in = hgad_test::random_values<float>(rng, static_cast<std::size_t>(n_index * cols), -1, 1);
  std::vector<float> target = src;
  cpu.scatter_add_rows(index.data(), n_index, cols, rows_in.data(), target.data());
  auto din = upload(gpu, rows_in);
  auto dtarget = upload(gpu, src);
  gpu.scatter_add_rows(index.data(), n_index, cols, din.data(), dtarget.data());
  HGAD_CHECK_CLOSE("scatter_add_rows", download(gpu, dtarget.data(), target.size()), target, 1e-5, 1e-3);
}

TEST_CASE("Tensors move to the GPU and the autograd ops run there unchanged", "[cuda]") {
  HGAD_SKIP_WITHOUT_CUDA_DEVICE();
  using V = hgad::Var<float>;
  const hgad::BackendPtr<float> gpu = hgad_test::gpu<float>();
  hgad::Rng rng(7);
  const auto x = hgad::Tensor<float>::randn({64, 20}, rng);
  const auto w1 = hgad::Tensor<float>::randn({20, 31}, rng, 0, 0.3);
  const auto b1 = hgad::Tensor<float>::randn({31}, rng, 0, 0.1);
  const auto w2 = hgad::Tensor<float>::randn({31, 7}, rng, 0, 0.3);
  std::vector<std::int64_t> labels(64);
  for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = std::int64_t(i % 7);

  const auto x_back = x.to(gpu).cpu();
  CHECK(x_back.to_vector() == x.to_vector());
  CHECK(x.to(gpu).device() == hgad::Device::cuda);

  // A small network with every kind of op: GEMM, broadcast add, ReLU, tanh, softplus, log-softmax,
  // gather, reductions.
  struct Result {
    float loss;
    std::vector<float> g_w1, g_b1, g_w2;
  };
  const auto run = [&](const hgad::BackendPtr<float>& backend) {
    V vx(x.to(backend));
    auto vw1 = V::parameter(w1.to(backend));
    auto vb1 = V::parameter(b1.to(backend));
    auto vw2 = V::parameter(w2.to(backend));
    auto h = hgad::relu(hgad::matmul(vx, vw1) + vb1);
    auto logits = hgad::matmul(hgad::tanh(h) + hgad::softplus(h, 0.5f), vw2);
    auto ls = hgad::log_softmax_rows(logits);
    auto picked = hgad::gather_rows(hgad::reshape(ls, hgad::Shape{64 * 7, 1}), [&] {
      std::vector<std::int64_t> idx(64);
      for (std::size_t i = 0; i < 64; ++i) idx[i] = std::int64_t(i) * 7 + labels[i];
      return idx;
    }());
    auto loss = -hgad::mean(picked) + hgad::mean(hgad::logsumexp_rows(logits)) * 0.1f;
    loss.backward();
    return Result{loss.value().item(), vw1.grad().to_vector(), vb1.grad().to_vector(),
                  vw2.grad().to_vector()};
  };
  const Result cpu_result = run(hgad::cpu_backend<float>());
  const Result gpu_result = run(gpu);
  REQUIRE(std::isfinite(gpu_result.loss));
  CHECK(gpu_result.loss == Approx(cpu_result.loss).epsilon(1e-4));
  HGAD_CHECK_CLOSE("grad w1", gpu_result.g_w1, cpu_result.g_w1, 1e-4, 1e-2);
  HGAD_CHECK_CLOSE("grad b1", gpu_result.g_b1, cpu_result.g_b1, 1e-4, 1e-2);
  HGAD_CHECK_CLOSE("grad w2", gpu_result.g_w2, cpu_result.g_w2, 1e-4, 1e-2);
}
