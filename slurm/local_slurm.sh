#!/usr/bin/env bash
# A real single-node SLURM on this machine, for testing the sbatch scripts end to end.
#
#   slurm/local_slurm.sh start DIR   install (apt) if missing, write DIR/slurm.conf, start
#                                    munged, slurmctld and slurmd; wait until the node is idle
#   slurm/local_slurm.sh stop DIR    stop the daemons started by `start DIR` (by their pids)
#   slurm/local_slurm.sh env DIR     print `export SLURM_CONF=DIR/slurm.conf` for eval
#   slurm/local_slurm.sh install DIR only install SLURM with apt if missing (log in DIR); the
#                                    two-node cluster (slurm/two_node_cluster.sh) uses it
#
# Needs root (the daemons run as root, without cgroups). Every file lives under DIR: the config,
# controller state, slurmd spool, logs and pid files; /etc/slurm is not touched. Clients find the
# cluster through SLURM_CONF, so export it (see `env`) before calling sbatch/srun/squeue.
# Knobs (environment): SLURM_CPUS (CPUs of the node, default 2), SLURMCTLD_PORT (6817),
# SLURMD_PORT (6818), CRED_EXPIRE (seconds a requeued job waits before it may start again;
# SLURM's default is 120, the least it accepts is 5; we use 5 so requeue tests stay fast).
#
# The settings follow docs/slurm.md "Local SLURM test tier": proctrack/linuxproc and task/none
# avoid cgroups, which containers usually do not delegate.
set -euo pipefail

usage() { echo "usage: $0 {start|stop|env|install} DIR" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
cmd=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
conf=$dir/slurm.conf
# shellcheck source=slurm/slurm_conf.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm_conf.sh"

install_slurm() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    echo "local_slurm: installing slurmctld slurmd slurm-client munge with apt" >&2
    if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        slurmctld slurmd slurm-client munge; } >"$dir/apt.log" 2>&1; then
        echo "local_slurm: apt-get failed ($dir/apt.log):" >&2
        tail -n 5 "$dir/apt.log" >&2
        return 1
    fi
}

write_conf() {
    local host cpus
    host=$(hostname -s)
    cpus=${SLURM_CPUS:-2}
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    {
        echo "# Written by slurm/local_slurm.sh: a one-node test cluster, everything under $dir."
        cat <<EOF
ClusterName=local
SlurmctldHost=$host
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
SlurmdSpoolDir=$dir/spool
SlurmdPidFile=$dir/slurmd.pid
SlurmdLogFile=$dir/log/slurmd.log
EOF
        slurm_conf_common "$dir"
        cat <<EOF
NodeName=$host CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    } >"$conf"
}

wait_idle() {
    local host state
    host=$(hostname -s)
    for _ in $(seq 300); do
        state=$(SLURM_CONF=$conf sinfo -h -n "$host" -o %T 2>/dev/null || true)
        if [[ $state == idle* ]]; then
            return 0
        fi
        sleep 0.1
    done
    echo "local_slurm: node $host not idle after 30 s (state: ${state:-none}); see $dir/log" >&2
    return 1
}

stop_pidfile() {
    local pidfile=$1 pid
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$pidfile"
}

case $cmd in
start)
    [[ $(id -u) -eq 0 ]] || { echo "local_slurm: needs root (runs slurmd as root)" >&2; exit 1; }
    install_slurm
    write_conf
    start_munge "$dir"
    # -c: clear previous state (a fresh cluster); -i: ignore state files that do not match.
    SLURM_CONF=$conf slurmctld -c -i
    SLURM_CONF=$conf slurmd -c
    wait_idle
    echo "export SLURM_CONF=$conf"
    ;;
stop)
    # Jobs still running would leave slurmstepd processes behind: cancel them first.
    if [[ -f $dir/slurmctld.pid ]]; then
        SLURM_CONF=$conf scancel --full --quiet --user=root 2>/dev/null || true
    fi
    stop_pidfile "$dir/slurmd.pid"
    stop_pidfile "$dir/slurmctld.pid"
    stop_pidfile "$dir/munge/munged.pid"
    ;;
env)
    echo "export SLURM_CONF=$conf"
    ;;
install)
    install_slurm
    ;;
*)
    usage
    ;;
esac
