#!/usr/bin/env bash
# The cluster backend under real MPI launchers: Open MPI over shared memory,
# over TCP, across two simulated hosts (network namespaces joined by a veth
# pair, started through an `ip netns exec` agent instead of ssh), and MPICH.
# Installs the MPI stacks it needs (Debian packages). Run by .ci/run; needs
# root (apt-get, ip netns). Ends with "cluster: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

# shellcheck source=cluster-lib.sh
. scripts/cluster-lib.sh

# ---- the MPI stacks -------------------------------------------------------
need=()
command -v mpirun.openmpi >/dev/null && command -v mpicc.openmpi >/dev/null ||
  need+=(openmpi-bin libopenmpi-dev)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v mpiexec.mpich >/dev/null && command -v mpicc.mpich >/dev/null ||
  need+=(mpich libmpich-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Open MPI refuses root unless told; more ranks than cores needs oversubscription.
ompi() {
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 \
    timeout -k 10 120 mpirun.openmpi "$@"
}

# ---- builds ---------------------------------------------------------------
# Both MPI libraries are installed: name the wrapper each build probes.
MPICC=mpicc.openmpi cargo clippy -q -p xme-mpi --features cluster --all-targets -- -D warnings
# docs.rs builds with every feature: the cluster docs must build clean too.
MPICC=mpicc.openmpi RUSTDOCFLAGS="-D warnings" cargo doc -q --workspace --all-features --no-deps
MPICC=mpicc.openmpi cargo build -q --release -p xme-mpi --features cluster --example cluster_check
MPICC=mpicc.openmpi cargo build -q --release --features cluster --example mpi_pi --example mpi_triangle
cargo build -q --release -p xme-mpi --example cluster_check --target-dir target/nocluster
MPICC=mpicc.mpich cargo build -q --release -p xme-mpi --features cluster --example cluster_check \
  --target-dir target/mpich
check=target/release/examples/cluster_check

# Runs a cluster_check command; passes when it says "N passed, 0 failed".
expect_pass() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1) && grep -q "passed, 0 failed" <<<"$out"; then
    ok "$name ($(grep -o '[0-9]* passed, 0 failed' <<<"$out"))"
  else
    echo "$out" | tail -20
    bad "$name"
  fi
}

# `mpirun ARGS…` must fail, and every one of `ranks` ranks must say `text`.
# Open MPI ends a job when one rank exits non-zero, possibly before the
# others print: so the job runs twice, once as is (it must fail), once with
# that abort off (and mpirun's own status then 0) to hear from every rank.
expect_refusal() {
  local name=$1 ranks=$2 text=$3 out n
  shift 3
  if out=$(ompi "$@" 2>&1); then
    echo "$out" | tail -20
    bad "$name: the job succeeded"
    return
  fi
  out=$(OMPI_MCA_orte_abort_on_non_zero_status=0 ompi "$@" 2>&1) || true
  n=$(grep -c -- "$text" <<<"$out" || true)
  if [ "$n" -eq "$ranks" ] && ! grep -q "passed, 0 failed" <<<"$out"; then
    ok "$name (the job failed; every rank: $text)"
  else
    echo "$out" | tail -20
    bad "$name: $n of $ranks ranks said \"$text\""
  fi
}

# ---- Open MPI, one host ---------------------------------------------------
expect_pass "Open MPI, shared memory, 3 ranks" ompi -n 3 "$check"
expect_pass "Open MPI, shared memory, 4 ranks on 2 cores" ompi -n 4 "$check"
expect_pass "Open MPI, TCP on loopback, 2 ranks" \
  ompi -n 2 --mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include lo "$check"
expect_refusal "a unit typed differently on ranks 1..2" 3 "units differ from rank 0" \
  -n 3 "$check" mismatch
expect_refusal "Mpi::new(3) in a job of 2 ranks" 2 "runs in an MPI job of 2 ranks" \
  -n 2 "$check" wrong-size
expect_refusal "a launcher without the cluster feature" 2 "without the \`cluster\` feature" \
  -n 2 target/nocluster/release/examples/cluster_check

out=$(ompi -n 3 target/release/examples/mpi_triangle 2>&1) || true
if grep -q "right-angled: true" <<<"$out"; then ok "mpi_triangle, 3 ranks"; else echo "$out"; bad "mpi_triangle"; fi
out=$(ompi -n 3 target/release/examples/mpi_pi -n 10000000 2>&1) || true
if grep -q "pi: 3.14" <<<"$out"; then ok "mpi_pi, 3 ranks"; else echo "$out"; bad "mpi_pi"; fi

# ---- a dead rank, a hung rank (detection bound 3 s: the launcher must end
# within bound + 5 s, leaving no process). A rank that dies makes mpirun and
# mpiexec end the job at once; a hung one is left to xme, which ends the job
# with MPI_Abort once rank 0's main returns.
mpirun=(env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  OMPI_MCA_rmaps_base_oversubscribe=1 mpirun.openmpi)
expect_failure "a rank SIGKILLed at its call 50, mpirun" 8 "" \
  "${mpirun[@]}" -n 3 "$check" dead-rank 3
expect_failure "a unit that never returns and a stopped rank, mpirun" 8 "hung-rank ok" \
  "${mpirun[@]}" -n 4 "$check" hung-rank 3
expect_failure "every slot held by dropped calls on a stopped rank, mpirun" 8 "dropped-slots ok" \
  "${mpirun[@]}" -n 3 "$check" dropped-slots 3
# What is checked here is close (its grace, the direct call's error, the
# survivor), said by rank 0 before the job ends. The job then ends with
# MPI_Abort, after which Open MPI 4.1.4's mpirun once hung until killed
# (130 s; it also crashes in PMIx_server_finalize now and then): its exit
# is not this check's subject, so it is given 30 s and not timed.
if out=$(timeout -k 5 30 "${mpirun[@]}" -n 3 "$check" close-direct 2>&1); grep -q "close-direct ok" <<<"$out"; then
  ok "close of a rank whose direct call never returns, mpirun ($(grep -o 'close returned after [0-9.]*s' <<<"$out" | head -1))"
else
  echo "$out" | tail -20
  bad "close of a rank whose direct call never returns, mpirun"
fi
# Over TCP a large message moves only when its sender calls MPI: a rank
# that replied 200 KB and went on into a 3 s unit must hold up no other.
if out=$(timeout -k 10 120 "${mpirun[@]}" -n 3 --mca pml ob1 --mca btl tcp,self \
  --mca btl_tcp_if_include lo "$check" big-reply 2>&1) && grep -q "big-reply ok" <<<"$out"; then
  ok "a busy rank's large reply over TCP holds up no other rank ($(grep -o 'worst.*' <<<"$out" | head -1))"
else
  echo "$out" | tail -20
  bad "a busy rank's large reply over TCP holds up no other rank"
fi

# ---- two hosts: network namespaces joined by a veth pair -------------------
ns_a=xmeci-a-$$
ns_b=xmeci-b-$$
agent=$(mktemp /tmp/xme-agent.XXXXXX)
cleanup() {
  ip netns del "$ns_a" 2>/dev/null || true
  ip netns del "$ns_b" 2>/dev/null || true
  rm -f "$agent"
}
trap cleanup EXIT
# The test hosts' own addresses, made and removed by this run.
addr_a=10.213.77.1
addr_b=10.213.77.2
cat >"$agent" <<EOF
#!/bin/sh
# plm_rsh_agent: "log in" to a simulated host = run in its network namespace.
host=\$1; shift
case "\$host" in
  $addr_a) exec ip netns exec $ns_a sh -c "\$*" ;;
  $addr_b) exec ip netns exec $ns_b sh -c "\$*" ;;
esac
echo "agent: unknown host \$host" >&2; exit 1
EOF
chmod +x "$agent"
if ip netns add "$ns_a" && ip netns add "$ns_b" &&
  ip link add "veth-$$" type veth peer name "vpeer-$$" &&
  ip link set "veth-$$" netns "$ns_a" && ip link set "vpeer-$$" netns "$ns_b" &&
  ip -n "$ns_a" addr add "$addr_a/24" dev "veth-$$" && ip -n "$ns_b" addr add "$addr_b/24" dev "vpeer-$$" &&
  ip -n "$ns_a" link set "veth-$$" up && ip -n "$ns_b" link set "vpeer-$$" up &&
  ip -n "$ns_a" link set lo up && ip -n "$ns_b" link set lo up; then
  expect_pass "Open MPI, two hosts (network namespaces), 3 ranks" \
    ip netns exec "$ns_a" env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    timeout -k 10 120 mpirun.openmpi --host "$addr_a:2,$addr_b:1" --bind-to none \
    --mca plm_rsh_agent "$agent" --mca plm_rsh_no_tree_spawn 1 \
    --mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include 10.213.77.0/24 \
    --mca oob_tcp_if_include 10.213.77.0/24 -n 3 "$check" suite --hosts 2
else
  bad "could not make two network namespaces (is this root?)"
fi

# ---- MPICH ------------------------------------------------------------------
expect_pass "MPICH, shared memory, 3 ranks" timeout -k 10 120 mpiexec.mpich -n 3 target/mpich/release/examples/cluster_check
expect_failure "a rank SIGKILLed at its call 50, MPICH mpiexec" 8 "" \
  mpiexec.mpich -n 3 target/mpich/release/examples/cluster_check dead-rank 3
expect_failure "a unit that never returns and a stopped rank, MPICH mpiexec" 8 "hung-rank ok" \
  mpiexec.mpich -n 4 target/mpich/release/examples/cluster_check hung-rank 3

# ---- nothing left behind ------------------------------------------------------
sleep 0.5
if pgrep -f 'examples/(cluster_check|mpi_pi|mpi_triangle)' >/dev/null; then
  pgrep -af 'examples/(cluster_check|mpi_pi|mpi_triangle)'
  bad "processes left after the jobs"
else
  ok "no process left"
fi

echo "cluster: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
