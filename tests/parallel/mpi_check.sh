#!/bin/sh
# The Open MPI tests of data-parallel training (tests/parallel/CMakeLists.txt):
#   mpi_check.sh HGAD_MPI_FIT MPIEXEC
# 1. `mpirun -np 2` trains the model of one process (hgad_mpi_fit compare);
# 2. a rank that dies ends the job, with mpirun's message naming it, and leaves the last periodic
#    checkpoint loadable.
set -u
exe=$1
mpiexec=$2
flags="--oversubscribe"
if [ "$(id -u)" = 0 ]; then
  flags="$flags --allow-run-as-root"
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

"$mpiexec" $flags -np 2 "$exe" compare || { echo "FAILED: mpirun -np 2 compare"; exit 1; }

timeout 120 "$mpiexec" $flags -np 2 "$exe" die "$dir/run.checkpoint" > "$dir/log" 2>&1
status=$?
cat "$dir/log"
[ "$status" != 0 ] || { echo "FAILED: the job whose rank 1 died ended with status 0"; exit 1; }
[ "$status" != 124 ] || { echo "FAILED: the job whose rank 1 died did not end within 120 s"; exit 1; }
grep -q "rank 1" "$dir/log" || { echo "FAILED: no message names the dead rank 1"; exit 1; }
"$exe" check "$dir/run.checkpoint" || { echo "FAILED: the last checkpoint does not load"; exit 1; }
ls "$dir" | grep -q '\.tmp\.' && { echo "FAILED: a temporary file was left: $(ls "$dir")"; exit 1; }
echo "mpi_check: passed"
