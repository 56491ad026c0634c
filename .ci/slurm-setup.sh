#!/usr/bin/env bash
# A single-node Slurm for the scale-out tests: installs Debian's packages, writes a minimal
# slurm.conf for this machine (one node, one default partition, no cgroups, no accounting),
# starts munged, slurmctld and slurmd directly (no systemd), and waits until the node is idle.
# Run as root on Debian 12. A second run on a machine where it already runs changes nothing;
# a changed configuration (more memory, another host name) restarts the daemons with it.
# On any failure it prints the daemons' logs and exits non-zero. (Their "can not load PMIx
# library" errors are harmless: MpiDefault=none, and the plugin is only probed.)
#
# Without accounting, sacct has nothing: wait for a job by polling `squeue -h -j ID` until it
# prints nothing (or `sbatch --wait`, which polls every 2, then 8 s and exits with the highest
# exit code of the job's tasks), and read each task's JobState and ExitCode from
# `scontrol -o show job ID` (one line per array task) within MinJobAge (300 s) of its end;
# after that only $LOGS/jobcomp.log (one line per finished job) has them.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
LOGS=/var/log/slurm
CTLD_STATE=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_KEY=/etc/munge/munge.key
MUNGE_PID=/run/munge/munged.pid
# How long the node may take to register and become idle.
WAIT_IDLE_S=60

log() { echo "slurm-setup: $*" >&2; }

print_logs() {
  local f
  for f in "$LOGS/slurmctld.log" "$LOGS/slurmd.log" /var/log/munge/munged.log; do
    if [ -f "$f" ]; then
      echo "----- $f (last 60 lines)" >&2
      tail -n 60 "$f" >&2
    else
      echo "----- $f: absent" >&2
    fi
  done
}

on_exit() {
  local status=$?
  if [ "$status" -ne 0 ]; then
    log "failed (exit $status); the daemons' logs follow"
    print_logs
  fi
  exit "$status"
}
trap on_exit EXIT

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root"
  exit 1
fi

# Whether the process named in pid file $1 is alive.
running() {
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# Stop the process named in pid file $1, waiting up to 10 s.
stop() {
  local pid i
  running "$1" || return 0
  pid=$(cat "$1")
  kill "$pid"
  for i in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  log "process $pid (from $1) did not stop"
  return 1
}

seconds() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(seconds)" 'BEGIN { printf "%.1f", b - a }'; }

# --- Install -------------------------------------------------------------------------------
t0=$(seconds)
missing=0
for cmd in slurmctld slurmd sbatch sinfo munged mungekey; do
  command -v "$cmd" >/dev/null 2>&1 || missing=1
done
if [ "$missing" -eq 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # The packages' scripts must not try to start daemons (there is no init system to ask);
  # Docker images already have this policy, a bare machine may not.
  policy_added=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    policy_added=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    slurmctld slurmd slurm-client munge >/dev/null
  if [ "$policy_added" -eq 1 ]; then
    rm -f /usr/sbin/policy-rc.d
  fi
  log "apt install took $(elapsed "$t0") s"
else
  log "Slurm and munge are installed already"
fi

# --- Configuration -------------------------------------------------------------------------
t1=$(seconds)
node=$(hostname -s)
cpus=$(nproc)
mem_kib=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
mem_mib=$((mem_kib / 1024))
# A container may be held to less than the machine's memory by its cgroup.
if [ -r /sys/fs/cgroup/memory.max ]; then
  limit=$(cat /sys/fs/cgroup/memory.max)
  if [ "$limit" != max ] && [ "$((limit / 1048576))" -lt "$mem_mib" ]; then
    mem_mib=$((limit / 1048576))
  fi
fi
# Headroom for the system and the daemons: a tenth, and at least 256 MiB.
headroom=$((mem_mib / 10))
[ "$headroom" -ge 256 ] || headroom=256
real_mib=$((mem_mib - headroom))
if [ "$real_mib" -lt 256 ]; then
  log "only $mem_mib MiB of memory; Slurm needs more"
  exit 1
fi
def_mem=$((real_mib / cpus))

mkdir -p /etc/slurm "$LOGS" "$CTLD_STATE" "$SLURMD_SPOOL"
chmod 0755 "$LOGS" "$CTLD_STATE" "$SLURMD_SPOOL"
new_conf=$(mktemp /etc/slurm/.slurm.conf.XXXXXX)
cat >"$new_conf" <<EOF
# Written by .ci/slurm-setup.sh: one node ($node), one partition, for the tests.
ClusterName=ci
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
# No cgroups: the CI machine is a container without systemd.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# Every finished job, with its state and exit code, one line each (jobs leave scontrol's view
# MinJobAge seconds after they end; this file keeps them).
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGS/jobcomp.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A job without --mem gets this much per CPU, not the whole node, so tasks run side by side.
DefMemPerCPU=$def_mem
# The node is what this file says, whatever slurmd finds (a container's CPU and memory view).
SlurmdParameters=config_overrides
# Fast scheduling: FIFO, a pass every second, finished jobs visible for a while to read.
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
MinJobAge=300
KillWait=5
Waittime=0
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=$CTLD_STATE
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mib State=UNKNOWN
PartitionName=ci Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
chmod 0644 "$new_conf"
changed=0
if [ -f "$CONF" ] && cmp -s "$new_conf" "$CONF"; then
  rm -f "$new_conf"
else
  mv "$new_conf" "$CONF"
  changed=1
  log "wrote $CONF (node $node, $cpus CPUs, $real_mib MiB)"
fi

# --- Daemons -------------------------------------------------------------------------------
if [ ! -s "$MUNGE_KEY" ]; then
  mkdir -p /etc/munge
  mungekey --create --keyfile="$MUNGE_KEY" --force
fi
chown munge:munge "$MUNGE_KEY"
chmod 0400 "$MUNGE_KEY"
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if ! running "$MUNGE_PID"; then
  runuser -u munge -- munged
fi
munge -n | unmunge >/dev/null

if [ "$changed" -eq 1 ]; then
  stop "$SLURMD_PID"
  stop "$CTLD_PID"
fi
if ! running "$CTLD_PID"; then
  slurmctld
fi
if ! running "$SLURMD_PID"; then
  slurmd
fi

state=""
for _ in $(seq $((WAIT_IDLE_S * 2))); do
  state=$(sinfo --noheader --nodes="$node" --format=%T 2>/dev/null || true)
  if [ "$state" = idle ] || [ "$state" = mixed ] || [ "$state" = allocated ]; then
    break
  fi
  sleep 0.5
done
case "$state" in
  idle | mixed | allocated) ;;
  *)
    log "node $node is '${state:-unknown}' after ${WAIT_IDLE_S} s, not idle"
    sinfo --long --Node >&2 || true
    exit 1
    ;;
esac
log "daemons up and node $state in $(elapsed "$t1") s"
sinfo
