#include <catch2/catch.hpp>

#include "golden.hpp"

namespace golden_test {

TEST_CASE("The golden loader reads tensors, scalars and the configuration", "[golden]") {
  auto golden = hgad::test::open_golden("hgad_golden_small.json");
  if (!golden) return;
  const int n = golden->config_int("N");
  const int d = golden->config_int("D");
  CHECK(n == 16);
  CHECK(d == 8);
  CHECK(golden->config_string("clamp_mode") == "pinned");
  CHECK(golden->config_list("betas") == std::vector<double>{0.95, 0.99});
  REQUIRE(golden->train_sequence().size() == 3);
  CHECK(golden->train_sequence()[2].at("stage") == 2);
  REQUIRE(golden->train_losses().size() == 3);

  const hgad::Tensor<double> x = golden->tensor("input.x");
  CHECK(x.shape() == hgad::Shape({n, d}));
  CHECK(golden->shape("param.delta") == hgad::Shape({3, 2, 8}));
  const auto labels = golden->index_tensor("input.labels");
  CHECK(labels.size() == static_cast<std::size_t>(n));
  for (auto y : labels) CHECK((y >= 0 && y < 3));
  CHECK(golden->scalar("stage1.loss") == Approx(233.93201264721455).epsilon(1e-15));
  CHECK(golden->string_list("stage1.params_without_grad") == std::vector<std::string>{"delta", "phi_intra"});
  CHECK_THROWS_AS(golden->tensor("no.such.tensor"), hgad::Error);
  CHECK(golden->tensor_as<float>("input.x").shape() == x.shape());
}

}  // namespace golden_test
