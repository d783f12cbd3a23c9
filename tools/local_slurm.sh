#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for trying tools/run_table.py --emit slurm without a cluster.
#   sudo apt-get install slurm-wlm munge        (Debian/Ubuntu; as root, or with sudo)
#   eval "$(bash tools/local_slurm.sh start /tmp/slurm)"   # starts munged, slurmctld, slurmd; exports SLURM_CONF
#   sinfo; bash <emit dir>/submit.sh; squeue
#   bash tools/local_slurm.sh stop /tmp/slurm
# The node offers this machine's cores and memory; state, logs and the config live under DIR.
set -euo pipefail
action=${1:?usage: local_slurm.sh start|stop DIR}
dir=$(mkdir -p "${2:?usage: local_slurm.sh start|stop DIR}" && cd "$2" && pwd)
conf=$dir/slurm.conf
if [ "$action" = stop ]; then
  for daemon in slurmd slurmctld; do
    [ -f "$dir/$daemon.pid" ] && kill "$(cat "$dir/$daemon.pid")" 2>/dev/null || true
  done
  exit 0
fi
[ "$action" = start ] || { echo "local_slurm.sh: unknown action $action (start or stop)" >&2; exit 2; }
for tool in munged slurmctld slurmd sbatch; do
  command -v "$tool" > /dev/null || { echo "local_slurm.sh: $tool not found; install slurm-wlm and munge" >&2; exit 2; }
done
mkdir -p "$dir/state" "$dir/spool"
cpus=$(nproc)
memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
cat > "$conf" <<CONF
ClusterName=local
SlurmctldHost=localhost
SlurmUser=$(id -un)
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=600
NodeName=localhost NodeHostname=$(hostname) CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=$(( memory / cpus ))
CONF
if ! pgrep -x munged > /dev/null; then  # as Debian's service would start it
  mkdir -p /run/munge /var/log/munge
  chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge 2>/dev/null || true
  if [ "$(id -u)" = 0 ]; then runuser -u munge -- munged; else munged; fi
fi
SLURM_CONF=$conf slurmctld
SLURM_CONF=$conf slurmd -N localhost
for _ in $(seq 30); do
  SLURM_CONF=$conf sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)' && break
  sleep 1
done
SLURM_CONF=$conf sinfo -h -o %t | grep -qE '^(idle|mix|alloc)' || { echo "local_slurm.sh: the node did not come up; see $dir/*.log" >&2; exit 1; }
echo "export SLURM_CONF=$conf"
