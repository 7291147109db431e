#!/usr/bin/env bash
# Benchmarks of the cluster backend under Open MPI, each figure a median of
# 15 samples, the floor measured in the same session: run after
# scripts/cluster-tests.sh has installed the MPI stack.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
MPICC=mpicc.openmpi cargo build -q --release -p xme-mpi --features cluster --example cluster_bench
MPICC=mpicc.openmpi cargo build -q --release --features cluster --example mpi_pi
bench=target/release/examples/cluster_bench
tcp=(--mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include lo)
echo "== shared memory, 2 ranks"
mpirun.openmpi -n 2 "$bench" raw
mpirun.openmpi -n 2 "$bench" xme
echo "== TCP on loopback, 2 ranks"
mpirun.openmpi -n 2 "${tcp[@]}" "$bench" raw
mpirun.openmpi -n 2 "${tcp[@]}" "$bench" xme
echo "== mpi_pi, 10^8 samples (compute time, start-up excluded), 5 runs each"
for n in 3 1; do
  for _ in 1 2 3 4 5; do
    mpirun.openmpi -n "$n" target/release/examples/mpi_pi | grep "Time usage"
  done | awk -v n="$n" '{print $3}' | sort -n | awk -v n="$n" '{a[NR]=$1} END {print "mpi_pi -n " n ": median " a[int((NR+1)/2)] " s"}'
done
