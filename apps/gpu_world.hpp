#pragma once
// hgad train under mpirun with --device cuda: each process's GPU and the communicator the GPU
// levels sum their gradients through. Defined in cuda_devices.cu (programs built with hgad's CUDA
// part, HGAD_CLI_CUDA).
#include <memory>
#include <string>

#include <hgad/parallel/communicator.hpp>

namespace hgad_cli {

/// What join_gpus chose for this process.
struct GpuWorld {
  int gpu = 0;                                       ///< this process's GPU on its machine
  std::unique_ptr<hgad::Communicator> communicator;  ///< NCCL's, or null: the sums go through `world`
  std::string how;                                   ///< one line for the progress report
};

/// Gives this process of `world` the GPU of its rank on its machine (modulo the machine's GPUs;
/// Open MPI's OMPI_COMM_WORLD_LOCAL_RANK, else the world rank) and, in a program built with NCCL
/// where every process of every machine has a GPU of its own, the NCCL communicator over them.
/// Every rank calls it at the same point.
///   throws: hgad::Error when this machine has no usable GPU.
GpuWorld join_gpus(hgad::Communicator& world);

}  // namespace hgad_cli
