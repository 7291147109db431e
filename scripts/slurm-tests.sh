#!/usr/bin/env bash
# The cluster backend under a real Slurm (munge, slurmctld, two slurmd on
# this host: scripts/slurm-cluster.sh): the suite and both examples under
# `srun --mpi=pmix` (Open MPI) and `srun --mpi=pmi2` (MPICH) across the two
# nodes; a dead rank, a hung rank and tasks without PMI under srun without
# -K; an sbatch script. Every launch runs under `timeout`; the daemons are
# stopped by their recorded pids. Run by .ci/run after
# scripts/cluster-tests.sh (which installs the MPI stacks; installed here
# too if missing). Needs root. Ends with "slurm: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

# shellcheck source=cluster-lib.sh
. scripts/cluster-lib.sh

need=()
command -v mpicc.openmpi >/dev/null || need+=(openmpi-bin libopenmpi-dev)
command -v mpicc.mpich >/dev/null || need+=(mpich libmpich-dev)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# ---- builds: each example against each MPI library ----------------------------
MPICC=mpicc.openmpi cargo build -q --release -p xme-mpi --features cluster --example cluster_check
MPICC=mpicc.openmpi cargo build -q --release --features cluster --example mpi_pi --example mpi_triangle
MPICC=mpicc.mpich cargo build -q --release -p xme-mpi --features cluster --example cluster_check \
  --target-dir target/mpich
MPICC=mpicc.mpich cargo build -q --release --features cluster --example mpi_pi --example mpi_triangle \
  --target-dir target/mpich
ompi=target/release/examples
mpich=target/mpich/release/examples

# ---- Slurm ----------------------------------------------------------------------
base=$(mktemp -d /tmp/xme-slurm.XXXXXX)
cleanup() {
  bash scripts/slurm-cluster.sh stop "$base" || true
  rm -rf "$base"
}
trap cleanup EXIT
bash scripts/slurm-cluster.sh start "$base"
export SLURM_CONF=$base/slurm.conf
# The jobs run in a folder every simulated node sees (they all are this host).
jobs=$base/jobs
mkdir -p "$jobs"

srun_pmix=(srun --mpi=pmix -N 2)
srun_pmi2=(srun --mpi=pmi2 -N 2)

# ---- the suite and the examples, across both nodes ---------------------------------
expect_ok "suite, Open MPI, srun --mpi=pmix -N 2 -n 3" "passed, 0 failed" \
  "${srun_pmix[@]}" -n 3 "$ompi/cluster_check"
expect_ok "suite, Open MPI, srun --mpi=pmix -N 2 -n 4 (2 ranks a node)" "passed, 0 failed" \
  "${srun_pmix[@]}" -n 4 "$ompi/cluster_check"
expect_ok "suite, MPICH, srun --mpi=pmi2 -N 2 -n 3" "passed, 0 failed" \
  "${srun_pmi2[@]}" -n 3 "$mpich/cluster_check"
expect_ok "mpi_triangle, Open MPI, srun --mpi=pmix" "right-angled: true" \
  "${srun_pmix[@]}" -n 3 "$ompi/mpi_triangle"
expect_ok "mpi_pi, Open MPI, srun --mpi=pmix" "pi: 3.14" \
  "${srun_pmix[@]}" -n 3 "$ompi/mpi_pi" -n 10000000
expect_ok "mpi_triangle, MPICH, srun --mpi=pmi2" "right-angled: true" \
  "${srun_pmi2[@]}" -n 3 "$mpich/mpi_triangle"
expect_ok "mpi_pi, MPICH, srun --mpi=pmi2" "pi: 3.14" \
  "${srun_pmi2[@]}" -n 3 "$mpich/mpi_pi" -n 10000000

# ---- a dead rank, a hung rank: srun without -K ----------------------------------
# Detection bound 3 s (the launcher must end within bound + 5 s); once with
# the default bound, 10 s.
expect_failure "a rank SIGKILLed at its call 50, Open MPI, srun (no -K)" 8 "dead-rank ok" \
  "${srun_pmix[@]}" -n 3 "$ompi/cluster_check" dead-rank 3
expect_failure "the same, default detection bound (10 s)" 15 "dead-rank ok" \
  "${srun_pmix[@]}" -n 3 "$ompi/cluster_check" dead-rank
expect_failure "a rank SIGKILLed at its call 50, MPICH, srun (no -K)" 8 "dead-rank ok" \
  "${srun_pmi2[@]}" -n 3 "$mpich/cluster_check" dead-rank 3
expect_failure "a unit that never returns and a stopped rank, Open MPI, srun (no -K)" 8 "hung-rank ok" \
  "${srun_pmix[@]}" -n 4 "$ompi/cluster_check" hung-rank 3
expect_failure "a unit that never returns and a stopped rank, MPICH, srun (no -K)" 8 "hung-rank ok" \
  "${srun_pmi2[@]}" -n 4 "$mpich/cluster_check" hung-rank 3
# A rank that dies before MPI_Init leaves the others in its fence: their
# start watchdog (3 x the bound + 5 s; bound 1 s here) ends them.
expect_failure "a rank dead before MPI_Init, Open MPI, srun (no -K)" 13 "did not start within" \
  "${srun_pmix[@]}" -n 3 "$ompi/cluster_check" dies-at-start 1
expect_failure "a rank dead before MPI_Init, MPICH, srun (no -K)" 13 "did not start within" \
  "${srun_pmi2[@]}" -n 3 "$mpich/cluster_check" dies-at-start 1

# ---- tasks without PMI: an error on every task, naming the --mpi= to use ------------
# `srun --mpi=none` (Slurm's default where MpiDefault is not set); MPICH
# under PMIx, which it does not speak (it would run N singletons).
no_pmi() {
  local name=$1 flag=$2 out n
  shift 2
  out=$(timeout 60 "$@" 2>&1) && { echo "$out" | tail; bad "$name: the job succeeded"; return; }
  n=$(grep -c -- "one of 3 tasks of an srun step.*srun $flag" <<<"$out" || true)
  if [ "$n" -eq 3 ] && ! grep -q "passed, 0 failed" <<<"$out" && none_left; then
    ok "$name (every task: use srun $flag)"
  else
    echo "$out" | tail -20
    bad "$name: $n of 3 tasks named srun $flag"
  fi
}
no_pmi "Open MPI under srun --mpi=none" --mpi=pmix srun --mpi=none -N 2 -n 3 "$ompi/cluster_check"
no_pmi "MPICH under srun --mpi=none" --mpi=pmi2 srun --mpi=none -N 2 -n 3 "$mpich/cluster_check"
no_pmi "MPICH under srun --mpi=pmix" --mpi=pmi2 srun --mpi=pmix -N 2 -n 3 "$mpich/cluster_check"

# ---- an sbatch script: its own process is a normal (forked) program; srun -----
# in it starts the ranks (the README's script).
cat >"$jobs/job.sh" <<EOF
#!/bin/bash
#SBATCH --nodes=2
#SBATCH --ntasks=3
set -e
echo "batch process: \$($PWD/$ompi/cluster_check)"
srun --mpi=pmix $PWD/$ompi/cluster_check
EOF
if timeout 120 sbatch --wait -o "$jobs/job.out" "$jobs/job.sh" >/dev/null &&
  [ "$(grep -c "passed, 0 failed" "$jobs/job.out")" -eq 2 ] &&
  grep -q "batch process: cluster_check" "$jobs/job.out" && none_left; then
  ok "sbatch -N 2 -n 3: the script's process forks its pool, srun in it starts the ranks"
else
  cat "$jobs/job.out" 2>/dev/null | tail -20
  bad "sbatch"
fi

echo "slurm: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
