// The training templates of the hgad program (apps/instances.hpp).
#include "instances.hpp"

template class hgad::ModelTraining<float>;
template hgad::AffineWhitening<float> hgad::initialise_level_from_data<float>(
    hgad::Index, const hgad::Tensor<float>&, const std::vector<std::int64_t>&,
    hgad::SequenceFlow<float>&, hgad::GaussianMixturePrior<float>*, hgad::IntraCenterInit,
    hgad::Rng&, hgad::ClassCovariance, hgad::WhitenMean);
