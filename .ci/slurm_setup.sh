#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests/test_slurm.py (the pipeline run through
# profiles/slurm). Installs slurm-wlm and munge from the Debian packages, writes a minimal
# slurm.conf (no accounting daemon: job states come from squeue, so finished jobs are kept for an
# hour with MinJobAge), starts munged, slurmctld and slurmd, and waits until sinfo shows the node
# idle. Needs root and apt. Exits non-zero, saying why, when it cannot bring the cluster up.
#
#   sudo .ci/slurm_setup.sh          # idempotent: a cluster already up is left as it is
set -euo pipefail

PARTITION="${KETCHUP_SLURM_PARTITION:-debug}"
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
WAIT_S="${KETCHUP_SLURM_WAIT_S:-60}"

die() { echo "slurm_setup: error: $*" >&2; exit 1; }
say() { echo "slurm_setup: $*" >&2; }

node_idle() {
    # "idle" (or "mixed"/"allocated" if jobs are already running) on our partition
    sinfo -h -p "$PARTITION" -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'
}

if command -v sinfo >/dev/null 2>&1 && node_idle; then
    say "a cluster is already up: $(sinfo -h -p "$PARTITION" -o '%P %D %T %N')"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "must run as root (installs packages, starts daemons)"

# --- packages ----------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || die "apt-get not found: install slurm-wlm and munge by hand"
    say "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null \
        || die "apt-get install slurm-wlm munge failed"
fi

# --- munge -------------------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown -R munge:munge /etc/munge && chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged --force || die "munged did not start (see /var/log/munge/munged.log)"
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
    munge -n | unmunge >/dev/null 2>&1 || die "munge does not answer (see /var/log/munge/munged.log)"
fi

# --- slurm.conf --------------------------------------------------------------------------------
HOST="$(hostname -s)"
CPUS="$(nproc)"
MEM_TOTAL_MB="$(free -m | awk '/^Mem:/ {print $2}')"
[ -n "$MEM_TOTAL_MB" ] || die "could not read the memory size from free"
REAL_MEM_MB=$(( MEM_TOTAL_MB * 9 / 10 ))   # a margin, so slurmd never reports less than configured
mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
say "writing $CONF_DIR/slurm.conf (node $HOST, CPUs=$CPUS, RealMemory=$REAL_MEM_MB MB)"
cat > "$CONF_DIR/slurm.conf" <<EOF
# Written by .ci/slurm_setup.sh: a single-node test cluster, no accounting.
ClusterName=ketchup-ci
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# Finished jobs stay visible to squeue for an hour (the executor plugin polls with squeue).
MinJobAge=3600
SlurmctldTimeout=30
SlurmdTimeout=30
MpiDefault=none
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${REAL_MEM_MB} State=UNKNOWN
PartitionName=${PARTITION} Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
EOF

# --- daemons -----------------------------------------------------------------------------------
if ! scontrol ping 2>/dev/null | grep -q UP; then
    say "starting slurmctld"
    /usr/sbin/slurmctld -c || die "slurmctld did not start (see $LOG_DIR/slurmctld.log)"
else
    scontrol reconfigure >/dev/null 2>&1 || true
fi
if ! pgrep -x slurmd >/dev/null; then
    say "starting slurmd"
    /usr/sbin/slurmd || die "slurmd did not start (see $LOG_DIR/slurmd.log)"
fi

say "waiting up to ${WAIT_S}s for node $HOST to be idle"
for _ in $(seq "$WAIT_S"); do
    if node_idle; then
        say "cluster up: $(sinfo -h -p "$PARTITION" -o '%P %D %T %N')"
        exit 0
    fi
    # a node that came back from an earlier run may be DOWN/DRAINED: return it to service
    scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
    sleep 1
done
sinfo >&2 || true
tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 2>/dev/null || true
die "node $HOST did not become idle within ${WAIT_S}s"
