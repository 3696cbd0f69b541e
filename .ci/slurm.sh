#!/usr/bin/env bash
# A single-node SLURM for the end-to-end sweep test, from Debian's packages.
#   source .ci/slurm.sh start   # installs, configures and starts munged, slurmctld, slurmd; exports SLURM_CONF
#   .ci/slurm.sh stop           # stops exactly the daemons it started, by PID
# Accounting is off (accounting_storage/none): the project bounds every wait itself.
# Where anything fails, it says why and leaves SLURM down: tests/test_slurm.py then skips with the reason.
set -u
SLURM_DIR=${SLURM_DIR:-/tmp/memorize-slurm}

slurm_start() {
  if [ "$(id -u)" != 0 ]; then echo "slurm: not root, cannot install or start SLURM" >&2; return 1; fi
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) >/dev/null \
      || { echo "slurm: apt-get install slurm-wlm munge failed" >&2; return 1; }
  fi
  rm -rf "$SLURM_DIR"
  mkdir -p "$SLURM_DIR"/{state,spool,log} /run/munge
  chown munge:munge /run/munge
  [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null;
                                   chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  local host cpus mem
  host=$(hostname)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  cat > "$SLURM_DIR/slurm.conf" <<CONF
ClusterName=memorize-ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SchedulerParameters=sched_interval=2
KillWait=5
ReturnToService=2
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF="$SLURM_DIR/slurm.conf"
  mkdir -p "$SLURM_DIR/pids"
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid || { echo "slurm: munged failed" >&2; return 1; }
  _record_pid munged /run/munge/munged.pid || return 1
  /usr/sbin/slurmctld -f "$SLURM_CONF" || { echo "slurm: slurmctld failed" >&2; return 1; }
  _record_pid slurmctld "$SLURM_DIR/slurmctld.pid" || return 1
  /usr/sbin/slurmd -f "$SLURM_CONF" || { echo "slurm: slurmd failed" >&2; return 1; }
  _record_pid slurmd "$SLURM_DIR/slurmd.pid" || return 1
  for _ in $(seq 1 30); do
    if sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mixed'; then echo "slurm: node idle ($SLURM_CONF)"; return 0; fi
    sleep 1
  done
  echo "slurm: the node did not become idle within 30 s" >&2
  return 1
}

# Copy a daemon's PID, once its own pid file appears, to pids/NAME (the daemons may rewrite or remove theirs).
_record_pid() {
  for _ in $(seq 1 50); do
    if [ -s "$2" ]; then cat "$2" > "$SLURM_DIR/pids/$1"; return 0; fi
    sleep 0.1
  done
  echo "slurm: $1 wrote no pid file ($2)" >&2
  return 1
}

slurm_stop() {
  for name in slurmd slurmctld munged; do
    local pidfile="$SLURM_DIR/pids/$name"
    if [ -s "$pidfile" ]; then
      local pid
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null && echo "slurm: stopped $name (pid $pid)"
      rm -f "$pidfile"
    fi
  done
}

case "${1:-}" in
  start) slurm_start ;;
  stop) slurm_stop ;;
  *) echo "usage: .ci/slurm.sh start|stop" >&2 ;;
esac
