#pragma once
/// \file
/// NcclCommunicator: the ranks of a data-parallel training, one GPU each, summing gradients in GPU
/// memory through NCCL (the CUDA toolkit's collective library) instead of copying them through the
/// host. Built only with NCCL (CMake: HGAD_ENABLE_NCCL, the target hgad::nccl).
///
///     hgad::MpiCommunicator world;                          // the processes, and the host's transport
///     hgad::cuda::use_gpu(local_rank);                      // model_device.cuh: this rank's GPU
///     hgad::cuda::NcclCommunicator gpus(world, local_rank); // NCCL's ranks are the world's
///     options.communicator = &gpus;                         // fit() on Device::cuda levels
///
/// Sums (Communicator::all_reduce_sum_on, for buffers in this GPU's memory) are the host's
/// algorithm on the GPU: the zero-padded buffer's R slices go to their ranks (NCCL send/receive in
/// one group, an all-to-all), each rank adds the R copies of its slice in rank order in a kernel
/// (detail::rank_order_sum, the host's body), and an NCCL all-gather gives every rank every sum.
/// So the sums are those of all_reduce_sum to the bit, whatever the ranks' timing, the GPUs'
/// topology or NCCL's own reduction order; the traffic is that of a ring all-reduce (about
/// 2 (R - 1)/R of the buffer each way per rank). ncclAllReduce would be one call, but its order of
/// additions differs from chunk to chunk of the buffer and from the host's.
///
/// Everything else (host buffers, the loss values, broadcasts, the failure of a rank) goes through
/// the host communicator the NcclCommunicator was made with. A rank that dies is noticed by that
/// transport (mpirun ends the job); NCCL itself has no time-out, so a rank that stops answering
/// inside an NCCL call is ended by the launcher too.

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstddef>
#include <string>

#include "../backend.hpp"
#include "../detail/check.hpp"
#include "../parallel/communicator.hpp"
#include "check.cuh"
#include "kernels.cuh"

/// Runs an NCCL call and throws hgad::Error with the call text, NCCL's message, the file and line
/// when it does not return ncclSuccess.
#define HGAD_NCCL_CHECK(call)                                                                  \
  do {                                                                                         \
    const ncclResult_t hgad_nccl_status_ = (call);                                             \
    if (hgad_nccl_status_ != ncclSuccess)                                                      \
      throw ::hgad::Error(::hgad::detail::concat("NCCL error ", static_cast<int>(hgad_nccl_status_), \
                                                 " (", ncclGetErrorString(hgad_nccl_status_),  \
                                                 ") in ", #call, " at ", __FILE__, ":", __LINE__)); \
  } while (0)

namespace hgad::cuda {

namespace kernels {

/// out[i] = the rank-order sum of element i of the `ranks` slices of `received`, i < slice.
template <class T>
__global__ void rank_order_sum_kernel(const T* received, std::size_t slice, std::size_t ranks,
                                      T* out) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < slice;
       i += std::size_t(gridDim.x) * blockDim.x)
    out[i] = hgad::detail::rank_order_sum(received, slice, ranks, i);
}

}  // namespace kernels

/// The rank-order sums of `ranks` slices of `slice` values each (received, in this GPU's memory,
/// rank r's slice at r · slice) into out (slice values), on `stream`: the kernel of
/// NcclCommunicator's sums, callable on its own (the tests check it against the host's sum).
template <class T>
void rank_order_sum_on_gpu(const T* received, std::size_t slice, std::size_t ranks, T* out,
                           cudaStream_t stream) {
  if (slice == 0) return;
  kernels::rank_order_sum_kernel<<<kernels::grid_for(static_cast<std::int64_t>(slice)),
                                   kernels::block_threads, 0, stream>>>(received, slice, ranks, out);
  HGAD_CUDA_CHECK_LAUNCH();
}

/// One rank of a group of GPUs joined by NCCL; see the file comment.
class NcclCommunicator final : public ForwardingCommunicator {
 public:
  /// Joins the NCCL group of host's ranks on GPU `gpu` (this rank's; every rank its own): rank 0
  /// makes NCCL's id and host broadcasts it. Every rank of `host` must construct one at the same
  /// point. `host` must outlive this communicator.
  ///   throws: hgad::Error when the GPU does not exist or NCCL cannot join the ranks (two ranks on
  ///           one GPU among them).
  NcclCommunicator(Communicator& host, int gpu) : ForwardingCommunicator(host), m_gpu(gpu) {
    HGAD_CUDA_CHECK(cudaSetDevice(gpu));
    ncclUniqueId id{};
    if (host.rank() == 0) HGAD_NCCL_CHECK(ncclGetUniqueId(&id));
    host.broadcast(&id, 1, 0);
    HGAD_NCCL_CHECK(ncclCommInitRank(&m_comm, host.size(), id, host.rank()));
    const cudaError_t status = cudaStreamCreateWithFlags(&m_stream, cudaStreamNonBlocking);
    if (status != cudaSuccess) {
      (void)ncclCommDestroy(m_comm);
      HGAD_CUDA_CHECK(status);
    }
  }
  ~NcclCommunicator() override {
    if (m_stream != nullptr) (void)cudaStreamSynchronize(m_stream);
    if (m_failed)
      (void)ncclCommAbort(m_comm);
    else
      (void)ncclCommDestroy(m_comm);
    if (m_scratch != nullptr) (void)cudaFree(m_scratch);
    if (m_stream != nullptr) (void)cudaStreamDestroy(m_stream);
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int gpu() const { return m_gpu; }
  /// The buffers summed in GPU memory so far (all_reduce_sum_on calls that NCCL carried).
  long long gpu_sums() const { return m_gpu_sums; }

  void fail(const std::string& reason) noexcept override {
    m_failed = true;  // the destructor aborts NCCL's group instead of waiting for its peers
    ForwardingCommunicator::fail(reason);
  }

 protected:
  bool device_all_reduce_sum(Device device, float* data, Index n) override {
    if (device != Device::cuda) return false;
    sum(data, n, ncclFloat32);
    return true;
  }
  bool device_all_reduce_sum(Device device, double* data, Index n) override {
    if (device != Device::cuda) return false;
    sum(data, n, ncclFloat64);
    return true;
  }

 private:
  template <class T>
  void sum(T* data, Index n, ncclDataType_t type) {
    const std::size_t count = static_cast<std::size_t>(n), ranks = static_cast<std::size_t>(size());
    if (count == 0) return;
    const std::size_t slice = (count + ranks - 1) / ranks;
    HGAD_CUDA_CHECK(cudaSetDevice(m_gpu));
    T* const send = static_cast<T*>(scratch(2 * ranks * slice * sizeof(T)));
    T* const received = send + ranks * slice;
    // The caller's work on data, on whichever stream it issued it, is done before NCCL reads it.
    HGAD_CUDA_CHECK(cudaDeviceSynchronize());
    HGAD_CUDA_CHECK(cudaMemcpyAsync(send, data, count * sizeof(T), cudaMemcpyDeviceToDevice, m_stream));
    if (ranks * slice > count)
      HGAD_CUDA_CHECK(cudaMemsetAsync(send + count, 0, (ranks * slice - count) * sizeof(T), m_stream));
    HGAD_NCCL_CHECK(ncclGroupStart());
    for (std::size_t r = 0; r < ranks; ++r) {
      HGAD_NCCL_CHECK(ncclSend(send + r * slice, slice, type, static_cast<int>(r), m_comm, m_stream));
      HGAD_NCCL_CHECK(ncclRecv(received + r * slice, slice, type, static_cast<int>(r), m_comm, m_stream));
    }
    HGAD_NCCL_CHECK(ncclGroupEnd());
    rank_order_sum_on_gpu(received, slice, ranks, send, m_stream);  // this rank's slice of sums
    HGAD_NCCL_CHECK(ncclAllGather(send, received, slice, type, m_comm, m_stream));
    HGAD_CUDA_CHECK(cudaMemcpyAsync(data, received, count * sizeof(T), cudaMemcpyDeviceToDevice, m_stream));
    HGAD_CUDA_CHECK(cudaStreamSynchronize(m_stream));
    ++m_gpu_sums;
  }

  // GPU scratch of at least `bytes` on the current GPU (m_gpu), grown (never shrunk) as buffers grow.
  void* scratch(std::size_t bytes) {
    if (bytes <= m_scratch_bytes) return m_scratch;
    if (m_scratch != nullptr) {
      HGAD_CUDA_CHECK(cudaStreamSynchronize(m_stream));
      HGAD_CUDA_CHECK(cudaFree(m_scratch));
      m_scratch = nullptr;
      m_scratch_bytes = 0;
    }
    HGAD_CUDA_CHECK(cudaMalloc(&m_scratch, bytes));
    m_scratch_bytes = bytes;
    return m_scratch;
  }

  int m_gpu;
  ncclComm_t m_comm = nullptr;
  cudaStream_t m_stream = nullptr;
  void* m_scratch = nullptr;
  std::size_t m_scratch_bytes = 0;
  long long m_gpu_sums = 0;
  bool m_failed = false;
};

}  // namespace hgad::cuda
