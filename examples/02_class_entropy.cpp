// 02_class_entropy: which classes does a trained model fail to tell apart on normal images?
//
// Prints, per class and feature level, the mean entropy H of the inter-class posterior
// p(y | z) ∝ N(z; μ_y, I) over the positions of the class's own calibration images (normal training
// images; the per-position baselines a model trained with `calibration_baseline = position`
// stores), and exp(H), the number of classes that posterior is spread over. A class near 1 is told
// apart from the others at every position. Several classes whose exp(H) is well above 1 are
// classes whose normal images look alike position by position; HGAD pushes their centres apart
// anyway, and training them as one class (`group.NAME = a, b, ...` in the config) is worth a try.
// Only training images enter: no test image or label is needed to read this.
//
//     build/examples/example_02_class_entropy model.hgad
#include <hgad/model/hgad_model.hpp>

#include <cmath>
#include <cstdio>
#include <exception>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s MODEL\n", argv[0]);
    return 2;
  }
  try {
    const auto model = hgad::HgadModel<float>::load(argv[1]);
    const hgad::ModelConfig& config = model.config();
    if (config.objective != hgad::Objective::hgad || !model.is_calibrated() ||
        config.calibration_baseline != hgad::CalibrationBaseline::position) {
      std::fprintf(stderr,
                   "%s: needs a calibrated HGAD model trained with calibration_baseline = position "
                   "(its per-position mean maps hold the entropies)\n",
                   argv[1]);
      return 1;
    }
    std::printf(
        "mean class-posterior entropy of each class's normal training positions, per level\n");
    std::printf("%-16s", "class");
    for (hgad::Index l = 0; l < model.n_levels(); ++l)
      std::printf("  level %lld: H (exp H)", static_cast<long long>(l));
    std::printf("\n");
    for (hgad::Index c = 0; c < model.n_classes(); ++c) {
      std::printf("%-16s", config.class_names[static_cast<std::size_t>(c)].c_str());
      for (const auto& neg_entropy : model.calibration(c).neg_entropy_baseline) {
        double h = 0;
        for (double v : neg_entropy) h -= v;  // the map holds −H per position
        h /= static_cast<double>(neg_entropy.size());
        std::printf("  %10.3f (%5.2f)", h, std::exp(h));
      }
      std::printf("\n");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
