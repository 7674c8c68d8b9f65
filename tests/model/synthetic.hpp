#pragma once
// The small synthetic problem of the model tests (HgadModel on the CPU, through other level
// devices, and on the GPU).
#include <cstdint>
#include <vector>

#include <hgad/model/config.hpp>
#include <hgad/rng.hpp>
#include <hgad/tensor.hpp>

namespace hgad_test {

using hgad::Index;

/// A tiny multi-class problem: 3 classes, two levels (D = 4 on 4x4, D = 6 on 2x2). Class k's
/// normal features are N(m_k, 0.3^2 I) with m_k = 2 e_k; an anomalous image has one 4x4 position
/// (and the 2x2 position above it) replaced by the point e_k + e_{k+1}, between two classes: an
/// unlikely vector whose class posterior is uncertain (both HGAD criteria see it); with `far`, by
/// (3, -3, 3, ...), far from every class.
struct Synthetic {
  std::vector<hgad::Tensor<float>> features;  // per level (N, h, w, D)
  std::vector<std::int64_t> classes;
  std::vector<int> labels;
};

inline Synthetic make_synthetic(Index per_class_normal, Index per_class_anomalous, std::uint64_t seed,
                         bool far = false) {
  hgad::Rng rng(seed);
  const Index K = 3, N = K * (per_class_normal + per_class_anomalous);
  Synthetic s;
  s.features = {hgad::Tensor<float>({N, 4, 4, 4}), hgad::Tensor<float>({N, 2, 2, 6})};
  Index i = 0;
  for (Index k = 0; k < K; ++k) {
    for (Index j = 0; j < per_class_normal + per_class_anomalous; ++j, ++i) {
      const bool anomalous = j >= per_class_normal;
      for (std::size_t l = 0; l < 2; ++l) {
        hgad::Tensor<float>& f = s.features[l];
        const Index hw = f.dim(1) * f.dim(2), D = f.dim(3);
        for (Index p = 0; p < hw; ++p)
          for (Index d = 0; d < D; ++d)
            f.data()[(i * hw + p) * D + d] = float((d == k ? 2.0 : 0.0) + 0.3 * rng.normal());
        if (anomalous) {
          const Index p = l == 0 ? 5 : 0;  // 4x4 position (1, 1) lies under 2x2 position (0, 0)
          for (Index d = 0; d < D; ++d)
            f.data()[(i * hw + p) * D + d] =
                far ? float(d % 2 ? -3.0 : 3.0) : float(d == k || d == (k + 1) % K ? 1.0 : 0.0);
        }
      }
      s.classes.push_back(k);
      s.labels.push_back(anomalous ? 1 : 0);
    }
  }
  return s;
}

inline hgad::ModelConfig synthetic_config(hgad::Objective objective = hgad::Objective::hgad) {
  hgad::ModelConfig c;
  c.objective = objective;
  c.levels = {{4, 4, 4}, {6, 2, 2}};
  c.class_names = {"a", "b", "c"};
  c.features.backbone = "none";
  c.features.mask_size = 8;
  c.pos_dim = 4;
  c.n_blocks = 2;
  c.n_centers = 3;
  c.meta_epochs = 30;
  c.sub_epochs = 1;
  c.warmup_meta_epochs = 1;
  c.stage1_meta_epochs = 2;
  c.lr = 1e-2;
  c.batch_size = 6;
  c.seed = 7;
  return c;
}

}  // namespace hgad_test
