#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the SLURM tests (and for trying launcher=slurm).
#
#   sudo bash scripts/slurm_local.sh start    # munge key, slurm.conf, munged, slurmctld, slurmd; waits for an idle node
#   sudo bash scripts/slurm_local.sh stop     # stops what start started, removes what it wrote
#   bash scripts/slurm_local.sh status        # sinfo
#
# Needs root and the Debian packages slurm-wlm and munge (apt-get install slurm-wlm munge).
# The node is this host with the cores and memory `slurmd -C` finds; one partition, `local`,
# the default. Jobs run as the user who submits them; no accounting database (sacct is not
# available; squeue shows finished jobs for MinJobAge seconds).
#
# Environment:
#   SLURM_CONF         slurm.conf to write (default /etc/slurm/slurm.conf); a file there that this
#                      script did not write is never replaced
#   SLURM_LOCAL_STATE  spool folders, pid files and daemon logs (default /var/tmp/slurm-local)
#   SLURM_LOCAL_WAIT   seconds to wait for the node to become idle (default 60)
set -euo pipefail

SLURM_CONF="${SLURM_CONF:-/etc/slurm/slurm.conf}"
STATE="${SLURM_LOCAL_STATE:-/var/tmp/slurm-local}"
WAIT_S="${SLURM_LOCAL_WAIT:-60}"
MARKER="# Written by scripts/slurm_local.sh"
MUNGE_SOCKET_DIR=/run/munge

log() { echo "slurm_local: $*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() {
  [[ $(id -u) -eq 0 ]] || die "run as root (it starts munged, slurmctld and slurmd)"
  for tool in munged slurmctld slurmd sinfo; do
    command -v "$tool" >/dev/null || die "$tool not found: apt-get install slurm-wlm munge"
  done
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  if munge_works; then
    log "munged already running"
    return
  fi
  if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    install -d -o munge -g munge -m 0700 /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 0755 "$MUNGE_SOCKET_DIR"
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  runuser -u munge -- munged
  for _ in $(seq 50); do
    munge_works && break
    sleep 0.1
  done
  munge_works || die "munged did not start (see /var/log/munge/munged.log)"
  touch "$STATE/started-munged"
}

write_conf() {
  if [[ -e "$SLURM_CONF" ]] && ! grep -qF "$MARKER" "$SLURM_CONF"; then
    die "$SLURM_CONF exists and was not written by this script: move it away or set SLURM_CONF"
  fi
  local host node
  host=$(hostname -s)
  # NodeName=<host> CPUs=... Boards=... SocketsPerBoard=... CoresPerSocket=... ThreadsPerCore=... RealMemory=...
  node=$(slurmd -C | head -n 1)
  [[ $node == "NodeName=$host "* ]] || die "unexpected 'slurmd -C' output: $node"
  install -d "$(dirname "$SLURM_CONF")" "$STATE/slurmctld" "$STATE/slurmd"
  cat >"$SLURM_CONF" <<EOF
$MARKER: a single-node cluster on $host.
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Job credentials live 10 s (default 120): also how long a requeued job waits to start again.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
# Processes tracked by parent id, no cgroups: works in containers.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Cores and memory are the consumable resources (jobs ask for what they need).
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# Seconds between SIGTERM and SIGKILL when a job is cancelled or runs out of time.
KillWait=5
# Seconds a finished job stays visible to squeue.
MinJobAge=600
# This host, with the cores and memory slurmd finds.
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  touch "$STATE/wrote-conf"
  log "wrote $SLURM_CONF ($node)"
}

wait_idle() {
  local state=""
  for _ in $(seq $((WAIT_S * 2))); do
    state=$(sinfo --noheader --node="$(hostname -s)" --format=%T 2>/dev/null || true)
    [[ $state == idle ]] && return
    sleep 0.5
  done
  die "node not idle after ${WAIT_S}s (state: '${state:-none}'); see $STATE/slurmctld.log and $STATE/slurmd.log"
}

start() {
  need_root
  if sinfo --noheader >/dev/null 2>&1; then
    log "a SLURM controller already answers; nothing to start"
    sinfo
    return
  fi
  install -d "$STATE"
  start_munge
  write_conf
  slurmctld
  touch "$STATE/started-slurmctld"
  slurmd
  touch "$STATE/started-slurmd"
  wait_idle
  log "cluster up"
  sinfo
}

stop_daemon() {
  local name=$1 pid_file=$2
  [[ -e "$STATE/started-$name" ]] || return 0
  if [[ -s $pid_file ]]; then
    local pid
    pid=$(cat "$pid_file")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
  fi
  rm -f "$STATE/started-$name"
  log "stopped $name"
}

stop() {
  need_root
  if [[ -e "$STATE/started-slurmctld" ]]; then
    scancel --user="$(id -un)" 2>/dev/null || true
  fi
  stop_daemon slurmd "$STATE/slurmd.pid"
  stop_daemon slurmctld "$STATE/slurmctld.pid"
  stop_daemon munged "$MUNGE_SOCKET_DIR/munged.pid"
  if [[ -e "$STATE/wrote-conf" ]]; then
    grep -qF "$MARKER" "$SLURM_CONF" 2>/dev/null && rm -f "$SLURM_CONF"
    rm -rf "$STATE"
    log "removed $SLURM_CONF and $STATE"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) sinfo ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
