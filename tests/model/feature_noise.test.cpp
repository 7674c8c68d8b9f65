// Noise on the flow's input in training (ModelConfig::feature_noise, docs/algorithm.md §4.2): the
// draws of add_training_noise, and a fit() with noise against the same steps taken by hand through
// the public pieces (the whitening, add_training_noise, train_step).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <hgad/flow/positional_encoding.hpp>
#include <hgad/model/hgad_model.hpp>
#include <hgad/model/train_step.hpp>

#include "model/parameters.hpp"
#include "model/synthetic.hpp"

namespace feature_noise_test {

namespace {

using hgad::Index;
using hgad_test::all_parameters;
using hgad_test::largest_difference;

// A batch of `images` images of `rows` rows of D values, small integers (exact in float, so that
// what the noise added reads back to the rounding of the sums).
template <class Scalar>
hgad::Tensor<Scalar> indexed_batch(Index images, Index rows, Index D) {
  hgad::Tensor<Scalar> x({images * rows, D});
  for (Index i = 0; i < x.numel(); ++i) x.data()[i] = Scalar(i % 97);
  return x;
}

}  // namespace

TEMPLATE_TEST_CASE(
    "add_training_noise adds sigma N(0, 1) per element, from a stream per (seed, step, level, "
    "image's place) that a split batch reproduces",
    "[model]", float, double) {
  using Scalar = TestType;
  const Index images = 4, rows = 500, D = 8;
  const hgad::Tensor<Scalar> clean = indexed_batch<Scalar>(images, rows, D);
  const double sigma = 0.3;

  hgad::Tensor<Scalar> noisy = clean.clone();
  hgad::add_training_noise(noisy, sigma, 5, 11, 1, 0, rows);
  // The added values: mean about 0 and standard deviation about sigma (16,000 draws: the standard
  // error of the mean is 0.0024, of the standard deviation 0.0017).
  double sum = 0, squares = 0;
  for (Index i = 0; i < clean.numel(); ++i) {
    const double added = double(noisy.data()[i]) - double(clean.data()[i]);
    sum += added;
    squares += added * added;
  }
  const double n = double(clean.numel());
  const double mean = sum / n, sd = std::sqrt(squares / n - mean * mean);
  CHECK(std::abs(mean) < 0.012);
  CHECK(std::abs(sd - sigma) < 0.01);

  // The same arguments add the same noise; another seed, step, level or place another.
  hgad::Tensor<Scalar> again = clean.clone();
  hgad::add_training_noise(again, sigma, 5, 11, 1, 0, rows);
  CHECK(largest_difference(std::vector<Scalar>(again.data(), again.data() + again.numel()),
                           std::vector<Scalar>(noisy.data(), noisy.data() + noisy.numel())) == 0);
  const auto first_value_added = [&](std::uint64_t seed, std::int64_t step, Index level,
                                     Index first_image) {
    hgad::Tensor<Scalar> x = clean.clone();
    hgad::add_training_noise(x, sigma, seed, step, level, first_image, rows);
    return double(x.data()[0]) - double(clean.data()[0]);
  };
  const double base = first_value_added(5, 11, 1, 0);
  CHECK(base == double(noisy.data()[0]) - double(clean.data()[0]));
  CHECK(first_value_added(6, 11, 1, 0) != base);
  CHECK(first_value_added(5, 12, 1, 0) != base);
  CHECK(first_value_added(5, 11, 0, 0) != base);
  CHECK(first_value_added(5, 11, 1, 1) != base);

  // The last two images as a batch of their own, placed at 2: the noise of the whole batch's
  // images 2 and 3, as a data-parallel rank holding them adds it.
  hgad::Tensor<Scalar> part({2 * rows, D});
  std::copy(clean.data() + 2 * rows * D, clean.data() + clean.numel(), part.data());
  hgad::add_training_noise(part, sigma, 5, 11, 1, 2, rows);
  for (Index i = 0; i < part.numel(); ++i)
    REQUIRE(part.data()[i] == noisy.data()[2 * rows * D + i]);

  // sigma = 0 adds nothing; bad arguments name themselves.
  hgad::Tensor<Scalar> untouched = clean.clone();
  hgad::add_training_noise(untouched, 0.0, 5, 11, 1, 0, rows);
  for (Index i = 0; i < clean.numel(); ++i) REQUIRE(untouched.data()[i] == clean.data()[i]);
  CHECK_THROWS_WITH(hgad::add_training_noise(untouched, -0.1, 5, 11, 1, 0, rows),
                    Catch::Contains("sigma must be finite and >= 0, got -0.1"));
  CHECK_THROWS_WITH(hgad::add_training_noise(untouched, INFINITY, 5, 11, 1, 0, rows),
                    Catch::Contains("sigma must be finite"));
  CHECK_THROWS_WITH(hgad::add_training_noise(untouched, sigma, 5, 11, 1, 0, 3),
                    Catch::Contains("is not whole images of 3 rows"));
}

TEMPLATE_TEST_CASE("fit with feature_noise trains on the whitened features plus the step's noise",
                   "[model]", float, double) {
  using Scalar = TestType;
  // One image, so that every step's batch is that image at place 0 whatever the shuffle.
  const hgad_test::Synthetic data = hgad_test::make_synthetic(1, 0, 23);
  std::vector<hgad::Tensor<Scalar>> features;
  for (const hgad::Tensor<float>& level : data.features) {
    hgad::Tensor<Scalar> first({1, level.dim(1), level.dim(2), level.dim(3)});
    const Index per_image = level.numel() / level.dim(0);
    for (Index i = 0; i < per_image; ++i) first.data()[i] = Scalar(level.data()[i]);
    features.push_back(first);
  }
  const std::vector<std::int64_t> labels = {0};

  hgad::ModelConfig c = hgad_test::synthetic_config(hgad::Objective::nf);
  c.init = hgad::ModelInit::whiten;
  c.feature_noise = 0.25;
  c.batch_size = 1;
  c.meta_epochs = 4;
  c.warmup_meta_epochs = 0;
  c.lr_decay_rate = 1;  // a constant learning rate, c.lr
  c.lr = 1e-2;

  hgad::HgadModel<Scalar> fitted(c);
  fitted.fit(features, labels);

  const auto by_hand = [&](double sigma) {
    hgad::HgadModel<Scalar> model(c);
    model.initialise_from_data(features, labels);
    hgad::GaussianMixturePrior<Scalar>* const no_prior = nullptr;  // the NF objective's
    const hgad::LevelTraining training = hgad::level_training(c);
    std::vector<hgad::Adam<Scalar>> adams;
    for (Index l = 0; l < model.n_levels(); ++l)
      adams.push_back(hgad::make_level_adam(model.flow(l), no_prior, training.adam));
    for (std::int64_t step = 0; step < c.meta_epochs; ++step)
      for (Index l = 0; l < model.n_levels(); ++l) {
        const hgad::LevelSpec& s = c.levels[static_cast<std::size_t>(l)];
        const Index hw = s.height * s.width;
        hgad::Tensor<Scalar> x({hw, s.dim});
        const Scalar* level = features[static_cast<std::size_t>(l)].data();
        std::copy(level, level + hw * s.dim, x.data());
        std::vector<Index> rows(static_cast<std::size_t>(hw));
        for (Index p = 0; p < hw; ++p) rows[static_cast<std::size_t>(p)] = p;
        x = model.whitening(l).forward_rows(x, rows);
        hgad::add_training_noise(x, sigma, c.seed, step, l, 0, hw);
        hgad::LossOptions loss = training.loss;
        loss.log_jac_det_offset = model.whitening(l).log_jac_det();
        adams[static_cast<std::size_t>(l)].set_lr(c.lr);
        hgad::SequenceFlowCache<Scalar> cache;
        hgad::train_step(model.flow(l), no_prior, adams[static_cast<std::size_t>(l)], x,
                         hgad::positional_encoding_2d<Scalar>(c.pos_dim, s.height, s.width),
                         std::vector<std::int64_t>(std::size_t(hw), 0), 2, loss,
                         hgad::TrainStepContext{l, step}, cache);
      }
    return all_parameters(model);
  };

  // The same operations in the same order: equal but for the order of the flow's row sums.
  const double tolerance = std::is_same<Scalar, float>::value ? 1e-5 : 1e-12;
  const std::vector<Scalar> trained = all_parameters(fitted);
  for (Scalar v : trained) REQUIRE(std::isfinite(v));
  CHECK(largest_difference(trained, by_hand(c.feature_noise)) < tolerance);
  // Not the steps without noise, nor with another sigma.
  const std::vector<Scalar> clean = by_hand(0.0);
  CHECK(largest_difference(trained, clean) > 100 * tolerance);
  CHECK(largest_difference(trained, by_hand(0.5)) > 100 * tolerance);
  // And feature_noise = 0, the paper's step, is those steps without noise.
  c.feature_noise = 0;
  hgad::HgadModel<Scalar> without(c);
  without.fit(features, labels);
  CHECK(largest_difference(all_parameters(without), clean) < tolerance);
}

}  // namespace feature_noise_test
