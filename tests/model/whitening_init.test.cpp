// The data-dependent start of a model (init = whiten, docs/algorithm.md §2.5 and §3.1.1): the
// Ledoit–Wolf estimate against the paper's formulas written out as loops, and the step-0 property —
// before any training step the NF model's log-likelihood is the closed-form Gaussian
// N(μ, Σ_LW) of the training vectors, and the HGAD model's class components are N(m_y, Σ_LW) — with
// every expected value computed here, from the data, by Eigen's LLT.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <Eigen/LU>

#include <hgad/flow/whitening.hpp>
#include <hgad/model/hgad_model.hpp>
#include <hgad/model/train_step.hpp>

#include "io/temp_dir.hpp"

namespace whitening_init_test {

namespace {

using hgad::Index;

/// N images of an (h, w) map of D correlated, shifted features; class y = image % K moves the
/// mean along a direction of its own.
template <class Scalar>
hgad::Tensor<Scalar> correlated_features(Index N, Index h, Index w, Index D, Index K,
                                         std::uint64_t seed, std::vector<std::int64_t>& labels) {
  hgad::Rng rng(seed);
  Eigen::MatrixXd mix(D, D);
  for (Index i = 0; i < D; ++i)
    for (Index j = 0; j < D; ++j) mix(i, j) = (i == j ? 1.0 : 0.0) + 0.4 * rng.normal();
  hgad::Tensor<Scalar> x({N, h, w, D});
  labels.clear();
  for (Index n = 0; n < N; ++n) {
    const Index y = n % K;
    labels.push_back(y);
    for (Index p = 0; p < h * w; ++p) {
      Eigen::VectorXd g(D);
      for (Index j = 0; j < D; ++j) g(j) = rng.normal() * (0.5 + 0.3 * double(j));
      const Eigen::VectorXd v = mix * g;
      for (Index j = 0; j < D; ++j)
        x.data()[(n * h * w + p) * D + j] = Scalar(v(j) + 1.5 + (j % K == y ? 2.0 : 0.0));
    }
  }
  return x;
}

/// The rows of a (N, h, w, D) tensor as a double matrix.
template <class Scalar>
Eigen::MatrixXd rows_of(const hgad::Tensor<Scalar>& x) {
  const Index D = x.dim(x.rank() - 1), n = x.numel() / D;
  Eigen::MatrixXd out(n, D);
  for (Index r = 0; r < n; ++r)
    for (Index j = 0; j < D; ++j) out(r, j) = double(x.data()[r * D + j]);
  return out;
}

/// Ledoit & Wolf (2004), Lemmas 3.2–3.4 and Theorem 3.1, as written there, with the normalised
/// Frobenius norm ‖A‖² = tr(A Aᵀ) / p: m = <S, I>, d² = ‖S − m I‖², b̄² = (1/n²) Σ_k ‖x_k x_kᵀ −
/// S‖², b² = min(b̄², d²), Σ* = (b²/d²) m I + (1 − b²/d²) S. A loop over the samples, unlike the
/// code.
struct ReferenceLedoitWolf {
  Eigen::VectorXd mean;
  Eigen::MatrixXd covariance;
  double shrinkage = 0;
};

ReferenceLedoitWolf reference_ledoit_wolf(const Eigen::MatrixXd& X) {
  const double n = double(X.rows()), p = double(X.cols());
  ReferenceLedoitWolf r;
  r.mean = X.colwise().mean().transpose();
  Eigen::MatrixXd S = Eigen::MatrixXd::Zero(X.cols(), X.cols());
  for (Index k = 0; k < X.rows(); ++k) {
    const Eigen::VectorXd c = X.row(k).transpose() - r.mean;
    S += c * c.transpose();
  }
  S /= n;
  const auto norm2 = [p](const Eigen::MatrixXd& A) { return (A * A.transpose()).trace() / p; };
  const Eigen::MatrixXd I = Eigen::MatrixXd::Identity(X.cols(), X.cols());
  const double m = (S * I.transpose()).trace() / p;
  const double d2 = norm2(S - m * I);
  double b2bar = 0;
  for (Index k = 0; k < X.rows(); ++k) {
    const Eigen::VectorXd c = X.row(k).transpose() - r.mean;
    b2bar += norm2(c * c.transpose() - S);
  }
  b2bar /= n * n;
  const double b2 = std::min(b2bar, d2);
  r.shrinkage = b2 / d2;
  r.covariance = r.shrinkage * m * I + (1 - r.shrinkage) * S;
  return r;
}

/// log N(x; mean, cov), by Eigen's LLT.
double gaussian_log_density(const Eigen::VectorXd& x, const Eigen::VectorXd& mean,
                            const Eigen::MatrixXd& cov) {
  const Eigen::LLT<Eigen::MatrixXd> llt(cov);
  REQUIRE(llt.info() == Eigen::Success);
  const Eigen::VectorXd u = llt.matrixL().solve(x - mean);
  const double log_det = 2 * llt.matrixL().toDenseMatrix().diagonal().array().log().sum();
  const double pi = 3.14159265358979323846;
  return -0.5 * (double(x.size()) * std::log(2 * pi) + log_det + u.squaredNorm());
}

template <class Scalar>
double tolerance() {
  return std::is_same<Scalar, float>::value ? 2e-4 : 1e-10;
}

hgad::ModelConfig whiten_config(hgad::Objective objective, Index D, Index h, Index w, Index K) {
  hgad::ModelConfig c;
  c.objective = objective;
  c.init = hgad::ModelInit::whiten;
  c.levels = {{D, h, w}};
  c.class_names.clear();
  for (Index y = 0; y < K; ++y) c.class_names.push_back("c" + std::to_string(y));
  c.pos_dim = 4;
  c.n_blocks = 3;
  c.n_centers = 1;
  c.batch_size = 4;
  c.meta_epochs = 1;
  c.sub_epochs = 1;
  c.warmup_meta_epochs = 0;
  c.stage1_meta_epochs = 0;
  c.features.backbone = "none";
  c.features.mask_size = 4;
  return c;
}

/// Checks an untrained HGAD model of M = 1 on the 1 × 1 test images: under each class y its
/// log-likelihood is log N(x; mean[y], cov[y]) per dimension; its class posterior (uniform π) is
/// the softmax of the densities N(x; mean[y], posterior_cov[y]) (cov when posterior_cov is empty),
/// and its negative entropy map Σ_y p_y log p_y of that posterior.
template <class Scalar>
void check_class_gaussians(const hgad::HgadModel<Scalar>& model, const hgad::Tensor<Scalar>& test,
                           const std::vector<Eigen::VectorXd>& mean,
                           const std::vector<Eigen::MatrixXd>& cov,
                           const std::vector<Eigen::MatrixXd>& posterior_cov = {}) {
  const Eigen::MatrixXd T = rows_of(test);
  const Index K = Index(mean.size()), D = T.cols();
  const std::vector<Eigen::MatrixXd>& class_cov = posterior_cov.empty() ? cov : posterior_cov;
  for (Index i = 0; i < T.rows(); ++i) {
    std::vector<double> log_density(static_cast<std::size_t>(K)), class_density(log_density);
    for (std::size_t y = 0; y < log_density.size(); ++y) {
      log_density[y] = gaussian_log_density(T.row(i).transpose(), mean[y], cov[y]);
      class_density[y] = gaussian_log_density(T.row(i).transpose(), mean[y], class_cov[y]);
    }
    const double top = *std::max_element(class_density.begin(), class_density.end());
    double z = 0;
    for (double v : class_density) z += std::exp(v - top);
    double neg_entropy = 0;
    for (double v : class_density) neg_entropy += std::exp(v - top) / z * (v - top - std::log(z));
    const auto image = hgad::HgadModel<Scalar>::image_view({test}, i);
    for (Index y = 0; y < K; ++y) {
      const auto raw = model.raw_scores(image, y);  // M = 1: the intra mixture is the class Gaussian
      const double got = double(raw.log_likelihood[0].data()[0]);
      REQUIRE(std::isfinite(got));
      CHECK(got == Approx(log_density[static_cast<std::size_t>(y)] / double(D))
                       .margin(tolerance<Scalar>()));
      CHECK(raw.class_posterior[static_cast<std::size_t>(y)] ==
            Approx(std::exp(class_density[static_cast<std::size_t>(y)] - top) / z)
                .margin(tolerance<Scalar>()));
      CHECK(double(raw.neg_entropy[0].data()[0]) ==
            Approx(neg_entropy).margin(tolerance<Scalar>()));
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("ledoit_wolf_covariance equals Ledoit and Wolf's estimator written as loops",
                   "[model]", float, double) {
  std::vector<std::int64_t> labels;
  // N = 9 rows of D = 7 (fewer rows than dimensions: S is singular) and N = 200 rows of D = 5.
  for (const auto& [N, D] : std::vector<std::pair<Index, Index>>{{9, 7}, {200, 5}}) {
    const hgad::Tensor<TestType> x =
        correlated_features<TestType>(N, 1, 1, D, 3, 11, labels).reshape({N, D});
    const hgad::ShrunkCovariance got = hgad::ledoit_wolf_covariance(x);
    const ReferenceLedoitWolf want = reference_ledoit_wolf(rows_of(x));
    REQUIRE(std::isfinite(got.shrinkage));
    CHECK(got.shrinkage > 0);
    CHECK(got.shrinkage <= 1);
    CHECK(got.shrinkage == Approx(want.shrinkage).epsilon(1e-9));
    REQUIRE(got.covariance.allFinite());
    CHECK((got.covariance - want.covariance).cwiseAbs().maxCoeff() <
          1e-9 * want.covariance.cwiseAbs().maxCoeff());
    CHECK((got.mean - want.mean).cwiseAbs().maxCoeff() < 1e-9);
  }
}

TEST_CASE("ledoit_wolf_covariance and AffineWhitening refuse bad input, naming the value",
          "[model]") {
  hgad::Tensor<double> one({1, 3});
  CHECK_THROWS_WITH(hgad::ledoit_wolf_covariance(one),
                    Catch::Contains("1 vectors") && Catch::Contains("at least 2"));
  hgad::Tensor<double> x({4, 3});
  for (Index i = 0; i < x.numel(); ++i) x.data()[i] = double(i % 5);
  x(2, 1) = std::nan("");
  CHECK_THROWS_WITH(hgad::ledoit_wolf_covariance(x),
                    Catch::Contains("non-finite") && Catch::Contains("vector 2, component 1"));
  hgad::Tensor<double> constant = hgad::Tensor<double>::full({5, 3}, 2.0);
  CHECK_THROWS_WITH(hgad::ledoit_wolf_covariance(constant), Catch::Contains("zero variance"));
  hgad::Tensor<double> upper({2, 2});
  upper(0, 0) = upper(1, 1) = 1;
  upper(0, 1) = 0.5;
  CHECK_THROWS_WITH(hgad::AffineWhitening<double>(hgad::Tensor<double>({2}), upper),
                    Catch::Contains("lower triangular") && Catch::Contains("(0, 1)"));
}

TEMPLATE_TEST_CASE(
    "At step 0 an NF model with init = whiten is the Gaussian N(mean, Ledoit-Wolf covariance)",
    "[model]", float, double) {
  const Index N = 12, h = 2, w = 2, D = 6, K = 2;
  std::vector<std::int64_t> train_labels, test_labels;
  const hgad::Tensor<TestType> train =
      correlated_features<TestType>(N, h, w, D, K, 3, train_labels);
  const hgad::Tensor<TestType> test = correlated_features<TestType>(3, h, w, D, K, 4, test_labels);
  hgad::HgadModel<TestType> model(whiten_config(hgad::Objective::nf, D, h, w, K));
  model.initialise_from_data({train}, train_labels);
  REQUIRE_FALSE(model.whitening(0).is_identity());

  const ReferenceLedoitWolf gaussian = reference_ledoit_wolf(rows_of(train));
  const Eigen::MatrixXd test_rows = rows_of(test);
  for (Index i = 0; i < 3; ++i) {
    const auto raw = model.raw_scores(hgad::HgadModel<TestType>::image_view({test}, i), 0);
    for (Index p = 0; p < h * w; ++p) {
      const double got = double(raw.log_likelihood[0].data()[p]);  // per dimension
      const double want = gaussian_log_density(test_rows.row(i * h * w + p).transpose(),
                                               gaussian.mean, gaussian.covariance) /
                          double(D);
      REQUIRE(std::isfinite(got));
      CHECK(got == Approx(want).margin(tolerance<TestType>()));
    }
  }

  // The training loss counts the whitening's log-determinant: the NF loss of the step-0 model is
  // the mean of softplus(−log N(x; μ, Σ_LW) / D) (§3.3.5).
  const hgad::Tensor<TestType> rows = train.reshape({N * h * w, D});
  hgad::LossOptions options;
  options.objective = hgad::Objective::nf;
  options.log_jac_det_offset = model.whitening(0).log_jac_det();
  hgad::SequenceFlowCache<TestType> cache;
  auto& flow = model.flow(0);
  const auto terms = hgad::compute_gradients<TestType>(
      flow, nullptr, model.whitening(0).forward(rows), hgad::Tensor<TestType>({1, 4}),
      std::vector<std::int64_t>(static_cast<std::size_t>(N * h * w), 0), 2, options, {}, cache);
  const Eigen::MatrixXd train_rows = rows_of(train);
  double want_loss = 0;
  for (Index r = 0; r < train_rows.rows(); ++r) {
    const double logp =
        gaussian_log_density(train_rows.row(r).transpose(), gaussian.mean, gaussian.covariance);
    want_loss += std::log1p(std::exp(-logp / double(D))) / double(train_rows.rows());
  }
  REQUIRE(std::isfinite(double(terms.l_z)));
  CHECK(double(terms.l_z) == Approx(want_loss).margin(tolerance<TestType>()));
}

TEMPLATE_TEST_CASE(
    "At step 0 an HGAD model with init = whiten has one component N(class mean, LW covariance) per "
    "class",
    "[model]", float, double) {
  const Index N = 30, D = 5, K = 3;
  std::vector<std::int64_t> labels, test_labels;
  const hgad::Tensor<TestType> train = correlated_features<TestType>(N, 1, 1, D, K, 8, labels);
  const hgad::Tensor<TestType> test = correlated_features<TestType>(6, 1, 1, D, K, 9, test_labels);
  hgad::HgadModel<TestType> model(whiten_config(hgad::Objective::hgad, D, 1, 1, K));
  model.initialise_from_data({train}, labels);

  const ReferenceLedoitWolf shared = reference_ledoit_wolf(rows_of(train));
  const Eigen::MatrixXd X = rows_of(train);
  std::vector<Eigen::VectorXd> class_mean(static_cast<std::size_t>(K), Eigen::VectorXd::Zero(D));
  std::vector<double> count(static_cast<std::size_t>(K), 0);
  for (Index n = 0; n < N; ++n) {
    class_mean[static_cast<std::size_t>(labels[static_cast<std::size_t>(n)])] +=
        X.row(n).transpose();
    count[static_cast<std::size_t>(labels[static_cast<std::size_t>(n)])] += 1;
  }
  for (Index y = 0; y < K; ++y)
    class_mean[static_cast<std::size_t>(y)] /= count[static_cast<std::size_t>(y)];

  check_class_gaussians(model, test, class_mean,
                        std::vector<Eigen::MatrixXd>(static_cast<std::size_t>(K), shared.covariance));
}

TEMPLATE_TEST_CASE(
    "A whitened model trains, saves and loads with bit-identical scores, and a file without "
    "whitening loads as the identity",
    "[model]", float, double) {
  const Index N = 16, h = 2, w = 2, D = 6, K = 2;
  std::vector<std::int64_t> labels;
  const hgad::Tensor<TestType> train = correlated_features<TestType>(N, h, w, D, K, 5, labels);
  hgad::ModelConfig c = whiten_config(hgad::Objective::hgad, D, h, w, K);
  c.n_centers = 3;
  hgad::Checkpoint whitened;  // the last trained model of the loop, for the refusals below
  for (const hgad::IntraCenterInit how :
       {hgad::IntraCenterInit::kmeans, hgad::IntraCenterInit::noise}) {
    c.intra_center_init = how;
    hgad::HgadModel<TestType> model(c);
    const auto report = model.fit({train}, labels);
    REQUIRE(std::isfinite(double(report.final_terms[0].total)));
    REQUIRE_FALSE(model.whitening(0).is_identity());
    model.calibrate({train}, labels);
    hgad_test::TempDir dir("whiten_roundtrip");
    model.save(dir.file("m.hgad"));
    whitened = model.to_checkpoint();
    const auto loaded = hgad::HgadModel<TestType>::load(dir.file("m.hgad"));
    CHECK(loaded.config() == model.config());
    CHECK(loaded.whitening(0).mean().to_vector() == model.whitening(0).mean().to_vector());
    CHECK(loaded.whitening(0).matrix().to_vector() == model.whitening(0).matrix().to_vector());
    CHECK(loaded.whitening(0).log_jac_det() == model.whitening(0).log_jac_det());
    for (Index i = 0; i < N; i += 5) {
      const auto image = hgad::HgadModel<TestType>::image_view({train}, i);
      const auto a = model.raw_scores(image, -1), b = loaded.raw_scores(image, -1);
      CHECK(a.log_likelihood[0].to_vector() == b.log_likelihood[0].to_vector());
      CHECK(a.class_posterior == b.class_posterior);
      CHECK(model.score(image, 0, hgad::ScoreMode::calibrated).score ==
            loaded.score(image, 0, hgad::ScoreMode::calibrated).score);
    }
  }
  // The same model trained with init = identity: no whitening entries in its file, none loaded.
  c.init = hgad::ModelInit::identity;
  hgad::HgadModel<TestType> plain(c);
  plain.fit({train}, labels);
  CHECK(plain.whitening(0).is_identity());
  hgad_test::TempDir dir("identity_roundtrip");
  plain.save(dir.file("p.hgad"));
  const auto loaded = hgad::HgadModel<TestType>::load(dir.file("p.hgad"));
  CHECK(loaded.whitening(0).is_identity());
  CHECK(loaded.config().init == hgad::ModelInit::identity);

  // A file of a version before the init key (its configuration lacks the line) had the paper's
  // start, the default then: it loads as init = identity, trained or not.
  for (const bool trained : {true, false}) {
    INFO("trained " << trained);
    hgad::Checkpoint old =
        trained ? plain.to_checkpoint() : hgad::HgadModel<TestType>(c).to_checkpoint();
    std::string text = old.text("config");
    const std::string line = "init = identity\n";
    const auto at = text.find("\n" + line);
    REQUIRE(at != std::string::npos);
    text.erase(at + 1, line.size());
    old.set_text("config", text);
    CHECK(hgad::ModelConfig::from_text(text).init == hgad::ModelInit::whiten);  // the default now
    CHECK(hgad::HgadModel<TestType>::from_checkpoint(old, "old.hgad").config().init ==
          hgad::ModelInit::identity);
  }
  // A whitening and a configuration that disagree are refused.
  hgad::Checkpoint stray = plain.to_checkpoint();
  stray.set_tensor("level0.whitening.mean", whitened.tensor<TestType>("level0.whitening.mean"));
  CHECK_THROWS_WITH(
      hgad::HgadModel<TestType>::from_checkpoint(stray, "stray.hgad"),
      Catch::Contains("'stray.hgad' holds a whitening but its configuration has init = identity"));
  hgad::Checkpoint lacking = whitened;
  REQUIRE(lacking.erase("level0.whitening.mean"));
  REQUIRE(lacking.erase("level0.whitening.matrix"));
  CHECK_THROWS_WITH(hgad::HgadModel<TestType>::from_checkpoint(lacking, "lacking.hgad"),
                    Catch::Contains("'lacking.hgad' is a trained model of init = whiten but lacks "
                                    "'level0.whitening.mean'"));
}

namespace {

/// The rows W (x − μ) of the model's whitening of level 0, as a double matrix.
template <class Scalar>
Eigen::MatrixXd whitened_rows(const hgad::AffineWhitening<Scalar>& w, const Eigen::MatrixXd& X) {
  const Index D = X.cols();
  Eigen::MatrixXd W(D, D);
  Eigen::VectorXd mean(D);
  for (Index i = 0; i < D; ++i) {
    mean(i) = double(w.mean()(i));
    for (Index j = 0; j < D; ++j) W(i, j) = double(w.matrix()(i, j));
  }
  return (X.rowwise() - mean.transpose()) * W.transpose();
}

/// The class Gaussians N(mean_y, Σ_y) an untrained class-covariance model (M = 1) should hold:
/// mean_y the mean of class y's training vectors, Σ_y = W⁻¹ LW(W (x_y − μ)) W⁻ᵀ, the Ledoit–Wolf
/// estimate of its whitened vectors mapped back to the features. Image n's vectors have labels[n].
struct ClassGaussians {
  std::vector<Eigen::VectorXd> mean;
  std::vector<Eigen::MatrixXd> covariance;
};

template <class Scalar>
ClassGaussians class_gaussians(const hgad::HgadModel<Scalar>& model, const hgad::Tensor<Scalar>& train,
                               const std::vector<std::int64_t>& labels, Index K) {
  const Eigen::MatrixXd X = rows_of(train);
  const Eigen::MatrixXd Xw = whitened_rows(model.whitening(0), X);
  const Index D = X.cols(), per_image = X.rows() / Index(labels.size());
  Eigen::MatrixXd W_inverse(D, D);
  for (Index i = 0; i < D; ++i)
    for (Index j = 0; j < D; ++j) W_inverse(i, j) = double(model.whitening(0).matrix()(i, j));
  W_inverse = W_inverse.inverse().eval();
  ClassGaussians out;
  for (Index y = 0; y < K; ++y) {
    std::vector<Index> members;  // rows of class y
    for (Index r = 0; r < X.rows(); ++r)
      if (labels[static_cast<std::size_t>(r / per_image)] == y) members.push_back(r);
    Eigen::MatrixXd Xy(Index(members.size()), D), Xwy(Index(members.size()), D);
    for (std::size_t r = 0; r < members.size(); ++r) {
      Xy.row(Index(r)) = X.row(members[r]);
      Xwy.row(Index(r)) = Xw.row(members[r]);
    }
    out.mean.push_back(Xy.colwise().mean().transpose());
    out.covariance.push_back(W_inverse * reference_ledoit_wolf(Xwy).covariance * W_inverse.transpose());
  }
  return out;
}

}  // namespace

TEMPLATE_TEST_CASE(
    "At step 0 an HGAD model with class covariances has one component N(class mean, class "
    "covariance) per class, and its class level the same (class) or the shared covariance (intra)",
    "[model]", float, double) {
  // Σ_y is the Ledoit–Wolf estimate of class y's whitened vectors, mapped back to the features:
  // Σ_y = W⁻¹ LW(W (x_y − μ)) W⁻ᵀ (the estimate shrinks towards the shared covariance). With
  // class_covariance = intra the class level keeps unit components in the whitened space:
  // N(mean_y, Σ_LW) in the features, Σ_LW the whitening's estimate from all training vectors.
  const Index N = 60, D = 5, K = 3;
  std::vector<std::int64_t> labels, test_labels;
  const hgad::Tensor<TestType> train = correlated_features<TestType>(N, 1, 1, D, K, 18, labels);
  const hgad::Tensor<TestType> test = correlated_features<TestType>(6, 1, 1, D, K, 19, test_labels);
  for (const hgad::ClassCovariance covariance :
       {hgad::ClassCovariance::class_, hgad::ClassCovariance::intra}) {
    const bool class_level = covariance == hgad::ClassCovariance::class_;
    INFO("class level " << class_level);
    hgad::ModelConfig c = whiten_config(hgad::Objective::hgad, D, 1, 1, K);
    c.class_covariance = covariance;
    hgad::HgadModel<TestType> model(c);
    model.initialise_from_data({train}, labels);
    REQUIRE(model.prior(0).has_class_factors());
    REQUIRE(model.prior(0).class_level_factors() == class_level);

    const ClassGaussians g = class_gaussians(model, train, labels, K);
    const std::vector<Eigen::MatrixXd> shared(static_cast<std::size_t>(K),
                                              reference_ledoit_wolf(rows_of(train)).covariance);
    check_class_gaussians(model, test, g.mean, g.covariance,
                          class_level ? std::vector<Eigen::MatrixXd>() : shared);
  }
}

TEMPLATE_TEST_CASE(
    "held_out at step 0 is the closed-form class Gaussians' log-density per dimension, averaged over "
    "positions, images of a class and classes, with the class accuracy of their posterior",
    "[model]", float, double) {
  const Index N = 60, h = 2, w = 2, D = 5, K = 3;
  std::vector<std::int64_t> labels, held_labels;
  const hgad::Tensor<TestType> train = correlated_features<TestType>(N, h, w, D, K, 31, labels);
  // Held-out images: 7 of them, so that the classes hold 3, 2 and 2 (each class counts once).
  const hgad::Tensor<TestType> held = correlated_features<TestType>(7, h, w, D, K, 32, held_labels);
  hgad::ModelConfig c = whiten_config(hgad::Objective::hgad, D, h, w, K);
  c.class_covariance = hgad::ClassCovariance::class_;
  hgad::HgadModel<TestType> model(c);
  model.initialise_from_data({train}, labels);

  const ClassGaussians g = class_gaussians(model, train, labels, K);

  const Eigen::MatrixXd T = rows_of(held);
  std::vector<double> class_sum(static_cast<std::size_t>(K), 0.0);
  std::vector<int> class_images(static_cast<std::size_t>(K), 0);
  int correct = 0;
  for (Index i = 0; i < 7; ++i) {
    const std::int64_t y = held_labels[static_cast<std::size_t>(i)];
    double own = 0;
    std::vector<double> posterior(static_cast<std::size_t>(K), 0.0);  // mean over positions
    for (Index p = 0; p < h * w; ++p) {
      std::vector<double> log_density(static_cast<std::size_t>(K));
      for (Index k = 0; k < K; ++k)
        log_density[std::size_t(k)] = gaussian_log_density(T.row(i * h * w + p).transpose(),
                                                           g.mean[std::size_t(k)], g.covariance[std::size_t(k)]);
      own += log_density[std::size_t(y)] / double(D) / double(h * w);
      const double top = *std::max_element(log_density.begin(), log_density.end());
      double z = 0;
      for (double v : log_density) z += std::exp(v - top);
      for (Index k = 0; k < K; ++k)
        posterior[std::size_t(k)] += std::exp(log_density[std::size_t(k)] - top) / z / double(h * w);
    }
    class_sum[std::size_t(y)] += own;
    ++class_images[std::size_t(y)];
    correct += std::max_element(posterior.begin(), posterior.end()) - posterior.begin() == y ? 1 : 0;
  }
  double expected = 0;
  for (Index k = 0; k < K; ++k) expected += class_sum[std::size_t(k)] / class_images[std::size_t(k)] / double(K);

  const hgad::HeldOut got = model.held_out({held}, held_labels);
  CHECK(got.images == 7);
  REQUIRE(got.log_likelihood.size() == 1);
  CHECK(got.log_likelihood[0] == Approx(expected).margin(tolerance<TestType>()));
  CHECK(got.mean_log_likelihood == got.log_likelihood[0]);
  CHECK(got.class_accuracy == Approx(double(correct) / 7.0));
  CHECK_THROWS_WITH(model.held_out({held}, {0, 1}), Catch::Contains("2 labels for 7 images"));
  std::vector<std::int64_t> bad = held_labels;
  bad[3] = K;
  CHECK_THROWS_WITH(model.held_out({held}, bad), Catch::Contains("label 3 of image 3"));
}

TEMPLATE_TEST_CASE(
    "A model with class covariances trains, saves and loads with bit-identical scores, and a "
    "trained file without its factors, or factors in a model of unit covariances, is refused",
    "[model]", float, double) {
  const Index N = 16, h = 2, w = 2, D = 6, K = 2;
  std::vector<std::int64_t> labels;
  const hgad::Tensor<TestType> train = correlated_features<TestType>(N, h, w, D, K, 25, labels);
  for (const hgad::ClassCovariance covariance :
       {hgad::ClassCovariance::class_, hgad::ClassCovariance::intra}) {
    const bool class_level = covariance == hgad::ClassCovariance::class_;
    INFO("class level " << class_level);
    hgad::ModelConfig c = whiten_config(hgad::Objective::hgad, D, h, w, K);
    c.n_centers = 3;
    c.class_covariance = covariance;
    hgad::HgadModel<TestType> model(c);
    const auto report = model.fit({train}, labels);
    REQUIRE(std::isfinite(double(report.final_terms[0].total)));
    REQUIRE(model.prior(0).has_class_factors());
    CHECK(model.prior(0).class_level_factors() == class_level);
    model.calibrate({train}, labels);
    hgad_test::TempDir dir("class_covariance_roundtrip");
    model.save(dir.file("m.hgad"));
    const auto loaded = hgad::HgadModel<TestType>::load(dir.file("m.hgad"));
    CHECK(loaded.config() == model.config());
    CHECK(loaded.prior(0).class_factors().to_vector() ==
          model.prior(0).class_factors().to_vector());
    CHECK(loaded.prior(0).class_level_factors() == class_level);
    for (Index i = 0; i < N; i += 5) {
      const auto image = hgad::HgadModel<TestType>::image_view({train}, i);
      const auto a = model.raw_scores(image, -1), b = loaded.raw_scores(image, -1);
      CHECK(a.log_likelihood[0].to_vector() == b.log_likelihood[0].to_vector());
      CHECK(a.neg_entropy[0].to_vector() == b.neg_entropy[0].to_vector());
      CHECK(a.class_posterior == b.class_posterior);
      const std::int64_t y = labels[std::size_t(i)];
      auto map = [&](hgad::ScoreCriterion criterion) {
        return model.score(image, y, hgad::ScoreMode::calibrated, criterion).map.to_vector();
      };
      const auto product = map(hgad::ScoreCriterion::product);
      const auto likelihood = map(hgad::ScoreCriterion::likelihood);
      // The thresholds, of product scores, hold for another criterion when its map is the same.
      CHECK(model.thresholds_hold(hgad::ScoreCriterion::product));
      CHECK(model.thresholds_hold(hgad::ScoreCriterion::likelihood) == class_level);
      CHECK_FALSE(model.thresholds_hold(hgad::ScoreCriterion::entropy));
      if (class_level) {
        // The product criterion of a class-level covariance model is its likelihood map (§9.7).
        CHECK(product == likelihood);
      } else {
        // With the paper's class level, the paper's product of the two maps.
        const auto entropy = map(hgad::ScoreCriterion::entropy);
        for (std::size_t p = 0; p < product.size(); ++p)
          CHECK(product[p] == likelihood[p] * entropy[p]);
      }
      CHECK(model.score(image, y, hgad::ScoreMode::calibrated).score ==
            loaded.score(image, y, hgad::ScoreMode::calibrated).score);
    }
    hgad::Checkpoint ckpt = model.to_checkpoint();
    const hgad::Tensor<TestType> factors = model.prior(0).class_factors();
    REQUIRE(ckpt.erase("level0.prior.class_factors"));
    CHECK_THROWS_WITH(hgad::HgadModel<TestType>::from_checkpoint(ckpt, "cut.hgad"),
                      Catch::Contains("lacks 'level0.prior.class_factors'"));
    hgad::ModelConfig unit_config = c;
    unit_config.class_covariance = hgad::ClassCovariance::unit;
    hgad::Checkpoint unit = hgad::HgadModel<TestType>(unit_config).to_checkpoint();
    unit.set_tensor("level0.prior.class_factors", factors);
    CHECK_THROWS_WITH(hgad::HgadModel<TestType>::from_checkpoint(unit, "unit.hgad"),
                      Catch::Contains("'unit.hgad' holds 'level0.prior.class_factors' but its "
                                      "class_covariance is unit"));
  }
}

TEST_CASE("class_covariance = class or intra needs init = whiten and the HGAD objective",
          "[model]") {
  for (const auto& [covariance, text] : std::vector<std::pair<hgad::ClassCovariance, std::string>>{
           {hgad::ClassCovariance::class_, "class"}, {hgad::ClassCovariance::intra, "intra"}}) {
    hgad::ModelConfig c = whiten_config(hgad::Objective::hgad, 4, 1, 1, 2);
    c.class_covariance = covariance;
    CHECK_NOTHROW(c.validate());
    c.init = hgad::ModelInit::identity;
    CHECK_THROWS_WITH(c.validate(), Catch::Contains("class_covariance = " + text) &&
                                        Catch::Contains("init = whiten"));
    c.init = hgad::ModelInit::whiten;
    c.objective = hgad::Objective::nf;
    CHECK_THROWS_WITH(c.validate(), Catch::Contains("NF objective has no classes"));
    const auto parsed =
        hgad::ModelConfig::from_text("init = whiten\nclass_covariance = " + text + "\n", "t");
    CHECK(parsed.class_covariance == covariance);
    CHECK(parsed.to_text().find("class_covariance = " + text) != std::string::npos);
  }
  CHECK_THROWS_WITH(hgad::ModelConfig::from_text("class_covariance = full\n", "t"),
                    Catch::Contains("class_covariance"));
}

namespace {

/// correlated_features with a different mean at every map position: position p adds 1.5 (p + 1)
/// to component p mod D, as aligned objects differ from place to place.
template <class Scalar>
hgad::Tensor<Scalar> positioned_features(Index N, Index h, Index w, Index D, Index K, std::uint64_t seed,
                                         std::vector<std::int64_t>& labels) {
  hgad::Tensor<Scalar> x = correlated_features<Scalar>(N, h, w, D, K, seed, labels);
  for (Index n = 0; n < N; ++n)
    for (Index p = 0; p < h * w; ++p) x.data()[(n * h * w + p) * D + p % D] += Scalar(1.5 * double(p + 1));
  return x;
}

/// The mean of each map position over the images of x (N, h, w, D), from the data, in double.
template <class Scalar>
Eigen::MatrixXd position_means(const hgad::Tensor<Scalar>& x) {
  const Eigen::MatrixXd X = rows_of(x);
  const Index P = x.dim(1) * x.dim(2), N = x.dim(0);
  Eigen::MatrixXd means = Eigen::MatrixXd::Zero(P, X.cols());
  for (Index r = 0; r < X.rows(); ++r) means.row(r % P) += X.row(r) / double(N);
  return means;
}

}  // namespace

TEMPLATE_TEST_CASE(
    "With whiten_mean = position, at step 0 the NF model is N(position mean, Ledoit-Wolf covariance "
    "of the residuals) at every position",
    "[model]", float, double) {
  const Index N = 40, h = 2, w = 3, D = 4, P = h * w;
  std::vector<std::int64_t> labels, test_labels;
  const hgad::Tensor<TestType> train = positioned_features<TestType>(N, h, w, D, 1, 41, labels);
  const hgad::Tensor<TestType> test = positioned_features<TestType>(3, h, w, D, 1, 42, test_labels);
  hgad::ModelConfig c = whiten_config(hgad::Objective::nf, D, h, w, 1);
  c.whiten_mean = hgad::WhitenMean::position;
  hgad::HgadModel<TestType> model(c);
  model.initialise_from_data({train}, labels);
  REQUIRE(model.whitening(0).positions() == P);

  const Eigen::MatrixXd means = position_means(train), X = rows_of(train);
  Eigen::MatrixXd residuals = X;
  for (Index r = 0; r < X.rows(); ++r) residuals.row(r) -= means.row(r % P);
  const ReferenceLedoitWolf lw = reference_ledoit_wolf(residuals);
  const Eigen::MatrixXd T = rows_of(test);
  for (Index i = 0; i < 3; ++i) {
    const auto raw = model.raw_scores(hgad::HgadModel<TestType>::image_view({test}, i), 0);
    for (Index p = 0; p < P; ++p) {
      const Eigen::VectorXd mean = means.row(p).transpose() + lw.mean;
      const double expected = gaussian_log_density(T.row(i * P + p).transpose(), mean, lw.covariance) / double(D);
      CHECK(double(raw.log_likelihood[0].data()[p]) == Approx(expected).margin(tolerance<TestType>()));
    }
  }
  // The same density with one mean is another: the positions' offsets then sit in the covariance.
  c.whiten_mean = hgad::WhitenMean::shared;
  hgad::HgadModel<TestType> shared(c);
  shared.initialise_from_data({train}, labels);
  CHECK(shared.whitening(0).positions() == 0);
  const auto a = model.raw_scores(hgad::HgadModel<TestType>::image_view({test}, 0), 0);
  const auto b = shared.raw_scores(hgad::HgadModel<TestType>::image_view({test}, 0), 0);
  CHECK(std::abs(double(a.log_likelihood[0].data()[0]) - double(b.log_likelihood[0].data()[0])) > 0.01);
}

TEMPLATE_TEST_CASE(
    "With whiten_mean = position and class covariances, at step 0 class y's component at position p "
    "is N(position mean + class mean of the residuals, class covariance)",
    "[model]", float, double) {
  const Index N = 60, h = 2, w = 2, D = 5, K = 3, P = h * w;
  std::vector<std::int64_t> labels, test_labels;
  const hgad::Tensor<TestType> train = positioned_features<TestType>(N, h, w, D, K, 43, labels);
  const hgad::Tensor<TestType> test = positioned_features<TestType>(4, h, w, D, K, 44, test_labels);
  hgad::ModelConfig c = whiten_config(hgad::Objective::hgad, D, h, w, K);
  c.whiten_mean = hgad::WhitenMean::position;
  c.class_covariance = hgad::ClassCovariance::class_;
  hgad::HgadModel<TestType> model(c);
  model.initialise_from_data({train}, labels);

  // Residuals of the training rows from the data's position means; their whitening by the model's
  // W gives the class covariances as in the cases above.
  const Eigen::MatrixXd means = position_means(train), X = rows_of(train);
  Eigen::MatrixXd residuals = X;
  for (Index r = 0; r < X.rows(); ++r) residuals.row(r) -= means.row(r % P);
  Eigen::MatrixXd W(D, D);
  for (Index i = 0; i < D; ++i)
    for (Index j = 0; j < D; ++j) W(i, j) = double(model.whitening(0).matrix()(i, j));
  const Eigen::MatrixXd W_inverse = W.inverse();
  const Eigen::MatrixXd whitened = residuals * W.transpose();
  std::vector<Eigen::VectorXd> class_mean;
  std::vector<Eigen::MatrixXd> class_cov;
  for (Index y = 0; y < K; ++y) {
    std::vector<Index> rows;
    for (Index r = 0; r < X.rows(); ++r)
      if (labels[static_cast<std::size_t>(r / P)] == y) rows.push_back(r);
    Eigen::MatrixXd Ry(Index(rows.size()), D), Wy(Index(rows.size()), D);
    for (std::size_t r = 0; r < rows.size(); ++r) {
      Ry.row(Index(r)) = residuals.row(rows[r]);
      Wy.row(Index(r)) = whitened.row(rows[r]);
    }
    class_mean.push_back(Ry.colwise().mean().transpose());
    class_cov.push_back(W_inverse * reference_ledoit_wolf(Wy).covariance * W_inverse.transpose());
  }
  const Eigen::MatrixXd T = rows_of(test);
  for (Index i = 0; i < 4; ++i)
    for (Index y = 0; y < K; ++y) {
      const auto raw = model.raw_scores(hgad::HgadModel<TestType>::image_view({test}, i), y);
      for (Index p = 0; p < P; ++p) {
        const Eigen::VectorXd x = T.row(i * P + p).transpose() - means.row(p).transpose();
        const double expected =
            gaussian_log_density(x, class_mean[std::size_t(y)], class_cov[std::size_t(y)]) / double(D);
        CHECK(double(raw.log_likelihood[0].data()[p]) == Approx(expected).margin(tolerance<TestType>()));
      }
    }
}

TEMPLATE_TEST_CASE(
    "A whitening with a mean per position: forward_rows takes each row's position from its index, "
    "forward from its place in whole images, and a model file keeps the table",
    "[model]", float, double) {
  const Index N = 12, h = 2, w = 2, D = 3, P = h * w;
  std::vector<std::int64_t> labels;
  const hgad::Tensor<TestType> x = positioned_features<TestType>(N, h, w, D, 2, 45, labels);
  const hgad::Tensor<TestType> rows = x.reshape({N * P, D});
  const auto white = hgad::AffineWhitening<TestType>::fit_per_position(rows, P, "x");
  CHECK(white.mean().shape() == hgad::Shape({P, D}));
  const hgad::Tensor<TestType> all = white.forward(rows);
  // Rows 5, 2 and 11 alone.
  hgad::Tensor<TestType> picked({3, D});
  const std::vector<Index> index = {5, 2, 11};
  for (std::size_t i = 0; i < index.size(); ++i)
    for (Index j = 0; j < D; ++j) picked(Index(i), j) = rows(index[i], j);
  const hgad::Tensor<TestType> some = white.forward_rows(picked, index);
  // Equal up to rounding: Eigen picks its product kernel by size, so 3 rows and 48 rows may sum
  // in another order (at -O0 they do). A row whitened at another position is off by O(1).
  for (std::size_t i = 0; i < index.size(); ++i)
    for (Index j = 0; j < D; ++j)
      CHECK(double(some(Index(i), j)) ==
            Approx(double(all(index[i], j))).epsilon(0).margin(tolerance<TestType>()));
  CHECK_THROWS_WITH(white.forward(rows.slice(0, 6)), Catch::Contains("whole images of 4 rows"));
  CHECK_THROWS_WITH(white.forward_rows(picked, {1, 2}), Catch::Contains("2 row indices"));
  CHECK_THROWS_WITH(hgad::AffineWhitening<TestType>::fit_per_position(rows.slice(0, 4), P, "x"),
                    Catch::Contains("at least two images"));

  hgad::ModelConfig c = whiten_config(hgad::Objective::hgad, D, h, w, 2);
  c.whiten_mean = hgad::WhitenMean::position;
  c.class_covariance = hgad::ClassCovariance::class_;
  hgad::HgadModel<TestType> model(c);
  model.fit({x}, labels);
  model.calibrate({x}, labels);
  hgad_test::TempDir dir("whiten_position_roundtrip");
  model.save(dir.file("m.hgad"));
  const auto loaded = hgad::HgadModel<TestType>::load(dir.file("m.hgad"));
  CHECK(loaded.config().whiten_mean == hgad::WhitenMean::position);
  CHECK(loaded.whitening(0).mean().to_vector() == model.whitening(0).mean().to_vector());
  for (Index i = 0; i < N; i += 5) {
    const auto image = hgad::HgadModel<TestType>::image_view({x}, i);
    CHECK(model.raw_scores(image, -1).log_likelihood[0].to_vector() ==
          loaded.raw_scores(image, -1).log_likelihood[0].to_vector());
  }
  // A file whose table is not (H·W, D) is refused by entry.
  hgad::Checkpoint ckpt = model.to_checkpoint();
  ckpt.set_tensor("level0.whitening.mean", hgad::Tensor<TestType>({D}));
  CHECK_THROWS_WITH(hgad::HgadModel<TestType>::from_checkpoint(ckpt, "cut.hgad"),
                    Catch::Contains("level0.whitening.mean"));
}

TEST_CASE("whiten_mean = position needs init = whiten", "[model]") {
  hgad::ModelConfig c = whiten_config(hgad::Objective::nf, 4, 2, 2, 1);
  c.whiten_mean = hgad::WhitenMean::position;
  CHECK_NOTHROW(c.validate());
  c.init = hgad::ModelInit::identity;
  CHECK_THROWS_WITH(c.validate(), Catch::Contains("whiten_mean = position") && Catch::Contains("init = whiten"));
  CHECK(hgad::ModelConfig::from_text("init = whiten\nwhiten_mean = position\n", "t").whiten_mean ==
        hgad::WhitenMean::position);
  CHECK_THROWS_WITH(hgad::ModelConfig::from_text("whiten_mean = pixel\n", "t"), Catch::Contains("whiten_mean"));
}

}  // namespace whitening_init_test
