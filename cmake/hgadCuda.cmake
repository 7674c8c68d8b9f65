# The CUDA part of hgad: the INTERFACE target hgad::cuda (headers in include/hgad/cuda/, included only
# from .cu translation units), its tests and its benchmark. Included by the top-level CMakeLists.txt
# when HGAD_ENABLE_CUDA is on.

# Hopper (H100/H200) and Ampere (A100) unless the caller chooses; scripts/gpu_check.sh passes `native`.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
  set(CMAKE_CUDA_ARCHITECTURES "90;80" CACHE STRING "CUDA architectures of hgad's CUDA programs")
endif()
if(NOT DEFINED CMAKE_CUDA_HOST_COMPILER AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  set(CMAKE_CUDA_HOST_COMPILER ${CMAKE_CXX_COMPILER} CACHE FILEPATH "Host compiler of nvcc")
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)

if(NOT DEFINED CMAKE_CUDA_STANDARD)
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
endif()

add_library(hgad_cuda INTERFACE)
add_library(hgad::cuda ALIAS hgad_cuda)
set_target_properties(hgad_cuda PROPERTIES EXPORT_NAME cuda)
target_link_libraries(hgad_cuda INTERFACE hgad::hgad CUDA::cudart CUDA::cublas)
target_compile_features(hgad_cuda INTERFACE cuda_std_17)
# Eigen runs on the host only; without this it would annotate its functions __device__ under nvcc.
target_compile_definitions(hgad_cuda INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:EIGEN_NO_CUDA>)
# OpenMP::OpenMP_CXX adds -fopenmp to C++ sources only; the host half of a .cu file gets it here so
# that the inline CPU kernels of .cpp and .cu translation units of one program are the same code.
if(HGAD_USE_OPENMP)
  target_compile_options(hgad_cuda INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-fopenmp>)
endif()
# Eigen emits `#pragma diag_suppress` for nvcc, which the host compiler does not know.
target_compile_options(hgad_cuda INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wno-unknown-pragmas>)

# NCCL, the CUDA toolkit's collective library: data-parallel training over several GPUs sums the
# gradients in GPU memory (hgad/cuda/nccl_communicator.cuh, the target hgad::nccl, HGAD_HAVE_NCCL).
# Optional: without it the GPU levels of a data-parallel training sum through the host.
find_path(HGAD_NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
find_library(HGAD_NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} ${CUDAToolkit_LIBRARY_ROOT}
             ${CUDAToolkit_TARGET_DIR} PATH_SUFFIXES lib lib64)
set(_hgad_nccl_default OFF)
if(HGAD_NCCL_INCLUDE_DIR AND HGAD_NCCL_LIBRARY)
  set(_hgad_nccl_default ON)
endif()
option(HGAD_ENABLE_NCCL "Sum the gradients of data-parallel GPU training through NCCL" ${_hgad_nccl_default})
if(HGAD_ENABLE_NCCL)
  if(NOT HGAD_NCCL_INCLUDE_DIR OR NOT HGAD_NCCL_LIBRARY)
    message(FATAL_ERROR "HGAD_ENABLE_NCCL is ON but nccl.h or libnccl was not found next to the CUDA "
                        "toolkit; set HGAD_NCCL_INCLUDE_DIR and HGAD_NCCL_LIBRARY, or -DHGAD_ENABLE_NCCL=OFF")
  endif()
  add_library(hgad_nccl INTERFACE)
  add_library(hgad::nccl ALIAS hgad_nccl)
  target_link_libraries(hgad_nccl INTERFACE hgad_cuda ${HGAD_NCCL_LIBRARY})
  target_include_directories(hgad_nccl INTERFACE ${HGAD_NCCL_INCLUDE_DIR})
  target_compile_definitions(hgad_nccl INTERFACE HGAD_HAVE_NCCL=1)
  message(STATUS "hgad: NCCL ${HGAD_NCCL_LIBRARY}")
endif()

if(HGAD_INSTALL)
  install(TARGETS hgad_cuda EXPORT hgadCudaTargets)
  install(EXPORT hgadCudaTargets NAMESPACE hgad:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/hgad)
endif()

# The GPU benchmark (benchmarks/CMakeLists.txt builds the bench_*.cpp programs).
if(HGAD_BUILD_BENCHMARKS AND EXISTS ${PROJECT_SOURCE_DIR}/benchmarks/bench_gpu.cu)
  add_executable(bench_gpu ${PROJECT_SOURCE_DIR}/benchmarks/bench_gpu.cu)
  target_link_libraries(bench_gpu PRIVATE hgad::cuda)
  target_compile_options(bench_gpu PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
  set_target_properties(bench_gpu PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/benchmarks)
endif()
