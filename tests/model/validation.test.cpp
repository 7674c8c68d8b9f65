// Validation during fit(): held-out images measured before the first pass and after every pass,
// and keep_best ending on the parameters of the best measurement.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include <hgad/model/hgad_model.hpp>

#include "parameters.hpp"
#include "synthetic.hpp"

namespace validation_test {

using hgad::Index;
using hgad_test::all_parameters;
using hgad_test::as_scalar;

TEMPLATE_TEST_CASE(
    "fit measures the held-out images at the start and after every pass, and keep_best ends on the "
    "best measurement's parameters",
    "[model]", float, double) {
  const hgad_test::Synthetic train_set = hgad_test::make_synthetic(4, 0, 11);
  const hgad_test::Synthetic held_set = hgad_test::make_synthetic(2, 0, 12);
  const auto train = as_scalar<TestType>(train_set.features);
  const auto held = as_scalar<TestType>(held_set.features);
  hgad::ModelConfig c = hgad_test::synthetic_config();
  c.init = hgad::ModelInit::whiten;  // the start is already a good model of the classes
  c.meta_epochs = 6;
  c.lr = 5e-2;  // steps large enough to leave the start's held-out likelihood behind

  for (const bool keep_best : {false, true}) {
    INFO("keep_best " << keep_best);
    hgad::HgadModel<TestType> model(c);
    model.initialise_from_data(train, train_set.classes);
    std::vector<std::vector<TestType>> values = {all_parameters(model)};
    std::vector<hgad::HeldOut> seen = {model.held_out(held, held_set.classes)};
    hgad::FitOptions<TestType> options;
    options.validation_features = &held;
    options.validation_labels = &held_set.classes;
    options.keep_best = keep_best;
    options.on_epoch = [&](const hgad::HgadModel<TestType>& m, Index) {
      values.push_back(all_parameters(m));
      seen.push_back(m.held_out(held, held_set.classes));
    };
    const auto report = model.fit(train, train_set.classes, options);

    REQUIRE(report.validation.size() == 7);
    Index best = 0;
    for (std::size_t i = 0; i < report.validation.size(); ++i) {
      CHECK(report.validation[i].mean_log_likelihood == seen[i].mean_log_likelihood);
      CHECK(report.validation[i].class_accuracy == seen[i].class_accuracy);
      CHECK(report.validation[i].log_likelihood.size() == 2);
      CHECK(std::isfinite(report.validation[i].mean_log_likelihood));
      if (report.validation[i].mean_log_likelihood >
          report.validation[std::size_t(best)].mean_log_likelihood)
        best = Index(i);
    }
    // The large steps lose held-out likelihood, so the best measurement is not the last one and
    // keep_best has something to restore.
    REQUIRE(best < 6);
    if (keep_best) {
      CHECK(report.best == best);
      CHECK(all_parameters(model) == values[std::size_t(best)]);
      CHECK(model.epochs_trained() == best);
      CHECK(model.held_out(held, held_set.classes).mean_log_likelihood ==
            report.validation[std::size_t(best)].mean_log_likelihood);
    } else {
      CHECK(report.best == -1);
      CHECK(all_parameters(model) == values.back());
      CHECK(model.epochs_trained() == 6);
    }
  }
}

TEST_CASE("fit refuses validation images without labels, labels of another count, and keep_best "
          "without validation",
          "[model]") {
  const hgad_test::Synthetic train_set = hgad_test::make_synthetic(2, 0, 13);
  hgad::ModelConfig c = hgad_test::synthetic_config();
  c.meta_epochs = 1;
  hgad::HgadModel<float> model(c);
  hgad::FitOptions<float> options;
  options.keep_best = true;
  CHECK_THROWS_WITH(model.fit(train_set.features, train_set.classes, options),
                    Catch::Contains("keep_best needs validation images"));
  options.validation_features = &train_set.features;
  CHECK_THROWS_WITH(model.fit(train_set.features, train_set.classes, options),
                    Catch::Contains("both the features and the labels"));
  const std::vector<std::int64_t> two = {0, 1};
  options.validation_labels = &two;
  CHECK_THROWS_WITH(model.fit(train_set.features, train_set.classes, options),
                    Catch::Contains("2 validation labels for 6 validation images"));
  CHECK(model.epochs_trained() == 0);
}

}  // namespace validation_test
