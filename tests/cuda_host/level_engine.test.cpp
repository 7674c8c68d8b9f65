// HostLevel, the GPU level algorithm (LevelEngine + the level kernel bodies) run on the CPU,
// against the fused CPU training path: forward, scores and three training steps.
#include <catch2/catch.hpp>

#include <cstdlib>

#include <hgad/cuda/level_engine.hpp>

#include "cuda_host/level_parity.hpp"

namespace level_engine_test {

namespace {

template <class Scalar>
auto make_host_level() {
  return [](const hgad::SequenceFlow<Scalar>& flow, const hgad::GaussianMixturePrior<Scalar>& prior,
            const hgad::cuda::LevelOptions& options) { return hgad::cuda::HostLevel<Scalar>(flow, prior, options); };
}

}  // namespace

TEST_CASE("HostLevel matches the fused CPU path over three training steps in double", "[cuda_host]") {
  hgad_test::LevelParityConfig c;
  c.D = 37;
  c.P = 12;
  c.n_blocks = 3;
  c.K = 4;
  c.M = 3;
  c.B = 3;
  c.h = 4;
  c.w = 5;
  SECTION("condition table, pinned clamp") { hgad_test::check_level_parity<double>(c, make_host_level<double>()); }
  SECTION("condition rows, head clamp") {
    c.condition_table = false;
    c.clamp = hgad::SoftClamp::head;
    c.seed = 3;
    hgad_test::check_level_parity<double>(c, make_host_level<double>());
  }
  SECTION("one intra-class centre, one image") {
    c.M = 1;
    c.B = 1;
    c.seed = 5;
    hgad_test::check_level_parity<double>(c, make_host_level<double>());
  }
}

TEST_CASE("HostLevel matches the fused CPU path at the paper's level sizes in float", "[cuda_host]") {
  hgad_test::LevelParityConfig c;  // D 200, P 256, K 15, M 10
  c.resync = true;
  c.n_blocks = 4;  // the [cuda] test runs all 12; here 4 keep the suite fast
  c.B = 2;
  c.h = 8;
  c.w = 8;
#ifdef HGAD_SANITIZED
  c.n_blocks = 2;
#endif
  hgad_test::check_level_parity<float>(c, make_host_level<float>());
  if (std::getenv("HGAD_PARITY_MORE") != nullptr) {
    for (std::uint64_t seed : {1, 2, 3}) {
      c.seed = seed;
      c.B = 8;
      hgad_test::check_level_parity<float>(c, make_host_level<float>());
    }
  }
}

}  // namespace level_engine_test
