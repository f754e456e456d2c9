#!/usr/bin/env bash
# A one-node SLURM on this machine, for make test-slurm (docs/clusters.md): Debian's slurm-wlm and
# munge, a slurm.conf generated for this host, the daemons started by hand (PID 1 need not be
# systemd). Idempotent: a second run finds the daemons answering and does nothing.
#
# Two partitions on the one node: "debug" (the default) and "urgent", whose jobs preempt debug's
# (PreemptType=preempt/partition_prio, PreemptMode=REQUEUE, GraceTime 30 s on debug): what the
# preemption test exercises. Needs root or password-less sudo (apt-get, /etc/slurm, the daemons).
set -euo pipefail

if command -v sinfo >/dev/null && timeout 5 sinfo -h -o %T 2>/dev/null | grep -qE "idle|mix|alloc"; then
  echo "slurm: already up ($(sinfo -h -o '%P %T' | tr '\n' ' '))"
  exit 0
fi
# root, or sudo without a password (as the Makefile's apt-get step)
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if sudo -n true 2>/dev/null; then
    SUDO="sudo"
  else
    echo "error: make slurm needs root or password-less sudo (apt-get, /etc/slurm, the daemons); or use a real cluster" >&2
    exit 1
  fi
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
$SUDO mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /etc/slurm
$SUDO chown munge:munge /run/munge
[ -s /etc/munge/munge.key ] || $SUDO dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
$SUDO chown munge:munge /etc/munge/munge.key && $SUDO chmod 400 /etc/munge/munge.key

host=$(hostname)
cpus=$(nproc)
# slurmd refuses a node whose RealMemory exceeds what it finds: 90 % of MemTotal, in MB
mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
$SUDO tee /etc/slurm/slurm.conf >/dev/null <<CONF
ClusterName=local
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmUser=root
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
# a requeued job may start again at once (the default holds it back 120 s after its end)
JobRequeue=1
SchedulerParameters=nohold_on_prolog_fail
MinJobAge=300
KillWait=30
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=30
PartitionName=urgent Nodes=$host MaxTime=INFINITE State=UP PriorityTier=2
CONF

pgrep -x munged >/dev/null || $SUDO su -s /bin/sh munge -c /usr/sbin/munged
[ -f /run/slurmctld.pid ] && $SUDO kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null || $SUDO /usr/sbin/slurmctld
[ -f /run/slurmd.pid ] && $SUDO kill -0 "$(cat /run/slurmd.pid)" 2>/dev/null || $SUDO /usr/sbin/slurmd
for _ in $(seq 30); do
  if timeout 5 sinfo -h -o %T 2>/dev/null | grep -qE "idle|mix|alloc"; then
    echo "slurm: up ($(sinfo -h -o '%P %T' | tr '\n' ' '))"
    exit 0
  fi
  sleep 1
done
echo "error: slurm did not come up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
exit 1
