#!/usr/bin/env bash
# A real Slurm on this host: munge, slurmctld and two slurmd (two simulated
# nodes, n1 and n2, of 2 CPUs each), all under one base folder, no systemd.
# The facts behind each setting are in ../shared/SLURM.md of the project.
#
#   scripts/slurm-cluster.sh start DIR   # installs the packages if missing; ~1 s once installed
#   export SLURM_CONF=DIR/slurm.conf     # then srun, sbatch, sinfo talk to it
#   scripts/slurm-cluster.sh stop DIR    # kills each daemon by its recorded pid
#
# Ports: XME_SLURM_PORT (default 6917) for slurmctld, the next two for the
# slurmd of n1 and n2. Needs root.
set -euo pipefail

cmd=${1:?usage: slurm-cluster.sh start|stop DIR}
base=${2:?usage: slurm-cluster.sh start|stop DIR}
port=${XME_SLURM_PORT:-6917}

stop() {
  [ -d "$base" ] || return 0
  local f pid
  # slurmd first (its steps end with it), then slurmctld, then munged.
  for f in "$base"/pids/slurmd-*.pid "$base"/pids/slurmctld.pid "$base"/pids/munged.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
}

if [ "$cmd" = stop ]; then
  stop
  exit 0
fi
[ "$cmd" = start ] || { echo "usage: slurm-cluster.sh start|stop DIR" >&2; exit 2; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null ||
  ! command -v srun >/dev/null || ! command -v munged >/dev/null; then
  echo "installing slurmctld slurmd slurm-client munge"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
fi

base=$(mkdir -p "$base" && cd "$base" && pwd)
mkdir -p "$base"/{pids,log,state,spool,tmp,munge}
host=$(hostname)

# ---- munge: its own socket and key --------------------------------------
if [ ! -f "$base/munge/key" ]; then
  head -c 1024 /dev/urandom >"$base/munge/key"
  chmod 0400 "$base/munge/key"
fi
chmod 0700 "$base/munge"
setsid munged -F --force --socket="$base/munge/socket" --key-file="$base/munge/key" \
  --pid-file="$base/munge/munged.pid" --seed-file="$base/munge/seed" \
  --log-file="$base/log/munged.log" </dev/null >>"$base/log/munged.out" 2>&1 &
echo $! >"$base/pids/munged.pid"
for _ in $(seq 100); do
  munge -S "$base/munge/socket" -n 2>/dev/null | unmunge -S "$base/munge/socket" >/dev/null 2>&1 && break
  sleep 0.05
done
munge -S "$base/munge/socket" -n | unmunge -S "$base/munge/socket" >/dev/null ||
  { echo "munged did not start: see $base/log/munged.log" >&2; stop; exit 1; }

# ---- slurm.conf -------------------------------------------------------------
# Open MPI between the two simulated nodes over TCP only (SLURM.md pitfall
# 4: they share /dev/shm and a host name, and its shared-memory transport
# across them failed in MPI_Init: 3 of 140 launches of a plain C hello here,
# also with a shared-memory folder per node; 0 of 100 over TCP). Real nodes
# do not share /dev/shm; this is the test cluster's own setting.
cat >"$base/task-prolog.sh" <<EOF
#!/bin/sh
echo "export OMPI_MCA_btl=self,tcp"
EOF
chmod +x "$base/task-prolog.sh"
cat >"$base/slurm.conf" <<EOF
ClusterName=xme
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$base/munge/socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
TaskProlog=$base/task-prolog.sh
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=$base/state
SlurmdSpoolDir=$base/spool/%n
TmpFS=$base/tmp/%n
SlurmctldPidFile=$base/state/slurmctld.pid
SlurmdPidFile=$base/spool/slurmd-%n.pid
SlurmctldLogFile=$base/log/slurmctld.log
SlurmdLogFile=$base/log/slurmd-%n.log
SlurmdTimeout=30
InactiveLimit=0
KillWait=2
NodeName=n1 NodeAddr=127.0.0.1 NodeHostname=$host Port=$((port + 1)) CPUs=2 State=UNKNOWN
NodeName=n2 NodeAddr=127.0.0.1 NodeHostname=$host Port=$((port + 2)) CPUs=2 State=UNKNOWN
PartitionName=xme Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
export SLURM_CONF=$base/slurm.conf

setsid slurmctld -D -c -f "$base/slurm.conf" </dev/null >>"$base/log/slurmctld.out" 2>&1 &
echo $! >"$base/pids/slurmctld.pid"
for n in n1 n2; do
  mkdir -p "$base/spool/$n" "$base/tmp/$n"
  setsid slurmd -D -N "$n" -f "$base/slurm.conf" </dev/null >>"$base/log/slurmd-$n.out" 2>&1 &
  echo $! >"$base/pids/slurmd-$n.pid"
done

for _ in $(seq 300); do
  [ "$(sinfo -h -t idle -o %D 2>/dev/null || true)" = 2 ] && break
  sleep 0.1
done
if [ "$(sinfo -h -t idle -o %D 2>/dev/null || true)" != 2 ]; then
  echo "Slurm did not come up (two idle nodes): see $base/log" >&2
  sinfo >&2 || true
  stop
  exit 1
fi
echo "slurm: 2 nodes idle; export SLURM_CONF=$base/slurm.conf"
