#!/usr/bin/env bash
# The GPU check: builds the CUDA tests, the GPU benchmark and the hgad program (with --device cuda)
# for this machine's GPU, runs the [cuda] tests (HgadModel on the GPU against the CPU among them,
# and the [nccl] cases where NCCL is found), bench_gpu, the PyTorch comparison
# (benchmarks/torch_gpu_step.py) and the paper-scale GPU demo (scripts/gpu_demo.sh on the compact
# copy of industrial-mini), and prints a summary. Logs go to
# $OUT when it is set (else build-gpu-check/logs). Budget: under 9 minutes on one H200
# (HGAD_GPU_CHECK_BUDGET seconds, default 535); every phase has its own timeout and the summary is
# printed whatever failed. Exit status 0 only when everything built, every test passed, both
# benchmarks produced numbers and the demo printed its table.
#
#   scripts/gpu_check.sh --prepare   on a machine with the Debian packages (libeigen3-dev, catch2,
#                                    libstb-dev): copies the header-only dependencies into
#                                    build-gpu-deps/ and makes the compact data of the demo in
#                                    build-gpu-data/ (scripts/make_gpu_data.sh)
#   scripts/gpu_check.sh             on the GPU machine (carry build-gpu-deps and build-gpu-data)
#
# The sources are compiled with nvcc directly rather than through CMake: the GPU image has nvcc
# but not Eigen's and Catch2's CMake packages, and only a few translation units are needed.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
deps="$root/build-gpu-deps"

if [ "${1:-}" = "--prepare" ]; then
  rm -rf "$deps"
  mkdir -p "$deps/eigen3" "$deps/catch2"
  cp -r /usr/include/eigen3/Eigen "$deps/eigen3/" || { echo "no /usr/include/eigen3/Eigen"; exit 1; }
  cp /usr/include/catch2/catch.hpp "$deps/catch2/" || { echo "no /usr/include/catch2/catch.hpp"; exit 1; }
  mkdir -p "$deps/stb"
  cp /usr/include/stb/stb_image.h /usr/include/stb/stb_image_write.h "$deps/stb/" || { echo "no stb headers"; exit 1; }
  echo "prepared $deps ($(du -sh "$deps" | cut -f1))"
  bash scripts/make_gpu_data.sh || exit 1
  echo "carry build-gpu-deps and build-gpu-data to the GPU machine"
  exit 0
fi

start=$(date +%s)
budget=${HGAD_GPU_CHECK_BUDGET:-535}
deadline=$((start + budget))
logs=${OUT:-$root/build-gpu-check/logs}
mkdir -p "$logs"
build="$root/build-gpu-check"
mkdir -p "$build"
exec > >(tee "$logs/gpu_check.log") 2>&1

remaining() { echo $((deadline - $(date +%s))); }
# Seconds for a phase: its cap, or what is left of the budget minus `reserve` for the later phases.
phase_time() {
  local cap=$1 reserve=$2 left
  left=$(($(remaining) - reserve))
  if [ "$left" -lt "$cap" ]; then cap=$left; fi
  if [ "$cap" -lt 10 ]; then cap=10; fi
  echo "$cap"
}

[ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"
export OMP_WAIT_POLICY=PASSIVE
build_status="not run"; tests_status="not run"; bench_status="not run"; torch_status="not run"; demo_status="not run"

echo "== gpu_check $(date -u +%FT%TZ) in $root"
nvidia-smi -L 2>&1 | head -4 || true
nvcc --version 2>&1 | tail -2 || true
echo "host compiler: $(c++ --version 2>&1 | head -1)"
nproc_=$(nproc 2>/dev/null || echo 4)

# ---- dependencies --------------------------------------------------------------------------------
eigen=""
for d in "${HGAD_EIGEN_DIR:-}" "$deps/eigen3" /usr/include/eigen3 /usr/local/include/eigen3; do
  if [ -n "$d" ] && [ -f "$d/Eigen/Core" ]; then eigen=$d; break; fi
done
catch=""
for d in "${HGAD_CATCH2_DIR:-}" "$deps" /usr/include /usr/local/include; do
  if [ -n "$d" ] && [ -f "$d/catch2/catch.hpp" ]; then catch=$d; break; fi
done
stb=""
for d in "${HGAD_STB_DIR:-}" "$deps/stb" /usr/include/stb; do
  if [ -n "$d" ] && [ -f "$d/stb_image.h" ]; then stb=$d; break; fi
done
echo "Eigen: ${eigen:-MISSING}; Catch2: ${catch:-MISSING}; stb: ${stb:-MISSING}"
# NCCL (optional): the CUDA toolkit's, or the one PyTorch's wheels bring; with it the [nccl] tests
# run and the hgad program sums a data-parallel training's gradients on the GPUs.
nccl_inc=""; nccl_lib=""
nccl_wheel=$(python3 -c "import nvidia.nccl as m; print(list(m.__path__)[0])" 2>/dev/null || true)
for d in "${HGAD_NCCL_DIR:-}" /usr/local/cuda "$nccl_wheel" /usr; do
  [ -n "$d" ] && [ -f "$d/include/nccl.h" ] || continue
  for l in "$d/lib/libnccl.so" "$d/lib/libnccl.so.2" "$d/lib64/libnccl.so" "$d/lib/x86_64-linux-gnu/libnccl.so"; do
    if [ -f "$l" ]; then nccl_inc="$d/include"; nccl_lib="$l"; break 2; fi
  done
done
echo "NCCL: ${nccl_lib:-not found (the [nccl] tests are not built)}"

# ---- build ---------------------------------------------------------------------------------------
cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
case "$cc" in ''|*[!0-9]*) cc=90 ;; esac
arch="-gencode arch=compute_${cc},code=sm_${cc}"
flags=(-std=c++17 -O3 $arch -DEIGEN_NO_CUDA -Xcompiler=-fopenmp,-O3,-Wno-unknown-pragmas
       -I"$root/include" -I"$root/tests" -I"$eigen" -I"$catch"
       -DHGAD_SHARED_DIR="\"$root/../shared\"" -DHGAD_SOURCE_DIR="\"$root\"")
tests_bin="$build/hgad_cuda_tests"
bench_bin="$build/bench_gpu"
hgad_bin="$build/hgad"
if [ -z "$eigen" ] || [ -z "$catch" ] || [ -z "$stb" ]; then
  build_status="FAILED (missing Eigen, Catch2 or stb headers: run scripts/gpu_check.sh --prepare where the Debian packages are, and carry build-gpu-deps)"
else
  echo "== build for sm_${cc} (timeout $(phase_time 300 150) s)"
  t0=$(date +%s)
  tests=(tests/cuda/main.cu tests/cuda/backend.test.cu tests/cuda/level.test.cu tests/cuda/backbone.test.cu
         tests/cuda/model.test.cu)
  nccl_flags=(); nccl_link=()
  if [ -n "$nccl_lib" ]; then
    tests+=(tests/cuda/nccl.test.cu)
    nccl_flags=(-DHGAD_HAVE_NCCL=1 -I"$nccl_inc")
    nccl_link=("$nccl_lib" -Xlinker -rpath="$(dirname "$nccl_lib")")
  fi
  sources=("${tests[@]}" benchmarks/bench_gpu.cu apps/cuda_devices.cu apps/hgad.cpp)
  pids=()
  for s in "${sources[@]}"; do
    name=$(basename "$s"); name=${name%.*}
    obj="$build/$name.o"
    if [[ "$s" == *.cpp ]]; then  # host code: the host compiler, as a CMake build would
      timeout "$(phase_time 300 150)" c++ -std=c++17 -O3 -march=native -fopenmp -Wno-unknown-pragmas \
        -DHGAD_CLI_CUDA=1 -I"$root/include" -I"$eigen" -I"$stb" -c "$s" -o "$obj" > "$build/$name.log" 2>&1 &
    else  # the program's .cu file matches its host code's instruction set (Eigen's alignment)
      extra=()
      [[ "$s" == apps/* ]] && extra=(-Xcompiler=-march=native)
      timeout "$(phase_time 300 150)" nvcc "${flags[@]}" "${nccl_flags[@]}" "${extra[@]}" -c "$s" -o "$obj" > "$build/$name.log" 2>&1 &
    fi
    pids+=($!)
  done
  ok=1
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then ok=0; echo "compile FAILED: ${sources[$i]}"; fi
  done
  cat "$build"/*.log > "$logs/build.log" 2>/dev/null
  if [ "$ok" = 1 ]; then
    test_objs=()
    for s in "${tests[@]}"; do name=$(basename "$s"); test_objs+=("$build/${name%.*}.o"); done
    nvcc $arch "${test_objs[@]}" -o "$tests_bin" -lcublas "${nccl_link[@]}" -Xcompiler=-fopenmp >> "$logs/build.log" 2>&1 || ok=0
    nvcc $arch "$build/bench_gpu.o" -o "$bench_bin" -lcublas -Xcompiler=-fopenmp >> "$logs/build.log" 2>&1 || ok=0
    nvcc $arch "$build/hgad.o" "$build/cuda_devices.o" -o "$hgad_bin" -lcublas "${nccl_link[@]}" -Xcompiler=-fopenmp >> "$logs/build.log" 2>&1 || ok=0
  fi
  if [ "$ok" = 1 ]; then
    build_status="ok ($(( $(date +%s) - t0 )) s)"
  else
    build_status="FAILED (see build.log)"
    tail -40 "$logs/build.log"
  fi
fi
echo "build: $build_status"

# ---- [cuda] tests --------------------------------------------------------------------------------
if [ -x "$tests_bin" ] && [[ "$build_status" == ok* ]]; then
  t=$(phase_time 150 280)
  echo "== [cuda] tests (timeout $t s)"
  HGAD_PARITY_VERBOSE=1 OMP_NUM_THREADS=$nproc_ timeout "$t" "$tests_bin" "[cuda]" --durations yes > "$logs/tests.log" 2>&1
  rc=$?
  grep -E "^(All tests passed|test cases:|assertions:)" "$logs/tests.log" || true
  if [ $rc -eq 0 ] && grep -q "^All tests passed" "$logs/tests.log"; then
    tests_status="passed: $(grep -E '^All tests passed' "$logs/tests.log")"
  elif [ $rc -eq 124 ]; then
    tests_status="TIMED OUT after $t s"
  else
    tests_status="FAILED (exit $rc): $(grep -E '^test cases:' "$logs/tests.log" | tail -1)"
    grep -B3 -A12 "FAILED:" "$logs/tests.log" | head -120
  fi
  grep -A3 "warning:" "$logs/tests.log" | grep -E "resynchronised|step [0-9]|peak device memory|skipped" | head -40 || true
fi
echo "tests: $tests_status"

# ---- benchmarks ----------------------------------------------------------------------------------
bench_json=""
if [ -x "$bench_bin" ]; then
  t=$(phase_time 60 220)
  echo "== bench_gpu (timeout $t s)"
  timeout "$t" "$bench_bin" > "$logs/bench.log" 2>&1
  rc=$?
  grep -v "^BENCH_GPU_JSON" "$logs/bench.log"
  bench_json=$(grep "^BENCH_GPU_JSON" "$logs/bench.log" | tail -1 | sed 's/^BENCH_GPU_JSON //')
  if [ $rc -eq 0 ] && [ -n "$bench_json" ]; then bench_status="ok"; else bench_status="FAILED (exit $rc)"; tail -20 "$logs/bench.log"; fi
fi
echo "bench_gpu: $bench_status"

torch_json=""
t=$(phase_time 60 160)
echo "== PyTorch eager float32 (timeout $t s)"
PYTHONUNBUFFERED=1 timeout "$t" python3 "$root/benchmarks/torch_gpu_step.py" > "$logs/torch.log" 2>&1
rc=$?
grep -v "^TORCH_GPU_JSON" "$logs/torch.log" | tail -20
torch_json=$(grep "^TORCH_GPU_JSON" "$logs/torch.log" | tail -1 | sed 's/^TORCH_GPU_JSON //')
if [ $rc -eq 0 ] && [ -n "$torch_json" ] && ! echo "$torch_json" | grep -q '"device": null'; then torch_status="ok"; else torch_status="FAILED (exit $rc)"; fi
echo "torch: $torch_status"

# ---- the paper-scale demo on the GPU ----------------------------------------------------------------
demo_data="$root/build-gpu-data"
demo_table=""
if [ -x "$hgad_bin" ] && [ -d "$demo_data/industrial-mini" ]; then
  t=$(phase_time 400 5)
  echo "== gpu_demo (timeout $t s, ${HGAD_GPU_DEMO_EPOCHS:-10} passes)"
  HGAD_GPU_DEMO_OUT="$build/demo" timeout "$t" bash scripts/gpu_demo.sh "$hgad_bin" "$demo_data/industrial-mini" \
    "$demo_data/resnet18-imagenet" "${HGAD_GPU_DEMO_EPOCHS:-10}" > "$logs/demo.log" 2>&1
  rc=$?
  # The progress bars redraw with carriage returns: keep the last state of each line.
  tr '\r' '\n' < "$logs/demo.log" | grep -v "^\s*$" | grep -vE "^(features|training|calibration|.* features|.* scoring) " | tail -40
  demo_table=$(tr '\r' '\n' < "$logs/demo.log" | grep -A12 -E "^class " | tail -13)
  if [ $rc -eq 0 ] && [ -n "$demo_table" ]; then demo_status="ok ($(grep -o 'training [0-9]* s, test [0-9]* s, [0-9]* passes' "$logs/demo.log"))";
  elif [ $rc -eq 124 ]; then demo_status="TIMED OUT after $t s"; else demo_status="FAILED (exit $rc)"; tail -20 "$logs/demo.log"; fi
elif [ ! -d "$demo_data/industrial-mini" ]; then
  demo_status="FAILED (no $demo_data: run scripts/gpu_check.sh --prepare and carry build-gpu-data)"
fi
echo "gpu_demo: $demo_status"

# ---- summary -------------------------------------------------------------------------------------
{
  echo "================ gpu_check summary ($(( $(date +%s) - start )) s) ================"
  echo "build:      $build_status"
  echo "tests:      $tests_status"
  echo "bench_gpu:  $bench_status"
  echo "torch:      $torch_status"
  echo "gpu_demo:   $demo_status"
  [ -n "$demo_table" ] && echo "$demo_table"
  BENCH="$bench_json" TORCH="$torch_json" python3 - <<'EOF' || echo "(no Python to format the numbers; raw: $bench_json / $torch_json)"
import json, os
def load(name):
    try:
        return json.loads(os.environ.get(name) or "null") or {}
    except ValueError:
        return {}
b, t = load("BENCH"), load("TORCH")
def f(d, k, fmt=".2f"):
    v = d.get(k)
    return format(v, fmt) if isinstance(v, (int, float)) else "n/a"
def ratio(x, y, k):
    a, c = x.get(k), y.get(k)
    return f"{a / c:.2f}x" if isinstance(a, (int, float)) and isinstance(c, (int, float)) and c > 0 else "n/a"
if b.get("device"):
    print(f"device:     {b['device']}")
    print(f"train step (level 0, N = {b.get('train_N')}): hgad {f(b, 'train_ms')} ms = {f(b, 'train_vectors_per_s', ',.0f')} vectors/s; "
          f"{f(b, 'train_tflops_executed', '.1f')} TFLOP/s executed, {f(b, 'train_tflops_dense_equivalent', '.1f')} TFLOP/s dense-equivalent; "
          f"peak {f(b, 'train_peak_gib')} GiB (allocator), {f(b, 'train_device_used_gib')} GiB (device); "
          f"cudaMalloc calls in the timed loop {b.get('train_mallocs_in_loop')}; with TF32 GEMMs {f(b, 'train_tf32_ms')} ms")
    print(f"inference (3 levels, 1024^2 images, flows + scores, no backbone): hgad {f(b, 'infer_images_per_s', '.1f')} images/s "
          f"({f(b, 'infer_vectors_per_s', ',.0f')} vectors/s, {f(b, 'infer_tflops_executed', '.1f')} TFLOP/s, peak {f(b, 'infer_peak_gib')} GiB)")
    if b.get("backbone"):
        print(f"backbone on the GPU (ResNet-18 to layer3 on the 1024^2/512^2/256^2 pyramid): {f(b, 'backbone_images_per_s', '.1f')} images/s, "
              f"{f(b, 'backbone_tflops', '.1f')} TFLOP/s, peak {f(b, 'backbone_peak_gib')} GiB; end to end (images in, scores out) "
              f"{f(b, 'end_to_end_images_per_s', '.1f')} images/s")
if t.get("device"):
    print(f"pytorch {t.get('torch')} eager float32: train {f(t, 'train_ms')} ms = {f(t, 'train_vectors_per_s', ',.0f')} vectors/s "
          f"(peak {f(t, 'train_peak_gib')} GiB); inference {f(t, 'infer_images_per_s', '.1f')} images/s (peak {f(t, 'infer_peak_gib')} GiB)")
if b.get("device") and t.get("device"):
    print(f"ratio hgad / pytorch: train {ratio(b, t, 'train_vectors_per_s')}, inference {ratio(b, t, 'infer_images_per_s')} (target >= 1.5x)")
EOF
} | tee "$logs/summary.txt"

if [[ "$build_status" == ok* && "$tests_status" == passed* && "$bench_status" == ok && "$torch_status" == ok &&
      "$demo_status" == ok* ]]; then
  exit 0
fi
exit 1
