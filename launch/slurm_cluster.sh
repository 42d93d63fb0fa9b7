#!/usr/bin/env bash
# Single-node SLURM cluster on localhost for CI and development.
#   launch/slurm_cluster.sh install   # Debian packages (skipped when present)
#   launch/slurm_cluster.sh start     # configs, munge key, daemons; waits for an idle node
#   launch/slurm_cluster.sh stop      # kills the daemons by PID file
#   launch/slurm_cluster.sh status    # sinfo, or non-zero when the controller is down
# Accounting goes through slurmdbd on mariadb: without it submitit never learns
# that SLURM killed a job and waits forever.
set -euo pipefail

STATE=${NFEBENCH_SLURM_STATE:-/var/tmp/nfebench-slurm}
CLUSTER=nfebench
ETC=/etc/slurm
PKGS=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
WAIT_S=${NFEBENCH_SLURM_WAIT:-60}

log() { echo "slurm_cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

install() {
    local missing=()
    for p in "${PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then log "packages present"; return; fi
    log "installing ${missing[*]}"
    # policy-rc.d 101: the packages must not start their own daemons; we start them ourselves
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' RETURN
    # always refresh: a machine image may carry package lists that point at versions since removed
    timeout 300 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pidfile() { if [ "$1" = mariadb ]; then echo "$STATE/run/mariadb.pid"; else echo "$STATE/$1.pid"; fi; }
alive() { [ -f "$(pidfile "$1")" ] && kill -0 "$(cat "$(pidfile "$1")")" 2>/dev/null; }

write_configs() {
    local cpus mem host
    cpus=$(nproc)
    mem=$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')  # leave the OS some headroom
    host=$(hostname -s)
    mkdir -p "$ETC" "$STATE"/{ctld,d,log,mysql,run}
    chown mysql:mysql "$STATE"/run  # mariadb writes its PID file as mysql
    cat > "$ETC/slurm.conf" <<CONF
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
KillWait=5
InactiveLimit=0
MinJobAge=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    cat > "$ETC/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=$host
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONF
    chmod 600 "$ETC/slurmdbd.conf"
}

start_munge() {
    alive munged && return
    [ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
    chown -R munge:munge /etc/munge; chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge; chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    cp /run/munge/munged.pid "$STATE/munged.pid" 2>/dev/null || pgrep -o -x munged > "$STATE/munged.pid"
}

start_mariadb() {
    if ! alive mariadb; then
        [ -d "$STATE/mysql/mysql" ] || mariadb-install-db --user=mysql --datadir="$STATE/mysql" >"$STATE/log/mariadb-install.log" 2>&1
        chown -R mysql:mysql "$STATE/mysql"
        mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld
        nohup /usr/sbin/mariadbd --user=mysql --datadir="$STATE/mysql" --bind-address=127.0.0.1 --port=3306 \
            --socket=/run/mysqld/mysqld.sock --pid-file="$(pidfile mariadb)" >"$STATE/log/mariadb.log" 2>&1 &
    fi
    for _ in $(seq 1 "$WAIT_S"); do timeout 10 mariadb -uroot -e 'select 1' >/dev/null 2>&1 && break; sleep 0.5; done
    timeout 30 mariadb -uroot -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" \
        || die "mariadb did not come up (see $STATE/log/mariadb.log)"
}

wait_for() {  # wait_for DESCRIPTION COMMAND...
    local what=$1; shift
    for _ in $(seq 1 $((WAIT_S * 2))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
    die "timed out after ${WAIT_S}s waiting for $what (logs in $STATE/log)"
}

node_idle() { timeout 10 sinfo -h -N -o '%t' | grep -qE '^(idle|mix|alloc)'; }

start() {
    command -v slurmctld >/dev/null || die "slurmctld not installed; run: $0 install"
    write_configs
    start_munge
    start_mariadb
    alive slurmdbd || /usr/sbin/slurmdbd
    wait_for "slurmdbd" timeout 10 sacctmgr -n list cluster
    timeout 30 sacctmgr -n list cluster format=cluster | grep -qw "$CLUSTER" || timeout 30 sacctmgr -i add cluster "$CLUSTER" >/dev/null
    alive slurmctld || /usr/sbin/slurmctld
    wait_for "slurmctld" timeout 10 scontrol ping
    alive slurmd || /usr/sbin/slurmd
    wait_for "an idle node" node_idle
    timeout 30 sinfo
}

stop() {
    for d in slurmd slurmctld slurmdbd mariadb munged; do
        if alive "$d"; then kill "$(cat "$(pidfile "$d")")"; log "stopped $d"; fi
    done
    for d in slurmd slurmctld slurmdbd mariadb munged; do
        for _ in $(seq 1 40); do alive "$d" || break; sleep 0.25; done
        rm -f "$(pidfile "$d")"
    done
}

status() {
    timeout 30 scontrol ping >/dev/null 2>&1 || { log "controller not running"; exit 1; }
    timeout 30 sinfo
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
