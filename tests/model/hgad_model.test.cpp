#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <hgad/metrics/ranking.hpp>
#include <hgad/model/hgad_model.hpp>
#include <numeric>
#include <thread>
#include <vector>

#include "detail/thread_count.hpp"
#include "io/temp_dir.hpp"
#include "model/synthetic.hpp"

namespace hgad_model_test {

namespace {

using hgad::Index;
using hgad_test::make_synthetic;
using hgad_test::Synthetic;
using hgad_test::synthetic_config;

/// The subset of a set with the given label.
template <class Scalar>
std::vector<hgad::Tensor<Scalar>> select(const std::vector<hgad::Tensor<Scalar>>& features,
                                         const std::vector<Index>& rows) {
  std::vector<hgad::Tensor<Scalar>> out;
  for (const auto& f : features) {
    const Index per = f.numel() / f.dim(0);
    hgad::Tensor<Scalar> t({static_cast<Index>(rows.size()), f.dim(1), f.dim(2), f.dim(3)});
    for (std::size_t i = 0; i < rows.size(); ++i)
      std::copy(f.data() + rows[i] * per, f.data() + (rows[i] + 1) * per,
                t.data() + static_cast<Index>(i) * per);
    out.push_back(t);
  }
  return out;
}

/// The indices of the images of class k.
std::vector<Index> rows_of_class(const std::vector<std::int64_t>& classes, std::int64_t k) {
  std::vector<Index> rows;
  for (Index i = 0; i < static_cast<Index>(classes.size()); ++i)
    if (classes[static_cast<std::size_t>(i)] == k) rows.push_back(i);
  return rows;
}

template <class Scalar>
std::vector<hgad::Tensor<Scalar>> cast(const std::vector<hgad::Tensor<float>>& in) {
  std::vector<hgad::Tensor<Scalar>> out;
  for (const auto& f : in) {
    hgad::Tensor<Scalar> t(f.shape());
    for (Index i = 0; i < f.numel(); ++i) t.data()[i] = Scalar(f.data()[i]);
    out.push_back(t);
  }
  return out;
}

struct Trained {
  hgad::ModelConfig config;
  Synthetic train, test;
  std::unique_ptr<hgad::HgadModel<float>> model;
};

/// One trained and calibrated model shared by the scoring tests (training once keeps them fast).
const Trained& trained(hgad::Objective objective = hgad::Objective::hgad) {
  static Trained cache[2];
  Trained& t = cache[objective == hgad::Objective::hgad ? 0 : 1];
  if (!t.model) {
    t.config = synthetic_config(objective);
    t.train = make_synthetic(12, 0, 1);
    t.test = make_synthetic(6, 6, 2);
    t.model = std::make_unique<hgad::HgadModel<float>>(t.config);
    t.model->fit(t.train.features, t.train.classes);
    t.model->calibrate(t.train.features, t.train.classes);
  }
  return t;
}

double auroc_of(const std::vector<hgad::ScoredImage<float>>& scored,
                const std::vector<int>& labels) {
  std::vector<double> scores;
  for (const auto& s : scored) {
    REQUIRE(std::isfinite(s.score));
    scores.push_back(s.score);
  }
  return hgad::roc_auc_score(labels, scores);
}

/// The mean over classes of the image AUROC within each class (the per-class protocol).
double mean_class_auroc(const std::vector<hgad::ScoredImage<float>>& scored, const Synthetic& set) {
  double sum = 0;
  for (std::int64_t k = 0; k < 3; ++k) {
    std::vector<double> scores;
    std::vector<int> labels;
    for (std::size_t i = 0; i < scored.size(); ++i)
      if (set.classes[i] == k) {
        REQUIRE(std::isfinite(scored[i].score));
        scores.push_back(scored[i].score);
        labels.push_back(set.labels[i]);
      }
    sum += hgad::roc_auc_score(labels, scores);
  }
  return sum / 3;
}

bool same_tensor(const hgad::Tensor<float>& a, const hgad::Tensor<float>& b) {
  if (a.shape() != b.shape()) return false;
  for (Index i = 0; i < a.numel(); ++i)
    if (!(a.data()[i] == b.data()[i])) return false;
  return true;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// Independent reference of docs/algorithm.md §5.4, written with plain loops in double: torch's
// bilinear align_corners upsampling, scipy's gaussian_filter (reflect, truncate 4).
std::vector<double> naive_upsample(const std::vector<double>& x, Index h, Index w, Index S) {
  std::vector<double> out(static_cast<std::size_t>(S * S));
  for (Index i = 0; i < S; ++i)
    for (Index j = 0; j < S; ++j) {
      const double sy = S > 1 ? double(i) * double(h - 1) / double(S - 1) : 0.0;
      const double sx = S > 1 ? double(j) * double(w - 1) / double(S - 1) : 0.0;
      const Index y0 = std::min<Index>(Index(sy), h - 1), x0 = std::min<Index>(Index(sx), w - 1);
      const Index y1 = std::min<Index>(y0 + 1, h - 1), x1 = std::min<Index>(x0 + 1, w - 1);
      const double ly = sy - double(y0), lx = sx - double(x0);
      auto at = [&](Index y, Index xx) { return x[static_cast<std::size_t>(y * w + xx)]; };
      out[static_cast<std::size_t>(i * S + j)] =
          (1 - ly) * ((1 - lx) * at(y0, x0) + lx * at(y0, x1)) +
          ly * ((1 - lx) * at(y1, x0) + lx * at(y1, x1));
    }
  return out;
}

std::vector<double> naive_blur(const std::vector<double>& x, Index S, double sigma) {
  const Index r = Index(4.0 * sigma + 0.5);
  std::vector<double> k(static_cast<std::size_t>(2 * r + 1));
  double total = 0;
  for (Index t = -r; t <= r; ++t)
    total += k[static_cast<std::size_t>(t + r)] = std::exp(-0.5 * t * t / (sigma * sigma));
  for (double& v : k) v /= total;
  auto reflect = [S](Index i) {
    while (i < 0 || i >= S) i = i < 0 ? -i - 1 : 2 * S - i - 1;
    return i;
  };
  std::vector<double> tmp(x.size()), out(x.size());
  for (Index i = 0; i < S; ++i)
    for (Index j = 0; j < S; ++j) {
      double a = 0;
      for (Index t = -r; t <= r; ++t)
        a += k[static_cast<std::size_t>(t + r)] *
             x[static_cast<std::size_t>(reflect(i + t) * S + j)];
      tmp[static_cast<std::size_t>(i * S + j)] = a;
    }
  for (Index i = 0; i < S; ++i)
    for (Index j = 0; j < S; ++j) {
      double a = 0;
      for (Index t = -r; t <= r; ++t)
        a += k[static_cast<std::size_t>(t + r)] *
             tmp[static_cast<std::size_t>(i * S + reflect(j + t))];
      out[static_cast<std::size_t>(i * S + j)] = a;
    }
  return out;
}

/// The paper's transductive map of every image of a set for one map type (raw[i][l] is (h, w)).
std::vector<std::vector<double>> naive_transductive(
    const std::vector<std::vector<hgad::Tensor<float>>>& raw, Index S, double sigma = 4.0,
    const std::vector<double>& weights = {}) {
  const std::size_t N = raw.size(), L = raw[0].size();
  std::vector<std::vector<double>> sum(N,
                                       std::vector<double>(static_cast<std::size_t>(S * S), 0.0));
  for (std::size_t l = 0; l < L; ++l) {
    double level_max = -1e300;
    for (std::size_t i = 0; i < N; ++i)
      for (Index p = 0; p < raw[i][l].numel(); ++p)
        level_max = std::max(level_max, double(raw[i][l].data()[p]));
    for (std::size_t i = 0; i < N; ++i) {
      const Index h = raw[i][l].dim(0), w = raw[i][l].dim(1);
      std::vector<double> q(static_cast<std::size_t>(h * w));
      for (Index p = 0; p < h * w; ++p)
        q[static_cast<std::size_t>(p)] = std::exp(double(raw[i][l].data()[p]) - level_max);
      const auto up = naive_upsample(q, h, w, S);
      const double weight = weights.empty() ? 1.0 : weights[l];
      for (std::size_t p = 0; p < up.size(); ++p) sum[i][p] += weight * up[p];
    }
  }
  double sum_max = -1e300;
  for (const auto& s : sum) sum_max = std::max(sum_max, *std::max_element(s.begin(), s.end()));
  std::vector<std::vector<double>> out;
  for (auto& s : sum) {
    for (double& v : s) v = sum_max - v;
    out.push_back(sigma > 0 ? naive_blur(s, S, sigma) : s);
  }
  return out;
}

Index block_parameters(Index D, Index P) {
  const Index n1 = D - D / 2, n2 = D / 2, H = 2 * (n1 + P);
  return (n1 + P) * H + H + H * 2 * n2 + 2 * n2 + 2 * D;
}

}  // namespace

TEST_CASE("HgadModel constructed from a config is valid and untrained", "[model]") {
  const hgad::ModelConfig c = synthetic_config();
  const hgad::HgadModel<float> model(c);
  CHECK(model.n_levels() == 2);
  CHECK(model.n_classes() == 3);
  CHECK(model.epochs_trained() == 0);
  CHECK_FALSE(model.is_calibrated());
  const Index K = 3, M = c.n_centers;
  Index expected = 0;
  for (const auto& s : c.levels)
    expected += c.n_blocks * block_parameters(s.dim, c.pos_dim) + K * s.dim + K * (M - 1) * s.dim +
                K * M + K;
  CHECK(model.n_parameters() == expected);
  const Synthetic data = make_synthetic(1, 0, 3);
  const auto raw = model.raw_scores(hgad::HgadModel<float>::image_view(data.features, 0), 0);
  REQUIRE(raw.log_likelihood.size() == 2);
  CHECK(raw.log_likelihood[0].shape() == hgad::Shape{4, 4});
  CHECK(raw.neg_entropy[1].shape() == hgad::Shape{2, 2});
  CHECK(error_of([&] {
          model.score(hgad::HgadModel<float>::image_view(data.features, 0), 0,
                      hgad::ScoreMode::calibrated);
        }).find("not calibrated") != std::string::npos);

  hgad::ModelConfig bad = c;
  bad.n_blocks = 0;
  CHECK_THROWS_AS(hgad::HgadModel<float>(bad), hgad::Error);
}

TEST_CASE("HgadModel fit reports progress and follows the two-stage schedule", "[model]") {
  hgad::ModelConfig c = synthetic_config();
  c.meta_epochs = 3;
  c.sub_epochs = 2;
  c.stage1_meta_epochs = 1;
  c.warmup_meta_epochs = 1;
  hgad::HgadModel<float> model(c);
  const Synthetic data = make_synthetic(4, 0, 4);  // 12 images, batches of 6: 2 steps per pass
  std::vector<hgad::FitProgress<float>> seen;
  std::vector<Index> epochs;
  hgad::FitOptions<float> options;
  options.on_step = [&](const hgad::FitProgress<float>& p) { seen.push_back(p); };
  options.on_epoch = [&](const hgad::HgadModel<float>& m, Index epoch) {
    CHECK(m.epochs_trained() == epoch + 1);
    epochs.push_back(epoch);
  };
  const auto report = model.fit(data.features, data.classes, options);
  REQUIRE(seen.size() == 12);
  CHECK(report.steps == 12);
  CHECK(epochs == std::vector<Index>{0, 1, 2, 3, 4, 5});
  CHECK(model.epochs_trained() == 6);
  for (std::size_t i = 0; i < seen.size(); ++i) {
    CHECK(seen[i].step == Index(i + 1));
    CHECK(seen[i].n_steps == 12);
    CHECK(seen[i].stage == (i < 4 ? 1 : 2));
    REQUIRE(seen[i].level_terms.size() == 2);
    for (const auto& t : seen[i].level_terms) CHECK(std::isfinite(double(t.total)));
    CHECK(seen[i].level_terms[0].l_g_intra == (i < 4 ? 0.0f : seen[i].level_terms[0].l_g_intra));
  }
  // Warm-up over meta-epoch 0 (4 iterations): lr/10 + p (cosine(1) - lr/10), p = it / 4.
  hgad::LrSchedule schedule;
  schedule.lr = c.lr;
  schedule.meta_epochs = 3;
  schedule.warm_up_meta_epochs = 1;
  const double target = schedule.cosine_lr(1);
  for (int it = 0; it < 4; ++it)
    CHECK(seen[static_cast<std::size_t>(it)].lr ==
          Approx(c.lr / 10 + it / 4.0 * (target - c.lr / 10)).epsilon(1e-12));
  CHECK(seen[4].lr == Approx(target).epsilon(1e-12));
  CHECK(seen[11].lr == Approx(schedule.cosine_lr(2)).epsilon(1e-12));
}

TEST_CASE("HgadModel training is deterministic for a seed", "[model]") {
  const Synthetic data = make_synthetic(4, 0, 5);
  auto train = [&](std::uint64_t seed) {
    hgad::ModelConfig c = synthetic_config();
    c.meta_epochs = 3;
    c.seed = seed;
    hgad::HgadModel<float> model(c);
    model.fit(data.features, data.classes);
    std::vector<float> values;
    for (Index l = 0; l < 2; ++l) {
      for (const auto& p : model.flow(l).parameters()) {
        const auto v = p.value().to_vector();
        values.insert(values.end(), v.begin(), v.end());
      }
      for (const auto& p : model.prior(l).parameters()) {
        const auto v = p.value().to_vector();
        values.insert(values.end(), v.begin(), v.end());
      }
    }
    return values;
  };
  const auto a = train(11), b = train(11), c = train(12);
  REQUIRE(a.size() == b.size());
  for (float v : a) REQUIRE(std::isfinite(v));
  CHECK(a == b);
  CHECK(a != c);
}

TEST_CASE("HgadModel scores anomalies in the three modes", "[model]") {
  const Trained& t = trained();
  const auto& model = *t.model;
  REQUIRE(model.is_calibrated());
  std::vector<std::int64_t> classes = t.test.classes;

  SECTION("calibrated: each image with its class and frozen constants") {
    const auto scored = model.score_set(t.test.features, classes, hgad::ScoreMode::calibrated);
    CHECK(mean_class_auroc(scored, t.test) >= 0.85);
    for (std::size_t i = 0; i < scored.size(); ++i) CHECK(scored[i].scored_class == classes[i]);
    for (const auto& s : scored) {
      CHECK(s.map.shape() == hgad::Shape{8, 8});
      for (Index p = 0; p < s.map.numel(); ++p) REQUIRE(s.map.data()[p] >= 0.0f);
    }
  }
  SECTION("label-free: the class is predicted from the inter-class posterior") {
    const auto scored = model.score_set(t.test.features, {}, hgad::ScoreMode::label_free);
    Index correct = 0;
    for (std::size_t i = 0; i < scored.size(); ++i) {
      CHECK(scored[i].scored_class == scored[i].predicted_class);
      correct += scored[i].predicted_class == classes[i] ? 1 : 0;
    }
    CHECK(double(correct) / double(scored.size()) >= 0.9);
    CHECK(mean_class_auroc(scored, t.test) >= 0.85);
  }
  SECTION(
      "transductive: the paper's normalisation over a class's test set, as written in "
      "docs/algorithm.md") {
    for (std::int64_t k = 0; k < 3; ++k) {
      const std::vector<Index> rows = rows_of_class(classes, k);
      const auto set = select(t.test.features, rows);
      const auto scored = model.score_set(set, std::vector<std::int64_t>(rows.size(), k),
                                          hgad::ScoreMode::transductive);
      std::vector<std::vector<hgad::Tensor<float>>> logp, negh;
      std::vector<int> labels;
      for (std::size_t i = 0; i < rows.size(); ++i) {
        const auto raw = model.raw_scores(hgad::HgadModel<float>::image_view(set, Index(i)), k);
        logp.push_back(raw.log_likelihood);
        negh.push_back(raw.neg_entropy);
        labels.push_back(t.test.labels[static_cast<std::size_t>(rows[i])]);
      }
      const auto a_logp = naive_transductive(logp, 8), a_ent = naive_transductive(negh, 8);
      // The criterion ablation: either map alone instead of their product.
      const auto likelihood_only =
          model.score_set(set, std::vector<std::int64_t>(rows.size(), k), hgad::ScoreMode::transductive, {},
                          hgad::ScoreCriterion::likelihood);
      const auto entropy_only =
          model.score_set(set, std::vector<std::int64_t>(rows.size(), k), hgad::ScoreMode::transductive, {},
                          hgad::ScoreCriterion::entropy);
      for (std::size_t i = 0; i < rows.size(); ++i) {
        for (Index p = 0; p < 64; ++p) {
          const auto q = static_cast<std::size_t>(p);
          REQUIRE(double(likelihood_only[i].map.data()[p]) == Approx(a_logp[i][q]).margin(1e-6).epsilon(1e-4));
          REQUIRE(double(entropy_only[i].map.data()[p]) == Approx(a_ent[i][q]).margin(1e-6).epsilon(1e-4));
        }
      }
      for (std::size_t i = 0; i < rows.size(); ++i) {
        double best = 0;
        for (Index p = 0; p < 64; ++p) {
          const double expected =
              a_logp[i][static_cast<std::size_t>(p)] * a_ent[i][static_cast<std::size_t>(p)];
          REQUIRE(std::isfinite(double(scored[i].map.data()[p])));
          REQUIRE(double(scored[i].map.data()[p]) == Approx(expected).margin(1e-6).epsilon(1e-4));
          best = std::max(best, expected);
        }
        CHECK(scored[i].score == Approx(best).margin(1e-6).epsilon(1e-4));
      }
      CHECK(auroc_of(scored, labels) >= 0.9);
    }
  }
}

TEST_CASE("map_sigma sets the blur of the maps and nothing else", "[model]") {
  // The paper blurs with σ = 4 (trained() keeps it); here the same training with σ = 1.5 and with
  // no blur, each map against docs/algorithm.md §5.4 written out with that σ.
  const Trained& paper = trained();
  for (const double sigma : {1.5, 0.0}) {
    CAPTURE(sigma);
    hgad::ModelConfig config = paper.config;
    config.map_sigma = sigma;
    hgad::HgadModel<float> model(config);
    model.fit(paper.train.features, paper.train.classes);
    const std::int64_t k = 1;
    const std::vector<Index> rows = rows_of_class(paper.test.classes, k);
    const auto set = select(paper.test.features, rows);
    std::vector<std::vector<hgad::Tensor<float>>> logp;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const auto raw = model.raw_scores(hgad::HgadModel<float>::image_view(set, Index(i)), k);
      const auto raw_paper =
          paper.model->raw_scores(hgad::HgadModel<float>::image_view(set, Index(i)), k);
      // The training does not see σ (the same to 1e-6, the determinism of two threads).
      for (std::size_t l = 0; l < raw.log_likelihood.size(); ++l)
        for (Index p = 0; p < raw.log_likelihood[l].numel(); ++p)
          REQUIRE(double(raw.log_likelihood[l].data()[p]) ==
                  Approx(double(raw_paper.log_likelihood[l].data()[p])).margin(1e-5));
      logp.push_back(raw.log_likelihood);
    }
    const auto expected = naive_transductive(logp, 8, sigma);
    const auto scored =
        model.score_set(set, std::vector<std::int64_t>(rows.size(), k),
                        hgad::ScoreMode::transductive, {}, hgad::ScoreCriterion::likelihood);
    for (std::size_t i = 0; i < rows.size(); ++i)
      for (Index p = 0; p < 64; ++p)
        REQUIRE(double(scored[i].map.data()[p]) ==
                Approx(expected[i][static_cast<std::size_t>(p)]).margin(1e-6).epsilon(1e-4));
    // And the paper's σ gives another map: the setting is not ignored.
    const auto paper_scored = paper.model->score_set(
        set, std::vector<std::int64_t>(rows.size(), k), hgad::ScoreMode::transductive, {},
        hgad::ScoreCriterion::likelihood);
    CHECK_FALSE(same_tensor(scored[0].map, paper_scored[0].map));
  }
}

TEST_CASE("change_scoring gives a trained model new scoring settings and nothing else",
          "[model]") {
  // The paper's settings (trained()) changed to level weights 2 and 0.5: the model's maps are
  // docs/algorithm.md §5.4 written out with the weights, and calibrated again it scores as a model
  // trained with the weights from the start (the training does not see them).
  const Trained& paper = trained();
  hgad::HgadModel<float> model = *paper.model;
  hgad::ModelConfig config = paper.config;
  config.level_weights = {2.0, 0.5};
  config.image_score_fraction = 0.25;
  model.change_scoring(config);
  CHECK(model.config() == config);
  CHECK_FALSE(model.is_calibrated());  // the constants depend on the settings
  const std::int64_t k = 2;
  const std::vector<Index> rows = rows_of_class(paper.test.classes, k);
  const auto set = select(paper.test.features, rows);
  std::vector<std::vector<hgad::Tensor<float>>> logp;
  for (std::size_t i = 0; i < rows.size(); ++i)
    logp.push_back(model.raw_scores(hgad::HgadModel<float>::image_view(set, Index(i)), k).log_likelihood);
  const auto expected = naive_transductive(logp, 8, 4.0, {2.0, 0.5});
  const auto scored = model.score_set(set, std::vector<std::int64_t>(rows.size(), k),
                                      hgad::ScoreMode::transductive, {},
                                      hgad::ScoreCriterion::likelihood);
  for (std::size_t i = 0; i < rows.size(); ++i)
    for (Index p = 0; p < 64; ++p)
      REQUIRE(double(scored[i].map.data()[p]) ==
              Approx(expected[i][static_cast<std::size_t>(p)]).margin(1e-6).epsilon(1e-4));

  model.calibrate(paper.train.features, paper.train.classes);
  hgad::HgadModel<float> trained_so(config);
  trained_so.fit(paper.train.features, paper.train.classes);
  trained_so.calibrate(paper.train.features, paper.train.classes);
  for (const auto mode : {hgad::ScoreMode::calibrated, hgad::ScoreMode::label_free}) {
    const auto a = model.score_set(paper.test.features, paper.test.classes, mode);
    const auto b = trained_so.score_set(paper.test.features, paper.test.classes, mode);
    for (std::size_t i = 0; i < a.size(); ++i)
      REQUIRE(a[i].score == Approx(b[i].score).margin(1e-5).epsilon(1e-4));
  }
  for (Index c = 0; c < 3; ++c)
    CHECK(model.calibration(c).threshold ==
          Approx(trained_so.calibration(c).threshold).margin(1e-5).epsilon(1e-4));

  // A setting that enters the training cannot change, and the model is left as it was.
  hgad::ModelConfig other = config;
  other.lr *= 2;
  CHECK_THAT(error_of([&] { model.change_scoring(other); }),
             Catch::Contains("'lr' enters the start or the training"));
  other = config;
  other.level_weights = {1.0, 2.0, 3.0};
  CHECK_THAT(error_of([&] { model.change_scoring(other); }),
             Catch::Contains("as many weights as levels (2)"));
  CHECK(model.config() == config);
  CHECK(model.is_calibrated());
}

TEST_CASE("image_score_fraction scores an image by the mean of its map's highest pixels",
          "[model]") {
  // The same training as trained() (the setting does not enter it), the image score the mean of
  // the highest quarter of the 8 x 8 map: 16 pixels, summed here after a full sort.
  const Trained& paper = trained();
  hgad::ModelConfig config = paper.config;
  config.image_score_fraction = 0.25;
  hgad::HgadModel<float> model(config);
  model.fit(paper.train.features, paper.train.classes);
  model.calibrate(paper.train.features, paper.train.classes);
  auto top_quarter_mean = [](const hgad::Tensor<float>& map) {
    std::vector<double> v(map.data(), map.data() + map.numel());
    std::sort(v.begin(), v.end(), std::greater<double>());
    return std::accumulate(v.begin(), v.begin() + 16, 0.0) / 16.0;
  };
  for (const auto mode : {hgad::ScoreMode::calibrated, hgad::ScoreMode::label_free}) {
    const auto scored = model.score_set(paper.test.features, paper.test.classes, mode);
    const auto scored_paper = paper.model->score_set(paper.test.features, paper.test.classes, mode);
    double below_max = 0;
    for (std::size_t i = 0; i < scored.size(); ++i) {
      // The maps are the paper model's (to the two threads' 1e-6); only the score differs.
      for (Index p = 0; p < 64; ++p)
        REQUIRE(double(scored[i].map.data()[p]) ==
                Approx(double(scored_paper[i].map.data()[p])).margin(1e-5).epsilon(1e-4));
      REQUIRE(scored[i].score == Approx(top_quarter_mean(scored[i].map)).epsilon(1e-9));
      below_max += scored_paper[i].score - scored[i].score;
    }
    CHECK(below_max > 0);
    CHECK(mean_class_auroc(scored, paper.test) >= 0.85);
  }
  // The thresholds are quantiles of the scores the model gives, so a mean below the maximum
  // lowers them.
  for (Index k = 0; k < 3; ++k)
    CHECK(model.calibration(k).threshold < paper.model->calibration(k).threshold);
}

TEST_CASE("pixel_map_sigma blurs the map an image is given after its score is read, and nothing "
          "else",
          "[model]") {
  // The trained paper model with pixel_map_sigma = 1.5, calibrated again: its scores and
  // calibration are the paper model's, its maps the paper model's blurred once more with σ = 1.5
  // (docs/algorithm.md §9.2), in every mode and under every criterion.
  const Trained& paper = trained();
  hgad::HgadModel<float> model =
      hgad::HgadModel<float>::from_checkpoint(paper.model->to_checkpoint(), "m.hgad");
  hgad::ModelConfig config = paper.config;
  config.pixel_map_sigma = 1.5;
  model.change_scoring(config);
  model.calibrate(paper.train.features, paper.train.classes);
  for (Index c = 0; c <= 3; ++c) {
    CHECK(model.calibration(c).threshold ==
          Approx(paper.model->calibration(c).threshold).margin(1e-6).epsilon(1e-5));
    CHECK(model.calibration(c).train_score_max ==
          Approx(paper.model->calibration(c).train_score_max).margin(1e-6).epsilon(1e-5));
  }
  for (const auto mode : {hgad::ScoreMode::calibrated, hgad::ScoreMode::label_free,
                          hgad::ScoreMode::transductive})
    for (const auto criterion : {hgad::ScoreCriterion::product, hgad::ScoreCriterion::likelihood,
                                 hgad::ScoreCriterion::entropy}) {
      CAPTURE(int(mode), int(criterion));
      const auto classes = paper.test.classes;
      const auto scored = model.score_set(paper.test.features, classes, mode, {}, criterion);
      const auto unblurred =
          paper.model->score_set(paper.test.features, classes, mode, {}, criterion);
      double moved = 0;
      for (std::size_t i = 0; i < scored.size(); ++i) {
        REQUIRE(scored[i].score == Approx(unblurred[i].score).margin(1e-6).epsilon(1e-5));
        const hgad::Tensor<float>& a = unblurred[i].map;
        const std::vector<double> expected =
            naive_blur(std::vector<double>(a.data(), a.data() + a.numel()), 8, 1.5);
        for (Index p = 0; p < 64; ++p) {
          REQUIRE(double(scored[i].map.data()[p]) ==
                  Approx(expected[static_cast<std::size_t>(p)]).margin(1e-6).epsilon(1e-4));
          moved = std::max(moved, std::abs(double(scored[i].map.data()[p] - a.data()[p])));
        }
      }
      CHECK(moved > 1e-3);  // the blur is not a no-op on these maps
    }
  // One threshold for σ, as map_sigma's.
  config.pixel_map_sigma = -1;
  CHECK_THAT(error_of([&] { model.change_scoring(config); }), Catch::Contains("pixel_map_sigma"));
}

TEST_CASE("HgadModel calibrated scores are the same alone and inside a batch", "[model]") {
  const Trained& t = trained();
  const auto& model = *t.model;
  const auto batch = model.score_set(t.test.features, t.test.classes, hgad::ScoreMode::calibrated);
  const auto batch_free = model.score_set(t.test.features, {}, hgad::ScoreMode::label_free);
  std::vector<Index> reversed;
  for (Index i = t.test.features[0].dim(0); i-- > 0;) reversed.push_back(i);
  const auto shuffled =
      model.score_set(select(t.test.features, reversed),
                      std::vector<std::int64_t>(t.test.classes.rbegin(), t.test.classes.rend()),
                      hgad::ScoreMode::calibrated);
  for (Index i = 0; i < static_cast<Index>(batch.size()); ++i) {
    const auto image = hgad::HgadModel<float>::image_view(t.test.features, i);
    const auto alone = model.score(image, t.test.classes[static_cast<std::size_t>(i)],
                                   hgad::ScoreMode::calibrated);
    CHECK(alone.score == batch[static_cast<std::size_t>(i)].score);
    CHECK(same_tensor(alone.map, batch[static_cast<std::size_t>(i)].map));
    CHECK(same_tensor(alone.map, shuffled[shuffled.size() - 1 - static_cast<std::size_t>(i)].map));
    const auto free = model.score(image, -1, hgad::ScoreMode::label_free);
    CHECK(free.score == batch_free[static_cast<std::size_t>(i)].score);
    CHECK(same_tensor(free.map, batch_free[static_cast<std::size_t>(i)].map));
  }
}

TEST_CASE("HgadModel scoring from four threads at once gives the sequential results", "[model]") {
  const Trained& t = trained();
  const auto& model = *t.model;
  const Index N = t.test.features[0].dim(0);
  std::vector<hgad::ScoredImage<float>> sequential;
  for (Index i = 0; i < N; ++i)
    sequential.push_back(model.score(hgad::HgadModel<float>::image_view(t.test.features, i), -1,
                                     hgad::ScoreMode::label_free));
  std::vector<std::vector<hgad::ScoredImage<float>>> parallel(4);
  std::vector<std::thread> threads;
  for (int k = 0; k < 4; ++k)
    threads.emplace_back([&, k] {
      for (Index i = 0; i < N; ++i)
        parallel[static_cast<std::size_t>(k)].push_back(
            model.score(hgad::HgadModel<float>::image_view(t.test.features, i), -1,
                        hgad::ScoreMode::label_free));
    });
  for (auto& th : threads) th.join();
  for (const auto& run : parallel)
    for (Index i = 0; i < N; ++i) {
      CHECK(run[static_cast<std::size_t>(i)].score ==
            sequential[static_cast<std::size_t>(i)].score);
      CHECK(same_tensor(run[static_cast<std::size_t>(i)].map,
                        sequential[static_cast<std::size_t>(i)].map));
    }
}

TEST_CASE("HgadModel scores follow a change of the flow's parameters made after scoring", "[model]") {
  // The scores keep each level's projected positional encoding, made from the parameters on first
  // use; a change through flow() must drop it, so the next score is the new parameters'.
  const Trained& t = trained();
  // Through a checkpoint: a copy of the model would share the fixture's parameters.
  auto model = hgad::HgadModel<float>::from_checkpoint(t.model->to_checkpoint(), "m.hgad");
  const auto image = hgad::HgadModel<float>::image_view(t.test.features, 0);
  const auto before = model.score(image, 0, hgad::ScoreMode::calibrated);
  for (const auto& [name, p] : model.flow(0).named_parameters()) {
    if (name.find("fc1.bias") == std::string::npos) continue;
    hgad::Tensor<float> value = p.value().clone();
    for (Index i = 0; i < value.numel(); ++i) value.data()[i] += 0.5f;
    model.flow(0).set_parameter(name, value);
  }
  const auto after = model.score(image, 0, hgad::ScoreMode::calibrated);
  const auto fresh = hgad::HgadModel<float>::from_checkpoint(model.to_checkpoint(), "m.hgad");  // no projection kept
  const auto expected = fresh.score(image, 0, hgad::ScoreMode::calibrated);
  CHECK(after.score == expected.score);
  CHECK(same_tensor(after.map, expected.map));
  CHECK(after.score != before.score);
}

TEST_CASE("HgadModel calibration and scoring give the one-thread results with the images shared over "
          "two threads",
          "[model]") {
  // On two threads calibrate, score_set and held_out give each thread whole images
  // (detail::parallel_items); each image's arithmetic is then that of the one-thread loop.
  const Trained& t = trained();
  hgad_test::TempDir dir("model_items");
  auto run = [&](int threads, const std::string& name) {
    const hgad_test::ThreadCount count(threads);
    hgad::HgadModel<float> model = *t.model;
    model.calibrate(t.train.features, t.train.classes);
    model.save(dir.file(name));
    std::vector<hgad::ScoredImage<float>> scored =
        model.score_set(t.test.features, t.test.classes, hgad::ScoreMode::calibrated);
    for (auto& s : model.score_set(t.test.features, {}, hgad::ScoreMode::label_free))
      scored.push_back(std::move(s));
    for (auto& s : model.score_set(t.test.features, t.test.classes, hgad::ScoreMode::transductive))
      scored.push_back(std::move(s));
    return std::make_pair(scored, model.held_out(t.test.features, t.test.classes));
  };
  const auto [one, held_one] = run(1, "one.hgad");
  const auto [two, held_two] = run(2, "two.hgad");
  const auto bytes = hgad_test::read_bytes(dir.file("one.hgad"));
  REQUIRE(bytes.size() > 1000);
  CHECK(bytes == hgad_test::read_bytes(dir.file("two.hgad")));
  REQUIRE(one.size() == 3 * static_cast<std::size_t>(t.test.features[0].dim(0)));
  REQUIRE(two.size() == one.size());
  for (std::size_t i = 0; i < one.size(); ++i) {
    REQUIRE(std::isfinite(one[i].score));
    CHECK(two[i].score == one[i].score);
    CHECK(same_tensor(two[i].map, one[i].map));
    CHECK(two[i].predicted_class == one[i].predicted_class);
  }
  CHECK(held_two.log_likelihood == held_one.log_likelihood);
  CHECK(held_two.class_accuracy == held_one.class_accuracy);
}

TEST_CASE("HgadModel is deterministic: byte-identical checkpoints on one thread, scores to 1e-6 on two",
          "[model]") {
  // Large enough that the flow, the losses and the scores take their multi-threaded paths (a
  // batch of 4 images is 1024 rows of D = 16, above the parallel grain).
  hgad::ModelConfig c;
  c.levels = {{16, 16, 16}};
  c.class_names = {"a", "b"};
  c.features.backbone = "none";
  c.features.mask_size = 16;
  c.pos_dim = 8;
  c.n_blocks = 2;
  c.n_centers = 3;
  c.meta_epochs = 3;
  c.sub_epochs = 1;
  c.warmup_meta_epochs = 1;
  c.stage1_meta_epochs = 1;
  c.lr = 1e-3;
  c.batch_size = 4;
  hgad::Rng rng(3);
  const Index N = 8;
  std::vector<hgad::Tensor<float>> features = {hgad::Tensor<float>::randn({N, 16, 16, 16}, rng)};
  std::vector<std::int64_t> classes;
  for (Index i = 0; i < N; ++i) {
    classes.push_back(i % 2);
    for (Index r = 0; r < 256; ++r) features[0].data()[(i * 256 + r) * 16 + i % 2] += 2.0f;
  }
  hgad_test::TempDir dir("model_determinism");
  auto train = [&](int threads, std::uint64_t seed, const std::string& name) {
    const hgad_test::ThreadCount count(threads);
    c.seed = seed;
    hgad::HgadModel<float> model(c);
    model.fit(features, classes);
    model.calibrate(features, classes);
    model.save(dir.file(name));
    std::vector<double> scores;
    for (const auto& s : model.score_set(features, classes, hgad::ScoreMode::calibrated))
      scores.push_back(s.score);
    return scores;
  };
  const auto a = train(1, 5, "a.hgad");
  const auto b = train(1, 5, "b.hgad");
  const auto other = train(1, 6, "other.hgad");
  const auto two_a = train(2, 5, "two_a.hgad");
  const auto two_b = train(2, 5, "two_b.hgad");

  const auto bytes_a = hgad_test::read_bytes(dir.file("a.hgad"));
  REQUIRE(bytes_a.size() > 1000);
  CHECK(bytes_a == hgad_test::read_bytes(dir.file("b.hgad")));
  CHECK(bytes_a != hgad_test::read_bytes(dir.file("other.hgad")));
  CHECK(a == b);
  CHECK(a != other);
  REQUIRE(two_a.size() == two_b.size());
  for (std::size_t i = 0; i < two_a.size(); ++i) {
    REQUIRE(std::isfinite(two_a[i]));
    CHECK(two_a[i] == Approx(two_b[i]).epsilon(1e-6).margin(0));
  }
}

TEMPLATE_TEST_CASE("HgadModel checkpoint round trip gives bit-identical scores", "[model]", float,
                   double) {
  hgad::ModelConfig c = synthetic_config();
  c.meta_epochs = 2;
  const Synthetic train = make_synthetic(4, 0, 6);
  const Synthetic test = make_synthetic(1, 1, 7);
  const auto train_features = cast<TestType>(train.features),
             test_features = cast<TestType>(test.features);
  hgad::HgadModel<TestType> model(c);
  model.fit(train_features, train.classes);
  model.calibrate(train_features, train.classes);
  model.set_metadata("backbone_dir", "/weights");
  hgad_test::TempDir dir("model_roundtrip");
  const std::string path = dir.file("m.hgad");
  model.save(path);
  const auto loaded = hgad::HgadModel<TestType>::load(path);
  CHECK(loaded.config() == model.config());
  CHECK(loaded.epochs_trained() == model.epochs_trained());
  CHECK(loaded.metadata("backbone_dir") == "/weights");
  REQUIRE(loaded.is_calibrated());
  for (Index k = 0; k <= 3; ++k) {
    CHECK(loaded.calibration(k).log_likelihood.level_max ==
          model.calibration(k).log_likelihood.level_max);
    CHECK(loaded.calibration(k).neg_entropy.sum_max == model.calibration(k).neg_entropy.sum_max);
    CHECK(loaded.calibration(k).train_score_max == model.calibration(k).train_score_max);
  }
  for (Index i = 0; i < test_features[0].dim(0); ++i) {
    const auto image = hgad::HgadModel<TestType>::image_view(test_features, i);
    const auto a = model.raw_scores(image, 1), b = loaded.raw_scores(image, 1);
    for (std::size_t l = 0; l < 2; ++l) {
      CHECK(a.log_likelihood[l].to_vector() == b.log_likelihood[l].to_vector());
      CHECK(a.neg_entropy[l].to_vector() == b.neg_entropy[l].to_vector());
    }
    CHECK(a.class_posterior == b.class_posterior);
    for (auto mode : {hgad::ScoreMode::calibrated, hgad::ScoreMode::label_free}) {
      const auto sa = model.score(image, 1, mode), sb = loaded.score(image, 1, mode);
      CHECK(sa.score == sb.score);
      CHECK(sa.map.to_vector() == sb.map.to_vector());
    }
  }
}

TEST_CASE("HgadModel load and feature errors say what is wrong", "[model]") {
  hgad::ModelConfig c = synthetic_config();
  c.meta_epochs = 1;
  hgad::HgadModel<float> model(c);
  hgad_test::TempDir dir("model_errors");
  const std::string path = dir.file("m.hgad");
  model.save(path);
  const auto bytes = hgad_test::read_bytes(path);

  hgad_test::write_bytes(dir.file("truncated.hgad"),
                         std::vector<unsigned char>(bytes.begin(), bytes.begin() + 100));
  CHECK(error_of([&] {
          hgad::HgadModel<float>::load(dir.file("truncated.hgad"));
        }).find("truncated") != std::string::npos);
  auto flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x40;
  hgad_test::write_bytes(dir.file("corrupt.hgad"), flipped);
  CHECK(error_of([&] { hgad::HgadModel<float>::load(dir.file("corrupt.hgad")); }).find("CRC32") !=
        std::string::npos);
  CHECK(error_of([&] {
          hgad::HgadModel<float>::load(dir.file("missing.hgad"));
        }).find("cannot open") != std::string::npos);

  hgad::Checkpoint other;
  other.set_text("something", "else");
  other.save(dir.file("other.hgad"));
  CHECK(error_of([&] {
          hgad::HgadModel<float>::load(dir.file("other.hgad"));
        }).find("not a model") != std::string::npos);

  hgad::Checkpoint wrong = hgad::Checkpoint::load(path);
  wrong.set_tensor("level1.flow.block0.fc1.weight", hgad::Tensor<float>({3, 3}));
  wrong.save(dir.file("wrong.hgad"));
  const std::string e = error_of([&] { hgad::HgadModel<float>::load(dir.file("wrong.hgad")); });
  CHECK(e.find("level1.flow.block0.fc1.weight") != std::string::npos);
  CHECK(e.find("(3, 3)") != std::string::npos);

  // A small file whose config asks for a huge model is refused before anything is allocated.
  hgad::Checkpoint huge = hgad::Checkpoint::load(path);
  hgad::ModelConfig huge_config = c;
  huge_config.n_blocks = 100000000;
  huge.set_text("config", huge_config.to_text());
  huge.save(dir.file("huge.hgad"));
  const std::string huge_error = error_of([&] { hgad::HgadModel<float>::load(dir.file("huge.hgad")); });
  CHECK(huge_error.find("huge.hgad") != std::string::npos);
  CHECK(huge_error.find("parameter values but the file holds only") != std::string::npos);

  hgad::Checkpoint bad_config = hgad::Checkpoint::load(path);
  bad_config.set_text("config", "n_blocks = zero\n");
  bad_config.save(dir.file("bad_config.hgad"));
  CHECK(error_of([&] {
          hgad::HgadModel<float>::load(dir.file("bad_config.hgad"));
        }).find("'n_blocks'") != std::string::npos);

  // Features of other dimensions than the model's levels.
  std::vector<hgad::Tensor<float>> features = {hgad::Tensor<float>({2, 4, 4, 4}),
                                               hgad::Tensor<float>({2, 2, 2, 8})};
  const std::string f = error_of([&] { model.fit(features, {0, 1}); });
  CHECK(f.find("level 1") != std::string::npos);
  CHECK(f.find("(2, 2, 2, 8)") != std::string::npos);
  CHECK(f.find("(N, 2, 2, 6)") != std::string::npos);
  CHECK(error_of([&] {
          model.fit(make_synthetic(1, 0, 1).features, {0, 1, 5});
        }).find("label 5") != std::string::npos);
}

TEST_CASE("HgadModel fit stops on a non-finite loss and keeps the last good parameters",
          "[model]") {
  hgad::ModelConfig c = synthetic_config();
  c.meta_epochs = 1;
  c.batch_size = 3;
  // The paper's start reads no feature before the steps, so the NaN reaches one (the start of
  // init = whiten refuses it before any step: data_parallel.test.cpp).
  c.init = hgad::ModelInit::identity;
  hgad::HgadModel<float> model(c);
  Synthetic data = make_synthetic(2, 0, 8);
  data.features[1].data()[0] = std::nanf("");
  std::vector<float> before;
  for (const auto& p : model.flow(0).parameters()) {
    const auto v = p.value().to_vector();
    before.insert(before.end(), v.begin(), v.end());
  }
  bool thrown = false;
  try {
    model.fit(data.features, data.classes);
  } catch (const hgad::NonFiniteError& e) {
    thrown = true;
    const std::string what = e.what();
    CHECK(what.find("level 1") != std::string::npos);
    CHECK(what.find("step") != std::string::npos);
  }
  CHECK(thrown);
  for (const auto& p : model.flow(1).parameters())
    for (float v : p.value().to_vector()) REQUIRE(std::isfinite(v));
}

TEST_CASE("HgadModel with the NF objective trains and scores with the likelihood map only",
          "[model]") {
  const Trained& t = trained(hgad::Objective::nf);
  const auto& model = *t.model;
  CHECK_THROWS_AS(model.prior(0), hgad::Error);
  const auto raw = model.raw_scores(hgad::HgadModel<float>::image_view(t.test.features, 0), 0);
  CHECK(raw.neg_entropy.empty());
  CHECK(raw.predicted_class == -1);
  // Far-away anomalies: the single Gaussian sees them.
  const Synthetic far = make_synthetic(6, 6, 2, true);
  const auto scored = model.score_set(far.features, far.classes, hgad::ScoreMode::calibrated);
  CHECK(mean_class_auroc(scored, far) >= 0.85);
  const auto free = model.score_set(far.features, {}, hgad::ScoreMode::label_free);
  CHECK(free[0].scored_class == -1);
  CHECK(mean_class_auroc(free, far) >= 0.85);
  // Its map is the likelihood map whatever the criterion, so its thresholds hold for every one.
  const auto image = hgad::HgadModel<float>::image_view(far.features, 0);
  for (const auto criterion : {hgad::ScoreCriterion::product, hgad::ScoreCriterion::likelihood,
                               hgad::ScoreCriterion::entropy}) {
    CHECK(model.thresholds_hold(criterion));
    CHECK(model.score(image, far.classes[0], hgad::ScoreMode::calibrated, criterion).score ==
          scored[0].score);
  }
}

TEST_CASE("HgadModel finds between-class anomalies that the single-Gaussian NF baseline misses",
          "[model]") {
  // The "homogeneous mapping" of the paper: one N(0, I) for all classes puts a vector between two
  // classes at high likelihood; the class-wise mixture does not.
  const Trained& hgad_model = trained(hgad::Objective::hgad);
  const Trained& nf_model = trained(hgad::Objective::nf);
  const double hgad_auroc = mean_class_auroc(
      hgad_model.model->score_set(hgad_model.test.features, hgad_model.test.classes,
                                  hgad::ScoreMode::calibrated),
      hgad_model.test);
  const double nf_auroc =
      mean_class_auroc(nf_model.model->score_set(nf_model.test.features, nf_model.test.classes,
                                                 hgad::ScoreMode::calibrated),
                       nf_model.test);
  CHECK(hgad_auroc >= 0.85);
  CHECK(hgad_auroc >= nf_auroc + 0.3);
}

TEST_CASE(
    "HgadModel per-position baselines (and scales) are the calibration images' mean maps (and "
    "standard deviations) and survive a checkpoint",
    "[model]") {
  for (const auto baseline :
       {hgad::CalibrationBaseline::position, hgad::CalibrationBaseline::position_std}) {
    const bool scaled = baseline == hgad::CalibrationBaseline::position_std;
    INFO("calibration_baseline " << (scaled ? "position_std" : "position"));
    hgad::ModelConfig c = synthetic_config();
    c.meta_epochs = 2;
    c.calibration_images = 3;
    c.calibration_baseline = baseline;
    const Synthetic train = make_synthetic(5, 0, 6);
    const Synthetic test = make_synthetic(2, 2, 7);
    hgad::HgadModel<float> model(c);
    model.fit(train.features, train.classes);
    model.calibrate(train.features, train.classes);

    // The baselines, recomputed here from raw_scores: per class the mean over three of its five
    // training images spread over them (its first, second and fourth: floor(j 5 / 3)), and for the
    // class-agnostic entry K = 3 the mean over all nine; the scales, the standard deviation over
    // the same images (none of them is near the floor here).
    const Index K = 3, N = train.features[0].dim(0);
    for (Index k = 0; k <= K; ++k) {
      std::vector<std::vector<std::vector<double>>> lik(2), ent(2);  // [level][position][image]
      Index used = 0;
      std::vector<Index> count(static_cast<std::size_t>(K), 0);
      for (Index i = 0; i < N; ++i) {
        const std::int64_t y = train.classes[static_cast<std::size_t>(i)];
        const Index within = count[static_cast<std::size_t>(y)]++;  // its place in its class
        if (within == 2 || within == 4 || (k < K && y != k)) continue;
        ++used;
        const auto raw = model.raw_scores(hgad::HgadModel<float>::image_view(train.features, i), y);
        for (std::size_t l = 0; l < 2; ++l) {
          lik[l].resize(static_cast<std::size_t>(raw.log_likelihood[l].numel()));
          ent[l].resize(lik[l].size());
          for (std::size_t j = 0; j < lik[l].size(); ++j) {
            lik[l][j].push_back(double(raw.log_likelihood[l].data()[j]));
            ent[l][j].push_back(double(raw.neg_entropy[l].data()[j]));
          }
        }
      }
      CHECK(used == (k < K ? 3 : 9));
      const auto mean = [](const std::vector<double>& v) {
        double m = 0;
        for (double x : v) m += x / double(v.size());
        return m;
      };
      const auto deviation = [&](const std::vector<double>& v) {
        const double m = mean(v);
        double d = 0;
        for (double x : v) d += (x - m) * (x - m) / double(v.size());
        return std::sqrt(d);
      };
      const hgad::ClassCalibration& cal = model.calibration(k);
      REQUIRE(cal.log_likelihood_baseline.size() == 2);
      REQUIRE(cal.neg_entropy_baseline.size() == 2);
      REQUIRE(cal.log_likelihood_scale.size() == (scaled ? 2u : 0u));
      REQUIRE(cal.neg_entropy_scale.size() == (scaled ? 2u : 0u));
      for (std::size_t l = 0; l < 2; ++l) {
        REQUIRE(cal.log_likelihood_baseline[l].size() == lik[l].size());
        for (std::size_t j = 0; j < lik[l].size(); ++j) {
          CHECK(cal.log_likelihood_baseline[l][j] == Approx(mean(lik[l][j])).epsilon(1e-12));
          CHECK(cal.neg_entropy_baseline[l][j] ==
                Approx(mean(ent[l][j])).epsilon(1e-12).margin(1e-15));
          if (!scaled) continue;
          CHECK(cal.log_likelihood_scale[l][j] == Approx(deviation(lik[l][j])).epsilon(1e-9));
          CHECK(cal.neg_entropy_scale[l][j] ==
                Approx(deviation(ent[l][j])).epsilon(1e-9).margin(1e-12));
        }
      }
    }

    // An image's calibrated likelihood map is §5.4's map, with the stored constants, of its raw
    // maps taken relative to the baselines (and divided by the scales), here position by position.
    {
      const auto image = hgad::HgadModel<float>::image_view(test.features, 0);
      const std::int64_t y = test.classes[0];
      const auto raw = model.raw_scores(image, y);
      const hgad::ClassCalibration& cal = model.calibration(y);
      std::vector<hgad::Tensor<float>> relative;
      for (std::size_t l = 0; l < 2; ++l) {
        const auto& m = raw.log_likelihood[l];
        hgad::Tensor<float> r({1, m.dim(0), m.dim(1)});
        for (Index j = 0; j < m.numel(); ++j)
          r.data()[j] =
              float((double(m.data()[j]) - cal.log_likelihood_baseline[l][std::size_t(j)]) /
                    (scaled ? cal.log_likelihood_scale[l][std::size_t(j)] : 1.0));
        relative.push_back(r);
      }
      hgad::AnomalyMapOptions o;
      o.height = o.width = c.features.mask_size;
      const auto expected = hgad::calibrated_anomaly_map(relative, cal.log_likelihood, o);
      const auto got =
          model.score(image, y, hgad::ScoreMode::calibrated, hgad::ScoreCriterion::likelihood);
      REQUIRE(got.map.numel() == expected.numel());
      for (Index p = 0; p < got.map.numel(); ++p)
        CHECK(double(got.map.data()[p]) ==
              Approx(std::max(0.0, double(expected.data()[p]))).margin(1e-5));
    }

    // Scores alone and in a batch agree; a saved and loaded model gives the same bits.
    const auto batch = model.score_set(test.features, test.classes, hgad::ScoreMode::calibrated);
    hgad_test::TempDir dir("model_baseline");
    const std::string path = dir.file("m.hgad");
    model.save(path);
    const auto loaded = hgad::HgadModel<float>::load(path);
    CHECK(loaded.config().calibration_baseline == baseline);
    for (Index k = 0; k <= K; ++k) {
      CHECK(loaded.calibration(k).log_likelihood_baseline ==
            model.calibration(k).log_likelihood_baseline);
      CHECK(loaded.calibration(k).neg_entropy_baseline ==
            model.calibration(k).neg_entropy_baseline);
      CHECK(loaded.calibration(k).log_likelihood_scale ==
            model.calibration(k).log_likelihood_scale);
      CHECK(loaded.calibration(k).neg_entropy_scale == model.calibration(k).neg_entropy_scale);
    }
    for (Index i = 0; i < test.features[0].dim(0); ++i) {
      const auto image = hgad::HgadModel<float>::image_view(test.features, i);
      const std::int64_t y = test.classes[static_cast<std::size_t>(i)];
      const auto alone = model.score(image, y, hgad::ScoreMode::calibrated);
      CHECK(alone.score == batch[static_cast<std::size_t>(i)].score);
      CHECK(same_tensor(alone.map, batch[static_cast<std::size_t>(i)].map));
      for (auto mode : {hgad::ScoreMode::calibrated, hgad::ScoreMode::label_free}) {
        const auto a = model.score(image, y, mode), b = loaded.score(image, y, mode);
        CHECK(a.score == b.score);
        CHECK(a.map.to_vector() == b.map.to_vector());
      }
    }

    // A file whose configuration asks for baselines (or scales) it does not hold, or holds them
    // misshapen, or a scale that is not positive.
    const std::string entry =
        scaled ? "calibration.position_scale.level1" : "calibration.position_baseline.level1";
    hgad::Checkpoint misshapen = model.to_checkpoint();
    misshapen.set_tensor(entry, hgad::Tensor<double>({2, 4, 3}));
    CHECK_THROWS_WITH(
        hgad::HgadModel<float>::from_checkpoint(misshapen, "m.hgad"),
        Catch::Contains(entry) && Catch::Contains("(2, 4, 3)") && Catch::Contains("(2, 4, 4)"));
    if (scaled) {
      hgad::Checkpoint zero = model.to_checkpoint();
      hgad::Tensor<double> scales = zero.tensor<double>(entry);
      scales.data()[5] = 0;
      zero.set_tensor(entry, scales);
      CHECK_THROWS_WITH(hgad::HgadModel<float>::from_checkpoint(zero, "m.hgad"),
                        Catch::Contains(entry) && Catch::Contains("not a positive scale"));
    }
    hgad::ModelConfig plain_config = c;
    plain_config.calibration_baseline =
        scaled ? hgad::CalibrationBaseline::position : hgad::CalibrationBaseline::none;
    hgad::HgadModel<float> plain(
        plain_config);  // calibrated untrained: only the file's entries matter
    plain.calibrate(train.features, train.classes);
    hgad::Checkpoint missing = plain.to_checkpoint();
    missing.set_text("config", c.to_text());
    const std::string first =
        scaled ? "calibration.position_scale.level0" : "calibration.position_baseline.level0";
    CHECK_THROWS_WITH(
        hgad::HgadModel<float>::from_checkpoint(missing, "m.hgad"),
        Catch::Contains(first) && Catch::Contains(scaled ? "calibration_baseline = position_std"
                                                         : "calibration_baseline = position"));
  }
}

TEST_CASE("HgadModel class confusion is each class's mean posterior and survives a checkpoint",
          "[model]") {
  const Trained& t = trained();
  const hgad::ModelConfig& c = t.config;
  const Synthetic& train = t.train;
  const hgad::HgadModel<float>& model = *t.model;
  const auto confusion = model.class_confusion();

  // Recomputed here in double from the flow's output (on the whitened features of the start,
  // docs/algorithm.md §2.5) and the prior's parameters: per position
  // p(y | z) = softmax_y(log pi_y - |z - mu_y|^2 / 2), averaged over the positions of each level,
  // then over the levels and over the class's training images (all twelve calibrate).
  const std::size_t K = 3, per_class = 12;
  const Index N = train.features[0].dim(0);
  REQUIRE(N == Index(K * per_class));
  std::vector<std::vector<double>> expected(K, std::vector<double>(K, 0.0));
  for (Index i = 0; i < N; ++i) {
    std::vector<double>& sum = expected[static_cast<std::size_t>(train.classes[i])];
    for (Index l = 0; l < 2; ++l) {
      const hgad::LevelSpec& s = c.levels[static_cast<std::size_t>(l)];
      const hgad::Tensor<float> x = model.whitening(l).forward(
          hgad::HgadModel<float>::image_view(train.features, i)[l].reshape(
              {s.height * s.width, s.dim}));
      const hgad::Tensor<float> z =
          model.flow(l)
              .forward(x, hgad::positional_encoding_2d<float>(c.pos_dim, s.height, s.width))
              .out;
      const auto& mu = model.prior(l).mu().value();
      const auto& phi = model.prior(l).phi_inter().value();
      double phi_norm = 0;
      for (std::size_t y = 0; y < K; ++y) phi_norm += std::exp(double(phi(y)));
      for (Index r = 0; r < z.dim(0); ++r) {
        std::vector<double> weight(K);  // pi_y N(z; mu_y, I) up to a common factor
        for (std::size_t y = 0; y < K; ++y) {
          double d2 = 0;
          for (Index d = 0; d < s.dim; ++d) d2 += std::pow(double(z(r, d)) - double(mu(y, d)), 2);
          weight[y] = std::exp(double(phi(y))) / phi_norm * std::exp(-0.5 * d2);
        }
        const double total = weight[0] + weight[1] + weight[2];
        for (std::size_t y = 0; y < K; ++y)
          sum[y] += weight[y] / total / double(z.dim(0) * 2 * Index(per_class));
      }
    }
  }
  REQUIRE(confusion.size() == K);
  for (std::size_t k = 0; k < K; ++k) {
    const std::vector<double>& row = confusion[k];
    REQUIRE(row.size() == K);
    for (std::size_t y = 0; y < K; ++y) CHECK(row[y] == Approx(expected[k][y]).margin(1e-5));
    CHECK(row[0] + row[1] + row[2] == Approx(1.0).epsilon(1e-6));
    // Three separable classes: each keeps the largest share of its posterior.
    CHECK(std::max_element(row.begin(), row.end()) - row.begin() == Index(k));
  }

  // The matrix survives a checkpoint bit for bit; a file without it (written before hgad stored
  // it) loads and scores, and asking for the confusion says to calibrate again.
  hgad::Checkpoint ckpt = model.to_checkpoint();
  CHECK(hgad::HgadModel<float>::from_checkpoint(ckpt, "m.hgad").class_confusion() == confusion);
  hgad::Checkpoint misshapen = ckpt;
  misshapen.set_tensor("calibration.class_posterior", hgad::Tensor<double>({3, 3}));
  CHECK_THROWS_WITH(
      hgad::HgadModel<float>::from_checkpoint(misshapen, "m.hgad"),
      Catch::Contains("calibration.class_posterior has shape (3, 3), expected (4, 3)"));
  REQUIRE(ckpt.erase("calibration.class_posterior"));
  const auto old = hgad::HgadModel<float>::from_checkpoint(ckpt, "old.hgad");
  const auto image = hgad::HgadModel<float>::image_view(train.features, 0);
  CHECK(old.score(image, 0, hgad::ScoreMode::calibrated).score ==
        model.score(image, 0, hgad::ScoreMode::calibrated).score);
  CHECK_THROWS_WITH(old.class_confusion(), Catch::Contains("calibrate it again"));
  CHECK_THROWS_WITH(trained(hgad::Objective::nf).model->class_confusion(),
                    Catch::Contains("NF objective"));
}

TEST_CASE("Per-position baselines take a positional bias out of the calibrated maps", "[model]") {
  // Hand-made raw likelihood maps (the NF form, no entropy): every image is 3 nats less likely in
  // the corner position of both levels, a defect makes one interior position 1 nat less likely.
  // Measured against the raw maps the corner dominates every image's maximum; measured against
  // the normal images' mean map only the defect stands out.
  // Maps of 64 x 64, so that the blur (sigma 4) keeps the corner and the defect apart.
  hgad::ModelConfig c = synthetic_config();
  c.features.mask_size = 64;
  const hgad::HgadModel<float> model(c);  // only the map pipeline is used
  hgad::Rng rng(5);
  auto make_raw = [&](bool defective) {
    hgad::RawScores<float> r;
    hgad::Tensor<float> l0({4, 4}), l1({2, 2});
    for (hgad::Tensor<float>* t : {&l0, &l1})
      for (Index j = 0; j < t->numel(); ++j) t->data()[j] = float(0.05 * rng.normal() - (j == 0 ? 3.0 : 0.0));
    if (defective) {
      l0.data()[2 * 4 + 2] -= 1.0f;
      l1.data()[1 * 2 + 1] -= 1.0f;
    }
    r.log_likelihood = {l0, l1};
    return r;
  };
  std::vector<hgad::RawScores<float>> normal;
  for (int i = 0; i < 20; ++i) normal.push_back(make_raw(false));
  std::vector<std::vector<double>> mean(2);
  for (std::size_t l = 0; l < 2; ++l) {
    mean[l].assign(static_cast<std::size_t>(normal[0].log_likelihood[l].numel()), 0.0);
    for (const auto& r : normal)
      for (std::size_t j = 0; j < mean[l].size(); ++j) mean[l][j] += double(r.log_likelihood[l].data()[j]) / 20.0;
  }
  std::vector<hgad::RawScores<float>> relative;
  for (const auto& r : normal) {
    hgad::RawScores<float> d;
    for (std::size_t l = 0; l < 2; ++l) {
      hgad::Tensor<float> t(r.log_likelihood[l].shape());
      for (Index j = 0; j < t.numel(); ++j)
        t.data()[j] = float(double(r.log_likelihood[l].data()[j]) - mean[l][static_cast<std::size_t>(j)]);
      d.log_likelihood.push_back(t);
    }
    relative.push_back(d);
  }
  const hgad::ClassCalibration plain = model.fit_constants(normal);
  hgad::ClassCalibration with_baseline = model.fit_constants(relative);
  with_baseline.log_likelihood_baseline = mean;

  std::vector<int> labels;
  std::vector<double> plain_scores, baseline_scores;
  for (int i = 0; i < 20; ++i) {
    const bool defective = i % 2 == 1;
    const auto raw = make_raw(defective);
    labels.push_back(defective ? 1 : 0);
    plain_scores.push_back(model.anomaly_map(raw, plain).score);
    baseline_scores.push_back(model.anomaly_map(raw, with_baseline).score);
  }
  CHECK(hgad::roc_auc_score(labels, baseline_scores) == 1.0);
  CHECK(hgad::roc_auc_score(labels, plain_scores) < 0.8);
}

TEST_CASE("A model of one class scores with its likelihood map", "[model]") {
  // The three clusters of the synthetic set as the normal images of one class; anomalies far away.
  hgad::ModelConfig c = synthetic_config();
  c.class_names = {"only"};
  c.meta_epochs = 10;
  const Synthetic train = make_synthetic(4, 0, 31);
  const Synthetic test = make_synthetic(3, 3, 32, true);
  const std::vector<std::int64_t> train_labels(train.classes.size(), 0), test_labels(test.classes.size(), 0);
  hgad::HgadModel<float> model(c);
  model.fit(train.features, train_labels);
  model.calibrate(train.features, train_labels);
  const auto scored = model.score_set(test.features, test_labels, hgad::ScoreMode::calibrated);
  const auto likelihood = model.score_set(test.features, test_labels, hgad::ScoreMode::calibrated, {},
                                          hgad::ScoreCriterion::likelihood);
  REQUIRE(scored.size() == likelihood.size());
  for (std::size_t i = 0; i < scored.size(); ++i) CHECK(scored[i].score == likelihood[i].score);
  CHECK(model.thresholds_hold(hgad::ScoreCriterion::likelihood));
  CHECK(auroc_of(scored, test.labels) > 0.7);  // an all-zero map gives 0.5
  CHECK_THROWS_WITH(model.score_set(test.features, test_labels, hgad::ScoreMode::calibrated, {},
                                    hgad::ScoreCriterion::entropy),
                    Catch::Contains("one class"));
}

TEST_CASE("The decision threshold is the configured quantile of each class's calibration scores, "
          "saved, and absent from an older file",
          "[model]") {
  hgad::ModelConfig c = synthetic_config();
  c.meta_epochs = 2;
  c.threshold_quantile = 0.75;
  const Synthetic train = make_synthetic(5, 0, 6);
  hgad::HgadModel<float> model(c);
  model.fit(train.features, train.classes);
  model.calibrate(train.features, train.classes);
  // An independent quantile: the calibration images' scores under their class's constants, sorted,
  // interpolated at (n - 1) q.
  auto quantile = [](std::vector<double> v, double q) {
    std::sort(v.begin(), v.end());
    const double h = double(v.size() - 1) * q;
    const std::size_t lo = std::size_t(h);
    return lo + 1 < v.size() ? v[lo] * (1 - (h - double(lo))) + v[lo + 1] * (h - double(lo)) : v[lo];
  };
  std::vector<double> all;
  for (Index k = 0; k < 3; ++k) {
    std::vector<double> scores;
    for (Index i = 0; i < train.features[0].dim(0); ++i)
      if (train.classes[std::size_t(i)] == k) {
        const auto image = hgad::HgadModel<float>::image_view(train.features, i);
        scores.push_back(model.score(image, k, hgad::ScoreMode::calibrated).score);
      }
    REQUIRE(scores.size() == 5);
    const hgad::ClassCalibration& cal = model.calibration(k);
    REQUIRE(cal.has_threshold());
    CHECK(cal.threshold == Approx(quantile(scores, 0.75)).epsilon(1e-9));
    CHECK(cal.threshold <= cal.train_score_max);
    // Three of five scores are at or below the 0.75 quantile of five (h = 3): one is above.
    Index above = 0;
    for (double s : scores) above += cal.is_anomalous(s) ? 1 : 0;
    CHECK(above == 1);
  }
  CHECK(hgad::score_quantile({3, 1, 2}, 1) == 3);
  CHECK(hgad::score_quantile({3, 1, 2}, 0.5) == 2);
  CHECK(hgad::score_quantile({1, 2}, 0.25) == Approx(1.25));

  hgad_test::TempDir dir("model_threshold");
  model.save(dir.file("m.hgad"));
  const auto loaded = hgad::HgadModel<float>::load(dir.file("m.hgad"));
  for (Index k = 0; k <= 3; ++k)
    CHECK(loaded.calibration(k).threshold == model.calibration(k).threshold);

  // A file written before thresholds were stored loads, with the threshold missing.
  hgad::Checkpoint old = model.to_checkpoint();
  REQUIRE(old.erase("calibration.threshold"));
  old.save(dir.file("old.hgad"));
  const auto older = hgad::HgadModel<float>::load(dir.file("old.hgad"));
  REQUIRE(older.is_calibrated());
  for (Index k = 0; k <= 3; ++k) CHECK_FALSE(older.calibration(k).has_threshold());
  // Saved again, it still has none (no NaN entry written).
  older.save(dir.file("old2.hgad"));
  CHECK_FALSE(hgad::Checkpoint::load(dir.file("old2.hgad")).has("calibration.threshold"));
}

TEST_CASE("The training memory estimate counts parameters, one step and the features, and the "
          "constructor refuses parameters beyond the machine's memory",
          "[model]") {
  hgad::ModelConfig c = synthetic_config();
  const auto small = hgad::training_memory<float>(c, 10);
  const hgad::HgadModel<float> model(c);
  // Four float copies of every trainable value, and of the fixed rotations (at most D^2 a block).
  double rotations = 0;
  for (Index l = 0; l < model.n_levels(); ++l)
    for (Index k = 0; k < model.flow(l).n_blocks(); ++k)
      rotations += double(model.flow(l).block(k).rotation().numel());
  CHECK(small.parameters >= 16.0 * double(model.n_parameters()));
  CHECK(small.parameters <= 16.0 * (double(model.n_parameters()) + rotations));
  // Level 0: 4x4 positions, D = 4, n2 = 2, hidden 2 (2 + 4) = 12; 6 images per batch.
  const double N0 = 6 * 16, N1 = 6 * 4;
  const double step0 = 2 * N0 * (12 + 4 + 4) + N0 * (12 + 24 + 6 + 9 + 8);
  const double step1 = 2 * N1 * (14 + 6 + 6) + N1 * (14 + 36 + 6 + 9 + 8);
  CHECK(small.activations == Approx(4.0 * std::max(step0, step1)));
  CHECK(small.features == Approx(4.0 * 10 * (16 * 4 + 4 * 6)));
  CHECK(small.total() == Approx(small.parameters + small.activations + small.features));
  // A step on a quarter of the positions (docs/algorithm.md §4.1) holds a quarter of the rows: 4 of
  // the 16 level-0 positions and 1 of the 4 level-1 ones.
  hgad::ModelConfig quarter = c;
  quarter.position_fraction = {0.25};
  const auto share = hgad::training_memory<float>(quarter, 10);
  CHECK(share.activations == Approx(small.activations / 4));
  CHECK(share.parameters == small.parameters);
  CHECK(share.features == small.features);

  c.n_blocks = 1000000000;  // about 10^11 parameter values
  CHECK(hgad::training_memory<float>(c).total() > 1e12);
  if (hgad::detail::available_memory_bytes() > 0)
    CHECK_THROWS_WITH(hgad::HgadModel<float>(c),
                      Catch::Contains("n_blocks = 1000000000") && Catch::Contains("GB"));
}

}  // namespace hgad_model_test
