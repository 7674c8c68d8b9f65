// The backbone templates of the hgad program (apps/instances.hpp).
#include "instances.hpp"

template class hgad::ResNet<float>;
template class hgad::ResNetFeatureExtractor<float>;
template class hgad::PyramidFeatureExtractor<float>;
template class hgad::NeighbourhoodMeanExtractor<float>;
