// 02_class_entropy: which classes does a trained model fail to tell apart on normal images?
//
// HGAD's mutual-information loss pushes every class away from the others. Classes whose normal
// images look alike position by position cannot be pushed apart, and the model scores them badly;
// trained as one class (`group.NAME = a, b, ...` in the config) they do far better. This program
// reads, from a calibrated model, what it learnt on its own normal training images (no test image
// or label enters):
//   - the class confusion (HgadModel::class_confusion): row a is the mean inter-class posterior
//     p(y | z) over the positions of class a's calibration images;
//   - with `calibration_baseline = position`, the mean entropy H of the posterior without π at
//     those positions, and exp(H), the number of classes it is spread over;
//   - the class groups suggest_class_groups makes of the confusion, as config lines
//     (`hgad train --auto-group` trains them at once).
//
//     build/examples/example_02_class_entropy model.hgad
#include <hgad/model/class_groups.hpp>
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
    if (config.objective != hgad::Objective::hgad || !model.is_calibrated()) {
      std::fprintf(stderr, "%s: needs a calibrated model of the HGAD objective\n", argv[1]);
      return 1;
    }
    const auto confusion = model.class_confusion();
    const bool entropy = config.calibration_baseline == hgad::CalibrationBaseline::position;

    std::printf("class confusion (row: a class's normal training positions; column: p(y | z))\n");
    std::printf("%-16s", "class");
    for (const auto& name : config.class_names) std::printf(" %8.8s", name.c_str());
    if (entropy)
      for (hgad::Index l = 0; l < model.n_levels(); ++l)
        std::printf("  level %lld: H (exp H)", static_cast<long long>(l));
    std::printf("\n");
    for (hgad::Index c = 0; c < model.n_classes(); ++c) {
      std::printf("%-16s", config.class_names[static_cast<std::size_t>(c)].c_str());
      for (double p : confusion[static_cast<std::size_t>(c)]) std::printf(" %8.3f", p);
      if (entropy)
        for (const auto& neg_entropy : model.calibration(c).neg_entropy_baseline) {
          double h = 0;
          for (double v : neg_entropy) h -= v;  // the map holds −H per position
          h /= static_cast<double>(neg_entropy.size());
          std::printf("  %10.3f (%5.2f)", h, std::exp(h));
        }
      std::printf("\n");
    }

    const auto groups = hgad::suggest_class_groups(config, confusion);
    std::printf("\nclasses that give each other %.2f of their posterior or more, on average:\n",
                hgad::default_group_threshold);
    if (groups.empty()) std::printf("  none\n");
    for (const auto& g : groups) std::printf("  %s\n", hgad::to_config_line(g).c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
