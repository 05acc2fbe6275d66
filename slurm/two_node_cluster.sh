#!/usr/bin/env bash
# A two-node test cluster on this machine: two network namespaces on a bridge, each a host of
# its own (address, hostname, /etc/hosts), optionally with SLURM (slurmctld on the bridge, one
# slurmd per node).
#
#   slurm/two_node_cluster.sh start DIR        create the bridge and the nodes node1 and node2
#   slurm/two_node_cluster.sh slurm DIR        start munged, slurmctld and a slurmd per node;
#                                              wait until both nodes are idle
#   slurm/two_node_cluster.sh exec DIR NODE CMD...  run CMD on NODE (node1 or node2), in the
#                                              caller's working directory
#   slurm/two_node_cluster.sh link DIR NODE up|down  cable NODE to the bridge, or pull its cable
#   slurm/two_node_cluster.sh kill DIR NODE [SIG]    send SIG (default KILL) to every process
#                                              running on NODE except its holder and slurmd:
#                                              the node's workload dies as with a crash (KILL)
#                                              or a shutdown (TERM)
#   slurm/two_node_cluster.sh crash DIR NODE   SIGKILL everything on NODE, slurmd included (a
#                                              node that dies whole); `slurmd DIR NODE` boots
#                                              its slurmd again
#   slurm/two_node_cluster.sh stop DIR         kill every process on the nodes, stop the daemons
#                                              (by pid), delete the namespaces and the bridge
#   slurm/two_node_cluster.sh env DIR          print the variables of this cluster, for eval
#
# Needs root. Knobs (environment, read by `start`, then kept in DIR/cluster.env):
#   NET_PREFIX  prefix of every interface and namespace name (default md; at most 6 characters):
#               bridge <prefix>br, namespaces <prefix>-node1/2, host ends of the veth pairs
#               <prefix>n1/2
#   SUBNET      first three octets of the /24 (default 10.231.0): node1 .1, node2 .2, the bridge
#               (the controller's address, slurmctld) .254
#   SLURMCTLD_PORT, SLURMD_PORT, CRED_EXPIRE  as in slurm/local_slurm.sh
#
# What a node is: a network namespace (its own interfaces, addresses, routes and port space; its
# loopback reaches only itself), a UTS namespace (its own hostname, `hostname -s` = node1) and a
# mount namespace in which DIR/hosts is /etc/hosts (node1, node2 and ctl resolve to the cluster's
# addresses, as DNS would on a real cluster). One long-lived holder process per node keeps the
# three namespaces; `exec` enters them by the holder's pid (DIR/node1.pid). Everything else is
# shared with the machine: one kernel, one filesystem (so a run directory is a "shared
# filesystem"), the same CPUs, clock and users. Traffic between the nodes goes through each
# node's veth pair and the bridge, never over a loopback interface: pulling a node's cable
# (`link DIR node2 down`) cuts it off as a switch port going down would.
#
# What it cannot model: separate kernels or clocks, a real NIC (no latency, bandwidth, packet loss
# or MTU problems unless added with tc), NCCL or InfiniBand/RoCE (gloo over TCP only), a node
# that reboots, or filesystems that differ between nodes.
#
# Every file lives under DIR: the hosts file, pid files, SLURM's config, state, spool and logs.
set -euo pipefail

usage() {
    echo "usage: $0 {start|slurm|stop|env} DIR | exec DIR NODE CMD... | link DIR NODE up|down" \
        "| kill DIR NODE [SIGNAL] | crash DIR NODE | slurmd DIR NODE" >&2
    exit 2
}
[[ $# -ge 2 ]] || usage
cmd=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
shift 2
NODES=(node1 node2)
# shellcheck source=slurm/slurm_conf.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm_conf.sh"

die() { echo "two_node_cluster: $*" >&2; exit 1; }

load_env() {
    [[ -f $dir/cluster.env ]] || die "no cluster in $dir (run: $0 start $dir)"
    # shellcheck source=/dev/null
    source "$dir/cluster.env"
}

node_index() {  # node1 -> 1
    case $1 in
    node1) echo 1 ;;
    node2) echo 2 ;;
    *) echo "two_node_cluster: NODE: got '$1', expected node1 or node2" >&2; exit 2 ;;
    esac
}

write_env() {
    local prefix=${NET_PREFIX:-md} subnet=${SUBNET:-10.231.0}
    [[ $prefix =~ ^[a-z][a-z0-9]{0,5}$ ]] \
        || { echo "two_node_cluster: NET_PREFIX: got '$prefix', expected 1-6 of [a-z0-9]" >&2; exit 2; }
    [[ $subnet =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] \
        || { echo "two_node_cluster: SUBNET: got '$subnet', expected three octets, e.g. 10.231.0" >&2; exit 2; }
    cat >"$dir/cluster.env" <<EOF
PREFIX=$prefix
SUBNET=$subnet
BRIDGE=${prefix}br
CTL_ADDR=$subnet.254
NODE1_ADDR=$subnet.1
NODE2_ADDR=$subnet.2
SLURMCTLD_PORT=${SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SLURMD_PORT:-6818}
CRED_EXPIRE=${CRED_EXPIRE:-5}
EOF
}

start_node() {  # $1: node1|node2
    local node=$1 i ns veth addr holder
    i=$(node_index "$node")
    ns=$PREFIX-$node
    veth=${PREFIX}n$i
    addr=$SUBNET.$i
    ip netns add "$ns"
    ip link add "$veth" type veth peer name eth0 netns "$ns"
    ip link set "$veth" master "$BRIDGE" up
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    # The holder: its own hostname and /etc/hosts, in the node's network namespace. nsenter and
    # unshare (no --fork) exec in place, so $! is the holder's pid. (Not `ip netns exec`: it
    # mounts a fresh /sys, without the cgroup mount that slurmd insists on reading.)
    rm -f "$dir/$node.ready"
    nsenter --net="/run/netns/$ns" unshare --uts --mount --propagation private -- bash -c '
        hostname "$1" && mount --bind "$2/hosts" /etc/hosts && touch "$2/$1.ready" \
            && exec sleep infinity' holder "$node" "$dir" </dev/null >"$dir/log/$node.holder.log" 2>&1 &
    holder=$!
    echo "$holder" >"$dir/$node.pid"
    for _ in $(seq 100); do
        [[ -f $dir/$node.ready ]] && return 0
        kill -0 "$holder" 2>/dev/null || break
        sleep 0.05
    done
    die "$node did not start: $(cat "$dir/log/$node.holder.log")"
}

start() {
    [[ $(id -u) -eq 0 ]] || die "needs root (network namespaces)"
    [[ ! -f $dir/cluster.env ]] || die "$dir already holds a cluster (stop it first)"
    write_env
    load_env
    mkdir -p "$dir/log"
    cat >"$dir/hosts" <<EOF
127.0.0.1 localhost
$NODE1_ADDR node1
$NODE2_ADDR node2
$CTL_ADDR ctl
EOF
    ip link add "$BRIDGE" type bridge
    ip addr add "$CTL_ADDR/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for node in "${NODES[@]}"; do
        start_node "$node"
    done
    echo "two_node_cluster: node1 $NODE1_ADDR, node2 $NODE2_ADDR, bridge $BRIDGE $CTL_ADDR ($dir)"
}

run_on() {  # run_on NODE CMD...: in the node's namespaces and the caller's directory
    local node=$1 pid
    node_index "$node" >/dev/null
    shift
    pid=$(cat "$dir/$node.pid" 2>/dev/null) || die "$node is not running"
    kill -0 "$pid" 2>/dev/null || die "$node is not running (holder $pid gone)"
    exec nsenter --target "$pid" --net --uts --mount -- bash -c 'cd "$1" && shift && exec "$@"' \
        run-on "$PWD" "$@"
}

write_slurm_conf() {
    mkdir -p "$dir/state" "$dir/log"
    {
        echo "# Written by slurm/two_node_cluster.sh: two nodes in network namespaces, everything under $dir."
        cat <<EOF
ClusterName=twonode
SlurmctldHost=ctl($CTL_ADDR)
SlurmctldPort=$SLURMCTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmdSpoolDir=$dir/spool-%n
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmdLogFile=$dir/log/slurmd-%n.log
EOF
        CRED_EXPIRE=$CRED_EXPIRE slurm_conf_common "$dir"
        cat <<EOF
# A node that stops answering is DOWN after this many seconds (the default, 300, is long).
SlurmdTimeout=15
NodeName=node1 NodeAddr=$NODE1_ADDR NodeHostname=node1 CPUs=${SLURM_CPUS:-2} State=UNKNOWN
NodeName=node2 NodeAddr=$NODE2_ADDR NodeHostname=node2 CPUs=${SLURM_CPUS:-2} State=UNKNOWN
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    } >"$dir/slurm.conf"
}

wait_idle() {
    local state
    for _ in $(seq 300); do
        state=$(SLURM_CONF=$dir/slurm.conf sinfo -h -o %T -n node1,node2 2>/dev/null | sort -u | tr '\n' ' ')
        if [[ $state == "idle " ]]; then
            return 0
        fi
        sleep 0.1
    done
    die "nodes not idle after 30 s (state: ${state:-none}); see $dir/log"
}

start_slurmd() {  # start_slurmd NODE: slurmd on NODE under its own name (-N)
    mkdir -p "$dir/spool-$1"
    SLURM_CONF=$dir/slurm.conf "$0" exec "$dir" "$1" slurmd -c -N "$1"
}

slurm() {
    load_env
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        || die "SLURM is not installed (slurm/local_slurm.sh start installs it with apt)"
    write_slurm_conf
    start_munge "$dir"
    # The controller runs on the machine itself and listens on the bridge's address; each
    # slurmd runs on its node under its own name (-N) and reaches the controller over the bridge.
    # slurmctld checks that its hostname is SlurmctldHost's: it gets its own UTS namespace, named
    # ctl (unshare execs in place; slurmctld daemonises and writes its pid file).
    SLURM_CONF=$dir/slurm.conf unshare --uts -- bash -c 'hostname ctl && exec slurmctld -c -i'
    for node in "${NODES[@]}"; do
        start_slurmd "$node"
    done
    wait_idle
    echo "export SLURM_CONF=$dir/slurm.conf"
}

stop_pid() {  # stop_pid PID: TERM, then KILL after 10 s
    local pid=$1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}

stop_pidfile() {
    [[ -f $1 ]] || return 0
    stop_pid "$(cat "$1")"
    rm -f "$1"
}

stop() {
    [[ -f $dir/cluster.env ]] || return 0
    load_env
    if [[ -f $dir/slurmctld.pid ]]; then
        SLURM_CONF=$dir/slurm.conf scancel --full --quiet --user=root 2>/dev/null || true
    fi
    for node in "${NODES[@]}"; do
        stop_pidfile "$dir/slurmd-$node.pid"
    done
    stop_pidfile "$dir/slurmctld.pid"
    stop_pidfile "$dir/munge/munged.pid"
    # Whatever else still runs on a node was started there by us (exec): kill it by its pid.
    for node in "${NODES[@]}"; do
        local ns=$PREFIX-$node pid
        if ip netns list | grep -qw "^$ns"; then
            for pid in $(ip netns pids "$ns"); do
                kill -9 "$pid" 2>/dev/null || true
            done
        fi
        stop_pidfile "$dir/$node.pid"
        ip netns del "$ns" 2>/dev/null || true
        ip link del "${PREFIX}n$(node_index "$node")" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    rm -f "$dir/cluster.env"
}

link() {  # link NODE up|down
    [[ $# -eq 2 && ($2 == up || $2 == down) ]] || usage
    load_env
    ip link set "${PREFIX}n$(node_index "$1")" "$2"
}

kill_node() {  # kill NODE [SIGNAL]
    [[ $# -ge 1 && $# -le 2 ]] || usage
    load_env
    local node=$1 sig=${2:-KILL} keep pid
    node_index "$node" >/dev/null
    keep=" $(cat "$dir/$node.pid" 2>/dev/null || true) $(cat "$dir/slurmd-$node.pid" 2>/dev/null || true) "
    [[ ${CRASH:-0} == 1 ]] && keep=" $(cat "$dir/$node.pid") "
    for pid in $(ip netns pids "$PREFIX-$node"); do
        [[ $keep == *" $pid "* ]] || kill -s "$sig" "$pid" 2>/dev/null || true
    done
}

case $cmd in
start) start ;;
slurm) slurm ;;
exec)
    [[ $# -ge 2 ]] || usage
    run_on "$@"
    ;;
link) link "$@" ;;
kill) kill_node "$@" ;;
crash)
    [[ $# -eq 1 ]] || usage
    CRASH=1 kill_node "$1" KILL
    rm -f "$dir/slurmd-$1.pid"
    ;;
slurmd)
    [[ $# -eq 1 ]] || usage
    load_env
    node_index "$1" >/dev/null
    start_slurmd "$1"
    ;;
stop) stop ;;
env)
    load_env
    cat "$dir/cluster.env"
    echo "SLURM_CONF=$dir/slurm.conf"
    ;;
*) usage ;;
esac
