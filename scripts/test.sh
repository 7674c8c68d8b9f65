#!/usr/bin/env bash
# The one test command: installs what is missing from Debian's packages, configures a Release build
# with tests, builds with every core and runs ctest. Exits non-zero on any failure.
#
#   scripts/test.sh              the normal suite (and the CUDA build when nvcc is present)
#   scripts/test.sh --sanitize   the suite under AddressSanitizer + UndefinedBehaviorSanitizer
#   scripts/test.sh --tsan       the suite under ThreadSanitizer
set -euo pipefail
cd "$(dirname "$0")/.."

mode=release
case "${1:-}" in
  --sanitize) mode=asan ;;
  --tsan) mode=tsan ;;
  "") ;;
  *) echo "usage: scripts/test.sh [--sanitize|--tsan]" >&2; exit 2 ;;
esac

packages=(build-essential cmake libeigen3-dev catch2 libstb-dev libbenchmark-dev nlohmann-json3-dev
          clang libclang-rt-14-dev libomp-14-dev libopenmpi-dev openmpi-bin)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "== installing: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

[ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"
export OMP_WAIT_POLICY=PASSIVE
jobs=$(nproc 2>/dev/null || echo 2)

# The test program's files are compiled eight to a translation unit (HGAD_UNITY_TESTS): the suite
# builds four times faster under the sanitizers, nearly three times in Release (tests/CMakeLists.txt).
args=(-DCMAKE_BUILD_TYPE=Release -DHGAD_BUILD_TESTS=ON -DHGAD_BUILD_EXAMPLES=ON -DHGAD_UNITY_TESTS=ON)
# The CUDA code is compiled for one architecture here: the check is that it compiles; a user's build
# gets the default pair (see cmake/hgadCuda.cmake).
cuda_arch=(-DCMAKE_CUDA_ARCHITECTURES=90)
# The sanitizer builds compile the unit-test program alone, with clang at -O0 and line tables: clang
# compiles the instrumented template-heavy tests about five times faster than at -O1 (gcc or clang),
# and the suite still runs in a few minutes under the sanitizers.
sanitizer_args=(-DHGAD_ENABLE_CUDA=OFF -DHGAD_BUILD_EXAMPLES=OFF -DCMAKE_C_COMPILER=clang
                -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-O0 -g1")
case $mode in
  release) build=build/release; args+=(-DHGAD_BUILD_BENCHMARKS=ON "${cuda_arch[@]}") ;;
  asan) build=build/asan; args+=(-DHGAD_SANITIZE=ON "${sanitizer_args[@]}") ;;
  tsan) build=build/tsan; args+=(-DHGAD_TSAN=ON "${sanitizer_args[@]}") ;;
esac
targets=()
ctest_filter=()
if [ "$mode" != release ]; then
  targets=(--target hgad_tests)
  # The sanitizer builds make the test program alone: the build checks, fuzzers, the command-line
  # program and the MPI programs are the release run's.
  ctest_filter=(-E "^(build\\.|fuzz|cli\\.|parallel\\.)")
fi

echo "== configure ($mode) in $build"
cmake -S . -B "$build" "${args[@]}"
echo "== build"
cmake --build "$build" -j "$jobs" "${targets[@]}"
echo "== test"
if [ "$mode" = tsan ]; then
  # libomp is not built with ThreadSanitizer: without ignore_noninstrumented_modules its internal
  # synchronisation shows up as false races.
  export TSAN_OPTIONS="halt_on_error=1 ignore_noninstrumented_modules=1 ${TSAN_OPTIONS:-}"
fi
if [ "$mode" = asan ]; then
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1 ${ASAN_OPTIONS:-}"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1 ${UBSAN_OPTIONS:-}"
fi
ctest --test-dir "$build" --output-on-failure -j "$jobs" "${ctest_filter[@]}"
