// Built into the hgad program when hgad's CUDA part is enabled: registers the GPU's level devices
// and backbone with the core, so that `--device cuda` reaches them (hgad/model/level_device.hpp),
// and joins the GPUs of a data-parallel training (gpu_world.hpp).
#include <cstdlib>
#include <string>

#include <hgad/cuda/check.cuh>
#include <hgad/cuda/model_device.cuh>
#ifdef HGAD_HAVE_NCCL
#include <hgad/cuda/nccl_communicator.cuh>
#endif

#include "gpu_world.hpp"

namespace {

const bool registered = (hgad::cuda::register_model_devices(), true);

// The integer in environment variable `name`, or `fallback` when it is unset or not a number.
int env_int(const char* name, int fallback) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return fallback;
  char* end = nullptr;
  const long v = std::strtol(value, &end, 10);
  return *end == '\0' && v >= 0 ? static_cast<int>(v) : fallback;
}

}  // namespace

namespace hgad_cli {

GpuWorld join_gpus(hgad::Communicator& world) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    count = 0;
  }
  hgad::check(count > 0, "rank ", world.rank(),
              ": --device cuda, but no CUDA device is usable on its machine (",
              hgad::cuda::device_description(), ")");
  const int local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", world.rank());
  const int local_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", world.size());
  GpuWorld out;
  out.gpu = local_rank % count;
  hgad::cuda::use_gpu(out.gpu);
  const int shared = local_size > count ? 1 : 0;  // processes of this machine share a GPU
  int sharing = 0;
  for (int s : world.all_gather(shared)) sharing += s;
#ifdef HGAD_HAVE_NCCL
  if (sharing == 0) {
    out.communicator = std::make_unique<hgad::cuda::NcclCommunicator>(world, out.gpu);
    out.how = "one GPU per process; the gradients are summed on the GPUs through NCCL";
    return out;
  }
  out.how = std::to_string(sharing) +
            " process(es) share a GPU with another; the gradients are summed through the host "
            "(NCCL needs a GPU per process)";
#else
  out.how = std::string(sharing == 0 ? "one GPU per process" : "processes share GPUs") +
            "; the gradients are summed through the host (this hgad was built without NCCL)";
#endif
  return out;
}

}  // namespace hgad_cli
