# Shared by slurm/local_slurm.sh (one node) and slurm/two_node_cluster.sh (two nodes in network
# namespaces): the settings both test clusters need, so that a fix to one reaches the other.
# Source it; it defines functions and runs nothing.
#
#   slurm_conf_common DIR   print the common slurm.conf lines (auth, paths under DIR, process
#                           tracking, scheduler, requeue, timeouts); the caller writes the
#                           cluster's own lines (name, controller host, ports, spool, nodes)
#   start_munge DIR         start this cluster's own munged (as user munge, files under
#                           DIR/munge, socket DIR/munge/munge.socket, which AuthInfo names):
#                           clusters of concurrent test sessions on one machine share no munged,
#                           so stopping one cannot break another (a shared /run/munge daemon,
#                           stopped by the session that started it, did: every SLURM call of the
#                           others then failed with "Munge encode failed")
#
# Knobs (environment): CRED_EXPIRE (default 5: seconds a requeued job waits before it may start
# again; SLURM's default is 120 and it accepts no less than 5).

slurm_conf_common() {  # $1: DIR
    local dir=$1
    cat <<EOF
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=${CRED_EXPIRE:-5},socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmctldPidFile=$dir/slurmctld.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups (containers usually do not delegate them): see docs/slurm.md "The local SLURM test tier".
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
# Look at pending jobs every second, so a requeued job starts as soon as it may.
SchedulerParameters=sched_interval=1
ReturnToService=2
JobRequeue=1
# Keep finished jobs visible to scontrol for a while (no accounting database here).
MinJobAge=600
KillWait=5
InactiveLimit=0
EOF
}

start_munge() {  # $1: DIR
    local dir=$1 socket=$1/munge/munge.socket
    if munge -n -S "$socket" </dev/null >/dev/null 2>&1; then
        return 0  # ours, started by an earlier call
    fi
    # munged runs as user munge: its socket, pid, log and seed files go in a directory it owns.
    mkdir -p "$dir/munge"
    chown munge:munge "$dir/munge"
    chmod 0755 "$dir/munge"
    runuser -u munge -- munged --socket="$socket" --pid-file="$dir/munge/munged.pid" \
        --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"
    for _ in $(seq 50); do
        munge -n -S "$socket" </dev/null >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "slurm_conf: munged did not start (see $dir/munge/munged.log)" >&2
    return 1
}
