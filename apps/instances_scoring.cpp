// The scoring and model-file templates of the hgad program (apps/instances.hpp).
#include "instances.hpp"

template class hgad::ModelScoring<float>;
template class hgad::ModelFile<float>;
