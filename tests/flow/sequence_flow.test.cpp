#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

#include "detail/thread_count.hpp"
#include "flow_test_util.hpp"
#include "golden.hpp"
#include "hgad/autograd/gradcheck.hpp"

namespace sequence_flow_test {

using hgad::AllInOneOptions;
using hgad::Index;
using hgad::Rng;
using hgad::SequenceFlow;
using hgad::Shape;
using hgad::Tensor;
using hgad::Var;
using namespace hgad::test;

using hgad_test::ThreadCount;

TEMPLATE_TEST_CASE("SequenceFlow inverse recovers the input and the log-dets cancel", "[flow]", float, double) {
  using Scalar = TestType;
  const double tol = std::is_same_v<Scalar, float> ? 1e-4 : 1e-10;
  for (const BlockCase& c : block_cases()) {
    SECTION(c.name) {
      Rng rng(31);
      SequenceFlow<Scalar> flow(c.D, c.P, 4, options_of(c), rng);
      perturb(flow, rng, 2.0);
      const Index N = 50;
      const auto x = Tensor<Scalar>::randn({N, c.D}, rng);
      const auto cond = c.P > 0 ? Tensor<Scalar>::randn({N, c.P}, rng) : Tensor<Scalar>();
      const auto fwd = flow.forward(x, cond);
      const auto inv = flow.inverse(fwd.out, cond);
      REQUIRE(all_finite(inv.out));
      CHECK(rel_diff(inv.out, x) < tol);
      for (Index n = 0; n < N; ++n) {
        CHECK(std::abs(double(fwd.log_jac_det(n)) + double(inv.log_jac_det(n))) <
              tol * std::max(1.0, std::abs(double(fwd.log_jac_det(n)))));
      }
      const Var<Scalar> cv = c.P > 0 ? Var<Scalar>(cond) : Var<Scalar>();
      const auto fwd_g = flow.forward(Var<Scalar>(x), cv);
      const auto inv_g = flow.inverse(fwd_g.out, cv);
      CHECK(rel_diff(inv_g.out.value(), x) < tol);
      CHECK(rel_diff(fwd_g.out.value(), fwd.out) < tol);
      CHECK(rel_diff(fwd_g.log_jac_det.value(), fwd.log_jac_det) < tol);
      CHECK(rel_diff(inv_g.log_jac_det.value(), inv.log_jac_det) < tol);
    }
  }
}

TEST_CASE("SequenceFlow log_jac_det is the sum of its blocks' log-dets", "[flow]") {
  Rng rng(32);
  SequenceFlow<double> flow(7, 3, 3, AllInOneOptions::hgad(), rng);
  perturb(flow, rng);
  const auto x = Tensor<double>::randn({11, 7}, rng);
  const auto cond = Tensor<double>::randn({11, 3}, rng);
  const auto r = flow.forward(x, cond);
  Tensor<double> h = x, total = Tensor<double>::zeros({11});
  for (Index k = 0; k < 3; ++k) {
    const auto b = flow.block(k).forward(h, cond);
    h = b.out;
    for (Index n = 0; n < 11; ++n) total(n) += b.log_jac_det(n);
  }
  CHECK(rel_diff(r.out, h) < 1e-14);
  CHECK(rel_diff(r.log_jac_det, total) < 1e-14);
}

TEMPLATE_TEST_CASE("The fused SequenceFlow backward equals the autograd gradients", "[flow]", float, double) {
  using Scalar = TestType;
  const double tol = agreement_tolerance<Scalar>();
  for (const BlockCase& c : block_cases()) {
    SECTION(c.name) {
      Rng rng(33);
      SequenceFlow<Scalar> flow(c.D, c.P, 3, options_of(c), rng);
      perturb(flow, rng, 2.0);
      const Index N = 45;
      const auto x = Tensor<Scalar>::randn({N, c.D}, rng);
      const auto cond = c.P > 0 ? Tensor<Scalar>::randn({N, c.P}, rng) : Tensor<Scalar>();
      const auto grad_z = Tensor<Scalar>::randn({N, c.D}, rng);
      const auto grad_ld = Tensor<Scalar>::randn({N}, rng);

      Var<Scalar> xv(x, true);
      Var<Scalar> cv = c.P > 0 ? Var<Scalar>(cond, true) : Var<Scalar>();
      const auto r = flow.forward(xv, cv);
      auto L = hgad::sum(r.out * Var<Scalar>(grad_z)) + hgad::sum(r.log_jac_det * Var<Scalar>(grad_ld));
      L.backward();
      std::vector<Tensor<Scalar>> expected;
      for (auto& p : flow.parameters()) {
        expected.push_back(p.grad().clone());
        p.zero_grad();
      }

      hgad::SequenceFlowCache<Scalar> cache;
      // Twice with the same cache: the second forward reuses the buffers and must give the same.
      flow.forward_train(x, cond, cache);
      const auto fr = flow.forward_train(x, cond, cache);
      CHECK(rel_diff(fr.out, r.out.value()) < tol);
      CHECK(rel_diff(fr.log_jac_det, r.log_jac_det.value()) < tol);
      CHECK(cache.activation_bytes() ==
            static_cast<Index>(sizeof(Scalar)) * N * (3 * (2 * (c.D - c.D / 2 + c.P) + 2 * (c.D / 2)) + 2 * c.D));
      Tensor<Scalar> grad_cond({N, c.P});
      const auto grad_x = flow.backward(cache, grad_z, grad_ld, &grad_cond);
      REQUIRE(all_finite(grad_x));
      CHECK(rel_diff(grad_x, xv.grad()) < tol);
      if (c.P > 0) CHECK(rel_diff(grad_cond, cv.grad()) < tol);
      const auto named = flow.named_parameters();
      for (std::size_t i = 0; i < named.size(); ++i) {
        INFO(named[i].first);
        REQUIRE(named[i].second.has_grad());
        REQUIRE(all_finite(named[i].second.grad()));
        CHECK(rel_diff(named[i].second.grad(), expected[i]) < tol);
      }
    }
  }
}

TEST_CASE("SequenceFlow gradients pass gradcheck", "[flow]") {
  Rng rng(34);
  SequenceFlow<double> flow(6, 2, 2, AllInOneOptions::hgad(), rng);
  perturb(flow, rng);
  std::vector<Tensor<double>> inputs{Tensor<double>::randn({3, 6}, rng), Tensor<double>::randn({3, 2}, rng)};
  for (const auto& p : flow.parameters()) inputs.push_back(p.value().clone());
  const auto loss = [&](const std::vector<Var<double>>& in) {
    std::size_t i = 2;
    for (Index k = 0; k < flow.n_blocks(); ++k) {
      auto& b = flow.block(k);
      b.fc1_weight() = in[i++];
      b.fc1_bias() = in[i++];
      b.fc2_weight() = in[i++];
      b.fc2_bias() = in[i++];
      b.gamma() = in[i++];
      b.offset() = in[i++];
    }
    const auto r = flow.forward(in[0], in[1]);
    return hgad::sum(hgad::square(r.out)) - hgad::sum(r.log_jac_det);
  };
  const auto result = hgad::gradcheck(loss, inputs);
  INFO(result.log);
  CHECK(result.ok);
}

TEST_CASE("The fused flow gives the same result on one thread and on several", "[flow]") {
  Rng rng(35);
  SequenceFlow<double> flow(10, 4, 2, AllInOneOptions::hgad(), rng);
  perturb(flow, rng);
  const Index N = 203;
  const auto x = Tensor<double>::randn({N, 10}, rng);
  const auto cond = Tensor<double>::randn({N, 4}, rng);
  const auto grad_z = Tensor<double>::randn({N, 10}, rng);
  const auto grad_ld = Tensor<double>::randn({N}, rng);
  std::vector<std::vector<Tensor<double>>> grads;
  std::vector<Tensor<double>> outs, dxs;
  for (int threads : {1, 2, 3}) {
    const ThreadCount count(threads);
    for (auto& p : flow.parameters()) p.zero_grad();
    hgad::SequenceFlowCache<double> cache;
    outs.push_back(flow.forward_train(x, cond, cache).out);
    dxs.push_back(flow.backward(cache, grad_z, grad_ld));
    grads.emplace_back();
    for (auto& p : flow.parameters()) grads.back().push_back(p.grad().clone());
  }
  for (std::size_t t = 1; t < outs.size(); ++t) {
    CHECK(rel_diff(outs[t], outs[0]) < 1e-13);
    CHECK(rel_diff(dxs[t], dxs[0]) < 1e-13);
    for (std::size_t i = 0; i < grads[0].size(); ++i) CHECK(rel_diff(grads[t][i], grads[0][i]) < 1e-13);
  }
}

TEST_CASE("SequenceFlow names its parameters block<k>.<name> and sets them by name", "[flow]") {
  Rng rng(36);
  SequenceFlow<double> flow(6, 4, 2, AllInOneOptions::hgad(), rng);
  const auto named = flow.named_parameters();
  REQUIRE(named.size() == 12u);
  CHECK(named[0].first == "block0.fc1.weight");
  CHECK(named[11].first == "block1.offset");
  CHECK(flow.parameters().size() == 12u);
  const auto gamma = Tensor<double>::randn({6}, rng);
  flow.set_parameter("block1.gamma", gamma);
  CHECK(rel_diff(flow.block(1).gamma().value(), gamma) == 0);
  const auto rot = hgad::random_rotation<double>(6, rng);
  flow.set_parameter("block0.rot", rot);
  CHECK(rel_diff(flow.block(0).rotation(), rot) == 0);
  CHECK_THROWS_AS(flow.set_parameter("block2.gamma", gamma), hgad::Error);
  CHECK_THROWS_AS(flow.set_parameter("blockx.gamma", gamma), hgad::Error);
  CHECK_THROWS_AS(flow.set_parameter("gamma", gamma), hgad::Error);
  CHECK_THROWS_AS(flow.append(hgad::AllInOneBlock<double>(6, 3, AllInOneOptions(), rng)), hgad::Error);
  hgad::SequenceFlowCache<double> cache;
  CHECK_THROWS_AS(flow.backward(cache, Tensor<double>::zeros({3, 6}), Tensor<double>()), hgad::Error);
}

TEST_CASE("positional_encoding_2d matches the CFlow formula", "[flow]") {
  const Index P = 8, h = 3, w = 5;
  const auto pe = hgad::positional_encoding_2d<double>(P, h, w);
  REQUIRE(pe.shape() == Shape({h * w, P}));
  for (Index i = 0; i < h; ++i) {
    for (Index j = 0; j < w; ++j) {
      for (Index k = 0; k < P / 4; ++k) {
        const double omega = std::pow(1e4, -2.0 * double(k) / double(P / 2));
        const Index n = i * w + j;
        CHECK(pe(n, 2 * k) == Approx(std::sin(j * omega)).margin(1e-15));
        CHECK(pe(n, 2 * k + 1) == Approx(std::cos(j * omega)).margin(1e-15));
        CHECK(pe(n, P / 2 + 2 * k) == Approx(std::sin(i * omega)).margin(1e-15));
        CHECK(pe(n, P / 2 + 2 * k + 1) == Approx(std::cos(i * omega)).margin(1e-15));
      }
    }
  }
  const auto pf = hgad::positional_encoding_2d<float>(256, 4, 4);
  CHECK(pf.shape() == Shape({16, 256}));
  CHECK_THROWS_AS(hgad::positional_encoding_2d<double>(6, 2, 2), hgad::Error);
  CHECK_THROWS_AS(hgad::positional_encoding_2d<double>(0, 2, 2), hgad::Error);
}

TEST_CASE("positional_encoding_2d equals the golden encoding", "[flow]") {
  auto golden = hgad::test::open_golden("hgad_golden_small.json");
  if (!golden) return;
  const Index P = golden->config_int("P"), h = golden->config_int("h"), w = golden->config_int("w");
  const Index B = golden->config_int("B");
  const auto pos = golden->tensor("input.pos");
  const auto pe = hgad::positional_encoding_2d<double>(P, h, w);
  for (Index b = 0; b < B; ++b) {
    for (Index n = 0; n < h * w; ++n) {
      for (Index k = 0; k < P; ++k) CHECK(pe(n, k) == Approx(pos(b * h * w + n, k)).margin(1e-15));
    }
  }
}

TEMPLATE_TEST_CASE("A shared condition of M rows acts as the condition repeated N/M times", "[flow]", float, double) {
  using Scalar = TestType;
  const double tol = agreement_tolerance<Scalar>();
  for (const BlockCase& c : block_cases()) {
    if (c.P == 0) continue;
    SECTION(c.name) {
      Rng rng(37);
      SequenceFlow<Scalar> flow(c.D, c.P, 3, options_of(c), rng);
      perturb(flow, rng, 2.0);
      const Index M = 13, N = 5 * M;
      const auto x = Tensor<Scalar>::randn({N, c.D}, rng);
      const auto shared = Tensor<Scalar>::randn({M, c.P}, rng);
      Tensor<Scalar> tiled({N, c.P});
      for (Index n = 0; n < N; ++n) {
        for (Index k = 0; k < c.P; ++k) tiled(n, k) = shared(n % M, k);
      }
      const auto grad_z = Tensor<Scalar>::randn({N, c.D}, rng);
      const auto grad_ld = Tensor<Scalar>::randn({N}, rng);

      const auto ref = flow.forward(x, tiled);
      const auto fwd = flow.forward(x, shared);
      CHECK(rel_diff(fwd.out, ref.out) < tol);
      CHECK(rel_diff(fwd.log_jac_det, ref.log_jac_det) < tol);
      CHECK(rel_diff(flow.inverse(fwd.out, shared).out, x) < (std::is_same_v<Scalar, float> ? 1e-4 : 1e-10));
      const auto graph = flow.forward(Var<Scalar>(x), Var<Scalar>(shared));
      CHECK(rel_diff(graph.out.value(), ref.out) < tol);

      const auto run = [&](const Tensor<Scalar>& cond, Tensor<Scalar>& grad_cond, std::vector<Tensor<Scalar>>& grads) {
        for (auto& p : flow.parameters()) p.zero_grad();
        hgad::SequenceFlowCache<Scalar> cache;
        flow.forward_train(x, cond, cache);
        const auto grad_x = flow.backward(cache, grad_z, grad_ld, &grad_cond);
        for (auto& p : flow.parameters()) grads.push_back(p.grad().clone());
        return grad_x;
      };
      Tensor<Scalar> grad_tiled({N, c.P}), grad_shared({M, c.P});
      std::vector<Tensor<Scalar>> grads_tiled, grads_shared;
      const auto dx_tiled = run(tiled, grad_tiled, grads_tiled);
      const auto dx_shared = run(shared, grad_shared, grads_shared);
      CHECK(rel_diff(dx_shared, dx_tiled) < tol);
      for (std::size_t i = 0; i < grads_tiled.size(); ++i) CHECK(rel_diff(grads_shared[i], grads_tiled[i]) < tol);
      Tensor<Scalar> summed({M, c.P});
      for (Index n = 0; n < N; ++n) {
        for (Index k = 0; k < c.P; ++k) summed(n % M, k) += grad_tiled(n, k);
      }
      CHECK(rel_diff(grad_shared, summed) < tol);

      // The autograd reference with the shared condition gives the same condition gradient.
      Var<Scalar> cv(shared, true);
      const auto r = flow.forward(Var<Scalar>(x), cv);
      auto L = hgad::sum(r.out * Var<Scalar>(grad_z)) + hgad::sum(r.log_jac_det * Var<Scalar>(grad_ld));
      L.backward();
      CHECK(rel_diff(cv.grad(), summed) < tol);
      CHECK_THROWS_AS(flow.forward(Tensor<Scalar>::randn({N + 1, c.D}, rng), shared), hgad::Error);
    }
  }
}

TEMPLATE_TEST_CASE("A projected condition gives the forward of the condition itself", "[flow]", float, double) {
  using Scalar = TestType;
  const double tol = agreement_tolerance<Scalar>();
  for (const BlockCase& c : block_cases()) {
    SECTION(c.name) {
      Rng rng(41);
      SequenceFlow<Scalar> flow(c.D, c.P, 3, options_of(c), rng);
      perturb(flow, rng, 2.0);
      const Index M = 13;
      const auto cond = c.P > 0 ? Tensor<Scalar>::randn({M, c.P}, rng) : Tensor<Scalar>();
      const auto projected = flow.project_condition(cond);
      CHECK(projected.blocks.size() == (c.P > 0 ? 3u : 0u));
      for (Index N : {M, 4 * M}) {  // one input of M rows (the scores' case), and four sharing it
        const auto x = Tensor<Scalar>::randn({N, c.D}, rng);
        const auto ref = flow.forward(x, cond);
        const auto fwd = flow.forward(x, projected);
        CHECK(rel_diff(fwd.out, ref.out) < tol);
        CHECK(rel_diff(fwd.log_jac_det, ref.log_jac_det) < tol);
      }
      if (c.P > 0) {
        const auto x = Tensor<Scalar>::randn({M + 1, c.D}, rng);
        CHECK_THROWS_WITH(flow.forward(x, projected), Catch::Contains("for 14 rows"));
        perturb(flow, rng, 2.0);  // a projection holds for the parameters it was made from
        CHECK(rel_diff(flow.forward(x.slice(0, M), projected).out, flow.forward(x.slice(0, M), cond).out) > tol);
      }
    }
  }
}

TEMPLATE_TEST_CASE(
    "A flow whose couplings' last layers are zero (the start of init = whiten) maps in inference "
    "as its training forward, which computes the subnets, does: bit for bit",
    "[flow]", float, double) {
  using Scalar = TestType;
  const double tol = agreement_tolerance<Scalar>();
  for (const BlockCase& c : block_cases()) {
    SECTION(c.name) {
      Rng rng(43);
      SequenceFlow<Scalar> flow(c.D, c.P, 3, options_of(c), rng);
      perturb(flow, rng, 2.0);  // W1, b1, the global scale and offset away from their start
      for (Index k = 0; k < flow.n_blocks(); ++k)  // W2 and b2 zero, as at the start
        for (Tensor<Scalar>* t :
             {&flow.block(k).fc2_weight().value(), &flow.block(k).fc2_bias().value()})
          std::fill(t->data(), t->data() + t->numel(), Scalar(0));
      const Index N = 37;
      const auto x = Tensor<Scalar>::randn({N, c.D}, rng);
      const auto cond = c.P > 0 ? Tensor<Scalar>::randn({N, c.P}, rng) : Tensor<Scalar>();
      const auto fwd = flow.forward(x, cond);  // the subnets skipped
      hgad::SequenceFlowCache<Scalar> cache;
      const auto train = flow.forward_train(x, cond, cache);  // the subnets computed
      REQUIRE(all_finite(fwd.out));
      CHECK(fwd.out.to_vector() == train.out.to_vector());
      CHECK(fwd.log_jac_det.to_vector() == train.log_jac_det.to_vector());
      // The autograd composition agrees, and the inverse (its subnets skipped too) recovers x.
      const Var<Scalar> cv = c.P > 0 ? Var<Scalar>(cond) : Var<Scalar>();
      const auto ref = flow.forward(Var<Scalar>(x), cv);
      CHECK(rel_diff(fwd.out, ref.out.value()) < tol);
      CHECK(rel_diff(fwd.log_jac_det, ref.log_jac_det.value()) < tol);
      const auto inv = flow.inverse(fwd.out, cond);
      CHECK(rel_diff(inv.out, x) < tol);
      for (Index n = 0; n < N; ++n)
        CHECK(std::abs(double(fwd.log_jac_det(n)) + double(inv.log_jac_det(n))) <
              tol * std::max(1.0, std::abs(double(fwd.log_jac_det(n)))));
      // One non-zero value of b2 in the last block: its subnet acts again, and the maps change.
      flow.block(flow.n_blocks() - 1).fc2_bias().value().data()[0] = Scalar(5);
      CHECK(rel_diff(flow.forward(x, cond).out, fwd.out) > 0.01);
      CHECK(rel_diff(flow.forward(x, cond).out, flow.forward(Var<Scalar>(x), cv).out.value()) <
            tol);
    }
  }
}

TEST_CASE("Gradients with a shared condition pass gradcheck", "[flow]") {
  Rng rng(38);
  hgad::AllInOneBlock<double> block(5, 3, AllInOneOptions::hgad(), rng);
  perturb(block, rng);
  std::vector<Tensor<double>> inputs{Tensor<double>::randn({6, 5}, rng), Tensor<double>::randn({2, 3}, rng)};
  const auto loss = [&](const std::vector<Var<double>>& in) {
    const auto r = block.forward(in[0], in[1]);
    return hgad::sum(hgad::square(r.out)) - hgad::sum(r.log_jac_det);
  };
  const auto result = hgad::gradcheck(loss, inputs);
  INFO(result.log);
  CHECK(result.ok);
}

TEST_CASE("The fused flow accepts an empty batch", "[flow]") {
  Rng rng(39);
  SequenceFlow<float> flow(6, 4, 2, AllInOneOptions::hgad(), rng);
  const Tensor<float> x({0, 6}), cond({0, 4});
  const auto r = flow.forward(x, cond);
  CHECK(r.out.shape() == Shape({0, 6}));
  CHECK(r.log_jac_det.shape() == Shape({0}));
  hgad::SequenceFlowCache<float> cache;
  const auto t = flow.forward_train(x, cond, cache);
  const auto g = flow.backward(cache, t.out, t.log_jac_det);
  CHECK(g.shape() == Shape({0, 6}));
  for (const auto& p : flow.parameters()) {
    REQUIRE(p.has_grad());
    CHECK(rel_diff(p.grad(), Tensor<float>::zeros(p.shape())) == 0);
  }
}

}  // namespace sequence_flow_test
