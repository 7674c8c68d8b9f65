#!/usr/bin/env bash
# Fast inner loop while developing: compiles only the named test files against the headers (the
# Catch2 main is compiled once and cached) and runs them. The full suite is scripts/test.sh.
#   scripts/dev_test.sh tests/tensor.test.cpp [more.test.cpp ...] [-- catch2 arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/dev
mkdir -p "$out"
flags=(-std=c++17 -O2 -g -fopenmp -Wall -Wextra -Iinclude -Itests -I/usr/include/eigen3 -I/usr/include/stb
       -DHGAD_SHARED_DIR="\"$(cd .. && pwd)/shared\"" -DHGAD_SOURCE_DIR="\"$(pwd)\"" -DHGAD_HAVE_JSON=1)
[ -f "$out/main.o" ] || g++ "${flags[@]}" -c tests/main.cpp -o "$out/main.o"
sources=()
while (($#)) && [ "$1" != "--" ]; do sources+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
name=$(basename "${sources[0]}" .test.cpp)
g++ "${flags[@]}" "$out/main.o" "${sources[@]}" -o "$out/$name" ${HGAD_DEV_LIBS:-}
OMP_WAIT_POLICY=PASSIVE "$out/$name" "$@"
