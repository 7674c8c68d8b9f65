// GPU throughput of HGAD at the paper's configuration (docs/algorithm.md §2.1, §4, §8): the training
// step of level 0 (D = 200, P = 256, 12 blocks, K = 15, M = 10, N = 32768 = 8 images x 64 x 64)
// and inference (flows + scores) of 1024^2 images through the three-level pyramid
// (64^2 + 32^2 + 16^2 = 5376 vectors per image), and the backbone on the GPU: ResNet-18 to layer3
// (stride 16) on the image pyramid 1024^2, 512^2, 256^2, which gives exactly those three maps (with
// 256 channels where the paper's EfficientNet stage has 200; random weights, which do not change
// the speed). Prints readable lines and one JSON line
// ("BENCH_GPU_JSON {...}") for scripts/gpu_check.sh.
//
//   bench_gpu [--steps S] [--batches B] [--images-per-batch I] [--quick]
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <hgad/backbone/resnet.hpp>
#include <hgad/cuda/cuda_level.cuh>
#include <hgad/cuda/cuda_resnet.cuh>
#include <hgad/flow/positional_encoding.hpp>

namespace {

using Clock = std::chrono::steady_clock;
using hgad::Index;

struct Args {
  int steps = 10;
  int batches = 10;
  Index images_per_batch = 8;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    if (s == "--quick") {
      a.steps = 3;
      a.batches = 3;
    } else if (s == "--steps" && i + 1 < argc) {
      a.steps = std::atoi(argv[++i]);
    } else if (s == "--batches" && i + 1 < argc) {
      a.batches = std::atoi(argv[++i]);
    } else if (s == "--images-per-batch" && i + 1 < argc) {
      a.images_per_batch = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: bench_gpu [--steps S] [--batches B] [--images-per-batch I] [--quick]\n");
      std::exit(2);
    }
  }
  return a;
}

double device_used_gib() {
  std::size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) != cudaSuccess) return -1;
  return double(total - free) / double(1 << 30);
}

/// One level of the paper's configuration: flow + prior on the CPU, then on the GPU.
struct Level {
  Index h, w;
  std::unique_ptr<hgad::cuda::CudaLevel<float>> gpu;
  hgad::Tensor<float> pos;  // (h w, P) on the GPU
};

Level make_level(Index h, Index w, std::uint64_t seed, const std::shared_ptr<hgad::cuda::CudaBackend<float>>& backend) {
  const Index D = 200, P = 256, blocks = 12, K = 15, M = 10;  // docs/algorithm.md §2.1, §3.1 (MVTec K)
  hgad::Rng rng(seed);
  hgad::SequenceFlow<float> flow(D, P, blocks, hgad::AllInOneOptions::hgad(), rng);
  hgad::GaussianMixturePrior<float> prior(K, M, D, rng);
  Level level{h, w, std::make_unique<hgad::cuda::CudaLevel<float>>(flow, prior, backend),
              hgad::positional_encoding_2d<float>(P, h, w).to(backend)};
  return level;
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  if (!hgad::cuda::device_available()) {
    std::printf("bench_gpu: no CUDA device (%s); nothing measured\n", hgad::cuda::device_description().c_str());
    std::printf("BENCH_GPU_JSON {\"device\": null}\n");
    return 0;
  }
  const std::string device = hgad::cuda::device_description();
  std::printf("device: %s\n", device.c_str());
  auto backend = hgad::cuda::make_cuda_backend<float>();
  hgad::cuda::DeviceAllocator& allocator = backend->allocator();

  // ---- Training step, level 0 -----------------------------------------------------------------
  const Index B = 8, h0 = 64, w0 = 64, N = B * h0 * w0;  // 8 images of 64 x 64 (docs/algorithm.md §4)
  Level level0 = make_level(h0, w0, 0, backend);
  hgad::Rng rng(1);
  hgad::Tensor<float> x = hgad::Tensor<float>::randn({N, 200}, rng).to(backend);
  std::vector<std::int64_t> labels(static_cast<std::size_t>(N));
  for (Index n = 0; n < N; ++n) labels[static_cast<std::size_t>(n)] = (n / (h0 * w0)) % 15;
  level0.gpu->set_lr(2e-4);
  allocator.reset_peak();
  for (int i = 0; i < 2; ++i) level0.gpu->train_step(x, level0.pos, labels, 2);  // warm-up
  backend->synchronize();
  const std::size_t mallocs_before = allocator.n_device_allocations();
  auto t0 = Clock::now();
  float loss = 0;
  for (int i = 0; i < args.steps; ++i) loss = level0.gpu->train_step(x, level0.pos, labels, 2).total;
  backend->synchronize();
  const double step_s = seconds_since(t0) / args.steps;
  const std::size_t mallocs_in_loop = allocator.n_device_allocations() - mallocs_before;
  const double train_peak_gib = double(allocator.peak_bytes_in_use()) / double(1 << 30);
  const double train_used_gib = device_used_gib();
  const double gemm_flops = level0.gpu->train_step_gemm_flops(N, h0 * w0);
  const double dense_flops = 3.0 * level0.gpu->dense_forward_flops_per_row() * double(N);
  std::printf("train step, level 0 (N = %lld, stage 2): %.3f ms, %.0f vectors/s, %.1f TFLOP/s executed "
              "(%.2f TFLOP per step), %.1f TFLOP/s dense-equivalent (3 x forward of PyTorch's "
              "FLOPs), loss %.4f\n",
              static_cast<long long>(N), step_s * 1e3, double(N) / step_s, gemm_flops / step_s / 1e12,
              gemm_flops / 1e12, dense_flops / step_s / 1e12, double(loss));
  std::printf("train step memory: allocator peak %.2f GiB, device in use %.2f GiB, cudaMalloc calls in "
              "the timed loop %zu\n",
              train_peak_gib, train_used_gib, mallocs_in_loop);

  // TF32 tensor cores for the GEMMs (for information; the parity tests use full float32).
  backend->set_allow_tf32(true);
  level0.gpu->train_step(x, level0.pos, labels, 2);
  backend->synchronize();
  t0 = Clock::now();
  for (int i = 0; i < args.steps; ++i) level0.gpu->train_step(x, level0.pos, labels, 2);
  backend->synchronize();
  const double step_tf32_s = seconds_since(t0) / args.steps;
  backend->set_allow_tf32(false);
  std::printf("train step with TF32 GEMMs: %.3f ms, %.0f vectors/s\n", step_tf32_s * 1e3, double(N) / step_tf32_s);
  x = hgad::Tensor<float>();

  // ---- Inference: three levels, flows + scores ------------------------------------------------
  const Index I = args.images_per_batch;
  std::vector<Level> levels;
  levels.push_back(std::move(level0));
  levels.push_back(make_level(32, 32, 100, backend));
  levels.push_back(make_level(16, 16, 200, backend));
  std::vector<hgad::Tensor<float>> features;
  std::vector<std::vector<std::int64_t>> level_labels;
  Index vectors_per_image = 0;
  for (const Level& l : levels) {
    const Index n = I * l.h * l.w;
    vectors_per_image += l.h * l.w;
    features.push_back(hgad::Tensor<float>::randn({n, 200}, rng).to(backend));
    level_labels.emplace_back(static_cast<std::size_t>(n), 3);  // the test class's ground truth (§5)
  }
  double infer_flops = 0;
  for (std::size_t l = 0; l < levels.size(); ++l)
    infer_flops += levels[l].gpu->forward_gemm_flops(features[l].rows(), levels[l].h * levels[l].w);
  allocator.reset_peak();
  const auto infer = [&]() {
    for (std::size_t l = 0; l < levels.size(); ++l) {
      auto scores = levels[l].gpu->score(features[l], levels[l].pos, level_labels[l]);
      (void)scores;
    }
    backend->synchronize();
  };
  infer();
  t0 = Clock::now();
  for (int i = 0; i < args.batches; ++i) infer();
  const double batch_s = seconds_since(t0) / args.batches;
  const double images_per_s = double(I) / batch_s;
  const double infer_peak_gib = double(allocator.peak_bytes_in_use()) / double(1 << 30);
  std::printf("inference (flows + scores, 3 levels, %lld vectors per 1024^2 image, %lld images per batch): "
              "%.3f ms per batch, %.1f images/s, %.0f vectors/s, %.1f TFLOP/s executed, allocator peak %.2f GiB\n",
              static_cast<long long>(vectors_per_image), static_cast<long long>(I), batch_s * 1e3, images_per_s,
              images_per_s * double(vectors_per_image), infer_flops / batch_s / 1e12, infer_peak_gib);
  levels.clear();
  features.clear();

  // ---- Backbone: ResNet-18 to layer3 on the three-level image pyramid ------------------------
  const hgad::ResNetArch arch = hgad::ResNetArch::resnet18;
  const hgad::ResNetStage stage = hgad::ResNetStage::layer3;
  hgad::Rng weight_rng(5);
  const auto weights = hgad::ResNet<float>::random_weights(arch, stage, weight_rng);
  const hgad::ResNet<float> flop_counter(arch, weights, stage);
  hgad::cuda::CudaResNet<float> net(arch, weights, stage, hgad::cuda::CudaBackboneExec<float>(backend));
  std::vector<hgad::Tensor<float>> pyramid;
  double backbone_flops = 0;
  for (Index size : {Index(1024), Index(512), Index(256)}) {
    pyramid.push_back(hgad::Tensor<float>::randn({I, 3, size, size}, rng).to(backend));
    backbone_flops += double(I) * double(flop_counter.flops(size, size, stage));
  }
  const auto backbone = [&]() {
    for (const auto& images : pyramid) {
      auto maps = net.forward(images, {stage});
      (void)maps;
    }
    backend->synchronize();
  };
  backbone();
  allocator.reset_peak();
  t0 = Clock::now();
  for (int i = 0; i < args.batches; ++i) backbone();
  const double backbone_s = seconds_since(t0) / args.batches;
  const double backbone_images_per_s = double(I) / backbone_s;
  const double backbone_peak_gib = double(allocator.peak_bytes_in_use()) / double(1 << 30);
  // Images in, maps out: the backbone and the flows + scores run one after the other per batch.
  const double end_to_end_images_per_s = double(I) / (backbone_s + batch_s);
  std::printf("backbone (ResNet-18 to layer3 on 1024^2, 512^2, 256^2, %lld images per batch): %.3f ms per batch, "
              "%.1f images/s, %.1f TFLOP/s, allocator peak %.2f GiB\n",
              static_cast<long long>(I), backbone_s * 1e3, backbone_images_per_s, backbone_flops / backbone_s / 1e12,
              backbone_peak_gib);
  std::printf("end to end (backbone + flows + scores): %.1f images/s\n", end_to_end_images_per_s);

  std::printf(
      "BENCH_GPU_JSON {\"device\": \"%s\", \"train_N\": %lld, \"train_ms\": %.4f, \"train_vectors_per_s\": %.1f, "
      "\"train_tflops_executed\": %.3f, \"train_tflops_dense_equivalent\": %.3f, \"train_tf32_ms\": %.4f, "
      "\"train_peak_gib\": %.3f, \"train_device_used_gib\": %.3f, \"train_mallocs_in_loop\": %zu, "
      "\"infer_images_per_batch\": %lld, \"infer_ms_per_batch\": %.4f, \"infer_images_per_s\": %.2f, "
      "\"infer_vectors_per_s\": %.1f, \"infer_tflops_executed\": %.3f, \"infer_peak_gib\": %.3f, "
      "\"backbone\": true, \"backbone_ms_per_batch\": %.4f, \"backbone_images_per_s\": %.2f, "
      "\"backbone_tflops\": %.3f, \"backbone_peak_gib\": %.3f, \"end_to_end_images_per_s\": %.2f}\n",
      device.c_str(), static_cast<long long>(N), step_s * 1e3, double(N) / step_s, gemm_flops / step_s / 1e12,
      dense_flops / step_s / 1e12, step_tf32_s * 1e3, train_peak_gib, train_used_gib, mallocs_in_loop,
      static_cast<long long>(I), batch_s * 1e3, images_per_s, images_per_s * double(vectors_per_image),
      infer_flops / batch_s / 1e12, infer_peak_gib, backbone_s * 1e3, backbone_images_per_s,
      backbone_flops / backbone_s / 1e12, backbone_peak_gib, end_to_end_images_per_s);
  return 0;
}
