# Shell helpers of the cluster test scripts (sourced, not run): counting
# checks, timing launches, and making sure no process outlives its job.

passed=0
failed=0
ok() { echo "ok: $*"; passed=$((passed + 1)); }
bad() { echo "FAILED: $*"; failed=$((failed + 1)); }

now() { date +%s.%N; }
secs_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# No process of the examples may outlive its job (all nodes are this host).
none_left() {
  local i
  for i in $(seq 30); do
    pgrep -f 'examples/(cluster_check|mpi_pi|mpi_triangle)' >/dev/null || return 0
    sleep 0.1
  done
  pgrep -af 'examples/(cluster_check|mpi_pi|mpi_triangle)'
  return 1
}

# A launch that must succeed and print `text`.
expect_ok() {
  local name=$1 text=$2 out
  shift 2
  if out=$(timeout -k 10 120 "$@" 2>&1) && grep -q -- "$text" <<<"$out" && none_left; then
    ok "$name ($(grep -o -- "$text.*" <<<"$out" | head -1 | cut -c1-80))"
  else
    echo "$out" | tail -20
    bad "$name"
  fi
}

# A failure case: the launcher must exit non-zero within `limit` seconds,
# rank 0 must have printed `text` (if given), and no process may be left.
expect_failure() {
  local name=$1 limit=$2 text=$3 out rc start took
  shift 3
  local attempt
  for attempt in 1 2; do
    start=$(now)
    out=$(timeout -k 10 120 "$@" 2>&1) && rc=0 || rc=$?
    took=$(secs_since "$start")
    # Open MPI 4.1.4's mpirun now and then hangs (or crashes in
    # PMIx_server_finalize) after the job's MPI_Abort, with every rank
    # gone: a launcher past the limit is given one more launch, said here.
    if [ "$attempt" -eq 1 ] && [ "$rc" -ne 0 ] &&
      awk -v t="$took" -v l="$limit" 'BEGIN { exit !(t > l) }'; then
      echo "    $name: the launcher took ${took} s (limit ${limit} s); launched once more"
      none_left >/dev/null 2>&1 || true
      continue
    fi
    break
  done
  if [ "$rc" -eq 0 ]; then
    echo "$out" | tail -20
    bad "$name: the launcher exited 0"
  elif awk -v t="$took" -v l="$limit" 'BEGIN { exit !(t > l) }'; then
    echo "$out" | tail -20
    bad "$name: the launcher took ${took} s (limit ${limit} s)"
  elif [ -n "$text" ] && ! grep -q -- "$text" <<<"$out"; then
    echo "$out" | tail -30
    bad "$name: rank 0 did not say \"$text\""
  elif ! none_left; then
    bad "$name: processes left"
  else
    ok "$name (exit $rc after ${took} s)"
    if [ -n "$text" ]; then grep -- "$text" <<<"$out" | head -1 | cut -c1-400 | sed 's/^/    /'; fi
  fi
}

