#pragma once
// The hgad program's heaviest templates, at its one scalar type (float), each compiled in a unit
// of its own (instances_training.cpp, instances_scoring.cpp, instances_backbone.cpp) instead of in
// the unit of the commands: these `extern template` declarations keep every unit that includes
// this header from compiling them again. A parallel build then compiles the commands, the
// training, the scoring and the backbone side by side; the program is the same as built from one
// unit.

#include <cstdint>
#include <vector>

#include <hgad/model/pipeline.hpp>

// instances_training.cpp: a training run and the data-dependent start.
extern template class hgad::ModelTraining<float>;
extern template hgad::AffineWhitening<float> hgad::initialise_level_from_data<float>(
    hgad::Index, const hgad::Tensor<float>&, const std::vector<std::int64_t>&,
    hgad::SequenceFlow<float>&, hgad::GaussianMixturePrior<float>*, hgad::IntraCenterInit,
    hgad::Rng&, hgad::ClassCovariance, hgad::WhitenMean);

// instances_scoring.cpp: the scores, maps and calibration, and the model file.
extern template class hgad::ModelScoring<float>;
extern template class hgad::ModelFile<float>;

// instances_backbone.cpp: the backbone and its feature extractors.
extern template class hgad::ResNet<float>;
extern template class hgad::ResNetFeatureExtractor<float>;
extern template class hgad::PyramidFeatureExtractor<float>;
extern template class hgad::NeighbourhoodMeanExtractor<float>;
