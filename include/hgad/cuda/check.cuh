#pragma once
/// \file
/// Error checks for every CUDA runtime and cuBLAS call, and a query for a usable device.
///
///     HGAD_CUDA_CHECK(cudaMalloc(&p, bytes));      // throws hgad::Error naming the call, file, line
///     HGAD_CUBLAS_CHECK(cublasCreate(&handle));
///     if (!hgad::cuda::device_available()) { /* run on the CPU */ }

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "../detail/check.hpp"

namespace hgad::cuda {

namespace detail {

/// Throws hgad::Error for a failed CUDA runtime call.
inline void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line) {
  throw Error(hgad::detail::concat("CUDA error ", static_cast<int>(status), " (",
                                   cudaGetErrorName(status), ": ", cudaGetErrorString(status),
                                   ") in ", call, " at ", file, ":", line));
}

/// The name of a cuBLAS status; cublasGetStatusString exists from cuBLAS 11.4.2 on.
inline const char* cublas_status_name(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
  }
}

/// Throws hgad::Error for a failed cuBLAS call.
inline void throw_cublas_error(cublasStatus_t status, const char* call, const char* file,
                               int line) {
  throw Error(hgad::detail::concat("cuBLAS error ", static_cast<int>(status), " (",
                                   cublas_status_name(status), ") in ", call, " at ", file, ":",
                                   line));
}

}  // namespace detail

/// True when the CUDA runtime finds a driver and at least one device. Never throws: without a
/// driver or a device it returns false (and clears the runtime's sticky error state).
inline bool device_available() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return count > 0;
}

/// A one-line description of device `device` ("NVIDIA H200, sm_90, 139.8 GiB"), or the reason
/// there is none.
inline std::string device_description(int device = 0) {
  if (!device_available()) return "no CUDA device";
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return "CUDA device " + std::to_string(device) + " (properties unavailable)";
  }
  return hgad::detail::concat(prop.name, ", sm_", prop.major, prop.minor, ", ",
                              static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0),
                              " GiB, ", prop.multiProcessorCount, " SMs");
}

}  // namespace hgad::cuda

/// Runs a CUDA runtime call and throws hgad::Error with the call text, the error name and string,
/// the file and the line when it does not return cudaSuccess.
#define HGAD_CUDA_CHECK(call)                                                          \
  do {                                                                                 \
    const cudaError_t hgad_cuda_status_ = (call);                                      \
    if (hgad_cuda_status_ != cudaSuccess) {                                            \
      (void)cudaGetLastError();                                                        \
      ::hgad::cuda::detail::throw_cuda_error(hgad_cuda_status_, #call, __FILE__, __LINE__); \
    }                                                                                  \
  } while (0)

/// Runs a cuBLAS call and throws hgad::Error with the call text, the status name, the file and
/// the line when it does not return CUBLAS_STATUS_SUCCESS.
#define HGAD_CUBLAS_CHECK(call)                                                          \
  do {                                                                                   \
    const cublasStatus_t hgad_cublas_status_ = (call);                                   \
    if (hgad_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                    \
      ::hgad::cuda::detail::throw_cublas_error(hgad_cublas_status_, #call, __FILE__, __LINE__); \
  } while (0)

/// Checks the launch of the kernel just issued (a bad configuration is reported here; faults
/// inside the kernel surface at the next synchronising call).
#define HGAD_CUDA_CHECK_LAUNCH() HGAD_CUDA_CHECK(cudaPeekAtLastError())
