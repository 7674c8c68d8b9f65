#pragma once
/// \file
/// Which classes should be trained as one? HGAD's mutual-information loss pushes every class away
/// from the others (docs/algorithm.md §3.2). Two product classes whose normal images look alike
/// position by position (three revisions of one circuit board, say) cannot be pushed apart by the
/// flow: the posterior p(y | z) of their normal positions stays spread over them, and the entropy
/// map takes those normal positions for anomalous ones (docs/results.md §1). Trained as one class
/// (ModelConfig::class_groups) they share a centre and an intra mixture instead.
///
/// suggest_class_groups finds such classes from a calibrated model's class confusion
/// (HgadModel::class_confusion), which comes from its normal training images alone: no test image
/// or label enters. The model is a trained one, or the untrained start of init = whiten, whose
/// class posterior is already that of the class means under the shared covariance
/// (docs/algorithm.md §2.5); `hgad train --auto-group` uses the start when there is one and then
/// trains once.
///
///     const auto groups = hgad::suggest_class_groups(model.config(), model.class_confusion());
///     for (const auto& g : groups) std::cout << hgad::to_config_line(g) << '\n';

#include <algorithm>
#include <string>
#include <vector>

#include "../detail/check.hpp"
#include "config.hpp"

namespace hgad {

/// The least posterior mass two classes must give each other, on average over their normal
/// positions, to be suggested as one class (suggest_class_groups). On industrial-mini a class that
/// is told apart from the others gives each of them at most 0.02; three look-alike boards give each
/// other 0.2–0.35, and the two halves of a class split in two about 0.5.
constexpr double default_group_threshold = 0.1;

namespace detail {

/// The longest common prefix of `names`, without trailing '_', '-' or '.'.
inline std::string common_stem(const std::vector<std::string>& names) {
  std::string stem = names.front();
  for (const std::string& n : names) {
    std::size_t k = 0;
    while (k < stem.size() && k < n.size() && stem[k] == n[k]) ++k;
    stem.resize(k);
  }
  while (!stem.empty() && (stem.back() == '_' || stem.back() == '-' || stem.back() == '.'))
    stem.pop_back();
  return stem;
}

}  // namespace detail

/// The class groups a calibrated model's class confusion suggests. Classes a ≠ b are linked when
/// (confusion[a][b] + confusion[b][a]) / 2 >= threshold: on average over their normal positions
/// each gives the other at least that much of its posterior. Every connected set of two or more
/// linked classes is one group, its classes in the model's order; a class of the model that is
/// itself a group contributes its member folders. A group is named after its folders' common
/// stem ("pcb1, pcb2, pcb3" → "pcb") when that stem is at least two characters long and no folder,
/// class or other suggestion has it, else "group1", "group2", .... With no linked classes the
/// result is empty.
///   requires: `confusion` K × K for the K classes of `config`, its values in [0, 1];
///   threshold in (0, 1].
inline std::vector<ClassGroup> suggest_class_groups(
    const ModelConfig& config, const std::vector<std::vector<double>>& confusion,
    double threshold = default_group_threshold) {
  const std::size_t K = config.class_names.size();
  check(confusion.size() == K, "suggest_class_groups: a confusion of ", confusion.size(),
        " rows for ", K, " classes");
  for (std::size_t a = 0; a < K; ++a) {
    check(confusion[a].size() == K, "suggest_class_groups: row ", a, " of the confusion has ",
          confusion[a].size(), " entries, expected ", K);
    // A mean of float softmax rows may pass 1 by a few units of float rounding (a class the
    // model is sure of, as at the step 0 of init = whiten); more than that is an error.
    for (double v : confusion[a])
      check(v >= 0 && v <= 1 + 1e-5, "suggest_class_groups: confusion value ", v, " in row ", a,
            " is outside [0, 1]");
  }
  check(threshold > 0 && threshold <= 1, "suggest_class_groups: threshold ", threshold,
        " is outside (0, 1]");

  // Connected components of the linked pairs (union-find; a set's root is its smallest class).
  std::vector<std::size_t> root(K);
  for (std::size_t a = 0; a < K; ++a) root[a] = a;
  auto find = [&](std::size_t a) {
    while (root[a] != a) a = root[a] = root[root[a]];
    return a;
  };
  for (std::size_t a = 0; a < K; ++a)
    for (std::size_t b = a + 1; b < K; ++b)
      if ((confusion[a][b] + confusion[b][a]) / 2 >= threshold) {
        const std::size_t ra = find(a), rb = find(b);
        root[std::max(ra, rb)] = std::min(ra, rb);
      }

  const std::vector<std::string> folders = config.folder_names();
  auto taken = [&](const std::string& name, const std::vector<ClassGroup>& groups) {
    return std::find(folders.begin(), folders.end(), name) != folders.end() ||
           std::find(config.class_names.begin(), config.class_names.end(), name) !=
               config.class_names.end() ||
           std::any_of(groups.begin(), groups.end(),
                       [&](const ClassGroup& g) { return g.name == name; });
  };
  std::vector<ClassGroup> groups;
  for (std::size_t r = 0; r < K; ++r) {
    std::vector<std::size_t> classes;
    for (std::size_t a = 0; a < K; ++a)
      if (find(a) == r) classes.push_back(a);
    if (classes.size() < 2) continue;
    ClassGroup g;
    for (std::size_t a : classes) {
      const std::vector<std::string> members = config.folders_of(config.class_names[a]);
      g.members.insert(g.members.end(), members.begin(), members.end());
    }
    g.name = detail::common_stem(g.members);
    for (int i = 1; g.name.size() < 2 || taken(g.name, groups); ++i)
      g.name = "group" + std::to_string(i);
    groups.push_back(g);
  }
  return groups;
}

/// `config` with its classes regrouped as `suggested` (from suggest_class_groups on a model of this
/// config): each suggested group replaces the groups it absorbs, the other groups stay, and the
/// classes are set again from `folders`, the training set's class folders in order.
inline ModelConfig regrouped(ModelConfig config, const std::vector<ClassGroup>& suggested,
                             const std::vector<std::string>& folders) {
  std::vector<ClassGroup> groups;
  for (const ClassGroup& g : config.class_groups) {
    const bool absorbed = std::any_of(suggested.begin(), suggested.end(), [&](const ClassGroup& s) {
      return std::find(s.members.begin(), s.members.end(), g.members.front()) != s.members.end();
    });
    if (!absorbed) groups.push_back(g);
  }
  groups.insert(groups.end(), suggested.begin(), suggested.end());
  config.class_groups = groups;
  config.set_classes_from_folders(folders);
  return config;
}

}  // namespace hgad
