// A share of the positions per training step (ModelConfig::position_fraction, docs/algorithm.md
// §4.1): the positions a step draws, and a fit() with a share (one for every level, or one per
// level) against the same steps taken by hand through the public pieces (the whitening's
// forward_rows, the positional encoding, train_step).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <type_traits>
#include <vector>

#include <hgad/flow/positional_encoding.hpp>
#include <hgad/model/hgad_model.hpp>
#include <hgad/model/train_step.hpp>

#include "model/parameters.hpp"
#include "model/synthetic.hpp"

namespace position_fraction_test {

namespace {

using hgad::Index;
using hgad_test::all_parameters;
using hgad_test::largest_difference;

}  // namespace

TEST_CASE(
    "training_positions draws round(f n) distinct positions in order, the same for a "
    "(seed, step, level), each position about as often as f",
    "[model]") {
  const Index n = 64;
  for (double f : {0.01, 0.25, 0.5, 0.7, 1.0}) {
    INFO("f = " << f);
    const auto at = hgad::training_positions(3, 5, 1, n, f);
    CHECK(Index(at.size()) == std::max<Index>(1, Index(std::lround(f * double(n)))));
    CHECK(std::is_sorted(at.begin(), at.end()));
    CHECK(std::set<Index>(at.begin(), at.end()).size() == at.size());
    CHECK(at.front() >= 0);
    CHECK(at.back() < n);
    CHECK(at == hgad::training_positions(3, 5, 1, n, f));
  }
  const auto all = hgad::training_positions(3, 5, 1, n, 1.0);
  for (Index p = 0; p < n; ++p) CHECK(all[static_cast<std::size_t>(p)] == p);
  // Another step, level or seed draws another subset (for these values; a coincidence of the
  // 16-of-64 subsets would be a broken stream).
  const auto base = hgad::training_positions(3, 5, 1, n, 0.25);
  CHECK(base != hgad::training_positions(3, 6, 1, n, 0.25));
  CHECK(base != hgad::training_positions(3, 5, 0, n, 0.25));
  CHECK(base != hgad::training_positions(4, 5, 1, n, 0.25));
  // Over 4,000 steps each position is drawn with probability 1/4: counts near 1,000 (sd ~27).
  std::vector<int> count(static_cast<std::size_t>(n), 0);
  for (std::int64_t step = 0; step < 4000; ++step)
    for (Index p : hgad::training_positions(11, step, 2, n, 0.25))
      ++count[static_cast<std::size_t>(p)];
  for (int c : count) CHECK(std::abs(c - 1000) < 150);
  CHECK_THROWS_AS(hgad::training_positions(0, 0, 0, 0, 0.5), hgad::Error);
  CHECK_THROWS_AS(hgad::training_positions(0, 0, 0, 8, 0.0), hgad::Error);
  CHECK_THROWS_AS(hgad::training_positions(0, 0, 0, 8, 1.5), hgad::Error);
}

TEMPLATE_TEST_CASE(
    "fit with position_fraction takes each step on the drawn positions of every "
    "image of its batch",
    "[model]", float, double) {
  using Scalar = TestType;
  const hgad_test::Synthetic data = hgad_test::make_synthetic(4, 0, 21);
  const std::vector<hgad::Tensor<Scalar>> features = hgad_test::as_scalar<Scalar>(data.features);
  const Index N = Index(data.classes.size());

  hgad::ModelConfig c = hgad_test::synthetic_config();
  c.init = hgad::ModelInit::whiten;
  c.whiten_mean = hgad::WhitenMean::position;  // the whitening reads each row's position
  c.position_fraction = {0.4};                 // 6 of the 16 level-0 positions, 2 of the 4 level-1
  c.batch_size = N;                            // one step per pass over every image
  c.meta_epochs = 4;
  c.stage1_meta_epochs = 2;  // two steps in each stage
  c.warmup_meta_epochs = 0;
  c.lr_decay_rate = 1;  // a constant learning rate, c.lr
  c.lr = 1e-2;

  hgad::HgadModel<Scalar> fitted(c);
  fitted.fit(features, data.classes);

  // The same steps by hand: every image at the step's positions, image-major, whitened by row
  // index, with the encodings of those positions and the images' labels; fraction[l] of level l's.
  const auto by_hand = [&](const std::vector<double>& fraction) {
    hgad::HgadModel<Scalar> model(c);
    model.initialise_from_data(features, data.classes);
    const hgad::LevelTraining training = hgad::level_training(c);
    std::vector<hgad::Adam<Scalar>> adams;
    for (Index l = 0; l < model.n_levels(); ++l)
      adams.push_back(hgad::make_level_adam(model.flow(l), &model.prior(l), training.adam));
    for (std::int64_t step = 0; step < c.meta_epochs; ++step) {
      const int stage = hgad::training_stage(int(step), training.loss);
      for (Index l = 0; l < model.n_levels(); ++l) {
        const hgad::LevelSpec& s = c.levels[static_cast<std::size_t>(l)];
        const Index hw = s.height * s.width, D = s.dim;
        const auto at =
            hgad::training_positions(c.seed, step, l, hw, fraction[static_cast<std::size_t>(l)]);
        const Index n = Index(at.size());
        hgad::Tensor<Scalar> x({N * n, D});
        std::vector<Index> rows;
        std::vector<std::int64_t> labels;
        const Scalar* level = features[static_cast<std::size_t>(l)].data();
        for (Index b = 0; b < N; ++b)
          for (Index i = 0; i < n; ++i) {
            const Index p = at[static_cast<std::size_t>(i)];
            for (Index d = 0; d < D; ++d)
              x.data()[(b * n + i) * D + d] = level[(b * hw + p) * D + d];
            rows.push_back(b * hw + p);
            labels.push_back(data.classes[static_cast<std::size_t>(b)]);
          }
        const hgad::Tensor<Scalar> encoding =
            hgad::positional_encoding_2d<Scalar>(c.pos_dim, s.height, s.width);
        hgad::Tensor<Scalar> cond({n, c.pos_dim});
        for (Index i = 0; i < n; ++i)
          for (Index j = 0; j < c.pos_dim; ++j)
            cond.data()[i * c.pos_dim + j] =
                encoding.data()[at[static_cast<std::size_t>(i)] * c.pos_dim + j];
        hgad::LossOptions loss = training.loss;
        loss.log_jac_det_offset = model.whitening(l).log_jac_det();
        adams[static_cast<std::size_t>(l)].set_lr(c.lr);
        hgad::SequenceFlowCache<Scalar> cache;
        hgad::train_step(model.flow(l), &model.prior(l), adams[static_cast<std::size_t>(l)],
                         model.whitening(l).forward_rows(x, rows), cond, labels, stage, loss,
                         hgad::TrainStepContext{l, step}, cache);
      }
    }
    return all_parameters(model);
  };

  // The batch holds the images in the shuffle's order, by hand in theirs: the row sums differ in
  // their rounding only (measured, relative: 4.5e-7 in float, 1.4e-15 in double; the other shares
  // differ by 0.05).
  const double tolerance = std::is_same<Scalar, float>::value ? 1e-5 : 1e-12;
  const std::vector<Scalar> trained = all_parameters(fitted);
  for (Scalar v : trained) REQUIRE(std::isfinite(v));
  const std::vector<Scalar> shared_share = by_hand({0.4, 0.4});
  CHECK(largest_difference(trained, shared_share) < tolerance);
  // Not the steps on every position, nor on another share.
  const std::vector<Scalar> every_position = by_hand({1.0, 1.0});
  CHECK(largest_difference(trained, every_position) > 100 * tolerance);
  CHECK(largest_difference(trained, by_hand({0.6, 0.6})) > 100 * tolerance);
  // And position_fraction = 1, the paper's step on whole images, is those steps on every position.
  c.position_fraction = {1.0};
  hgad::HgadModel<Scalar> whole(c);
  whole.fit(features, data.classes);
  CHECK(largest_difference(all_parameters(whole), every_position) < tolerance);
  // One share per level: level 0 on 0.4 of its positions, level 1 on every position.
  c.position_fraction = {0.4, 1.0};
  hgad::HgadModel<Scalar> per_level(c);
  per_level.fit(features, data.classes);
  const std::vector<Scalar> per_level_by_hand = by_hand({0.4, 1.0});
  CHECK(largest_difference(all_parameters(per_level), per_level_by_hand) < tolerance);
  CHECK(largest_difference(per_level_by_hand, shared_share) > 100 * tolerance);
  CHECK(largest_difference(per_level_by_hand, every_position) > 100 * tolerance);
}

}  // namespace position_fraction_test
