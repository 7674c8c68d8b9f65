// Built into the hgad program when hgad's CUDA part is enabled: registers the GPU's level devices
// and backbone with the core, so that `--device cuda` reaches them (hgad/model/level_device.hpp).
#include <hgad/cuda/model_device.cuh>

namespace {

const bool registered = (hgad::cuda::register_model_devices(), true);

}  // namespace
