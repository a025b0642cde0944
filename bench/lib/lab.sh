# The two-controller lab (`duetd lab`) for lab.sh and failover.sh (sourced after common.sh).
#
# lab_start starts `duetd lab` in the background; the lab starts ctrl-a and ctrl-b as its own
# children and writes DIR/ctrl-{a,b}.{toml,sock,pid,log}. Controllers restarted by hand
# (lab_restart_node) are our children. lab_stop stops the lab by PID, then whatever controller
# the pid files still name (checked to be a duetd serving this lab's configuration).

LAB_TARGET="iqn.2016-01.local.beast:target0"
LAB_LUN=1
LAB_PID=""
LAB_DIR=""
LAB_PORT=""
LAB_LINK=""

# Which portal each controller serves.
node_ip() { [[ $1 == ctrl-a ]] && echo 127.0.0.1 || echo 127.0.0.2; }
other_node() { [[ $1 == ctrl-a ]] && echo ctrl-b || echo ctrl-a; }

# The PID of a controller from its pid file, if it is alive and is our duetd; else nothing.
node_pid() {
    local pid
    pid=$(head -n1 "$LAB_DIR/$1.pid" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    alive "$pid" || return 0
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "duetd.*$LAB_DIR/$1.toml" || return 0
    echo "$pid"
}

# "role local_alua link_state" of the lab LUN on a controller ("none - 0" when it does not answer).
node_ha() {
    duetctl_json "$LAB_DIR/$1.sock" ha | python3 "$REPORT" ha "$LAB_LUN"
}

# lab_start MODE DIR LUN_MIB [EXTRA duetd lab OPTIONS]
lab_start() {
    local mode=$1 dir=$2 mib=$3
    shift 3
    LAB_DIR=$dir
    LAB_PORT=$(pick_port)
    LAB_LINK=$(pick_port)
    while [[ $LAB_LINK == "$LAB_PORT" ]]; do LAB_LINK=$(pick_port); done
    say "starting the lab: mode $mode, portals 127.0.0.1/127.0.0.2:$LAB_PORT, HA link :$LAB_LINK, dir $dir"
    RUST_LOG=${RUST_LOG:-warn} "$BIN_DIR/duetd" lab --dir "$dir" --mode "$mode" --size "${mib}MiB" \
        --port "$LAB_PORT" --link-port "$LAB_LINK" "$@" >"$dir/lab.out" 2>"$dir/lab.log" &
    LAB_PID=$!
    track_pid "$LAB_PID"
    lab_wait_roles ctrl-a ctrl-b 60 || {
        show_tail "$dir/lab.log" 30
        die "the lab did not come up (ctrl-a primary, ctrl-b secondary)"
    }
}

# lab_wait_roles PRIMARY SECONDARY SECONDS: until PRIMARY is primary and SECONDARY secondary, the
# HA link is up on both and both portals accept connections.
lab_wait_roles() {
    local p=$1 s=$2 hp="" hs="" deadline=$((SECONDS + $3))
    while ((SECONDS < deadline)); do
        hp=$(node_ha "$p")
        hs=$(node_ha "$s")
        if [[ $hp == "primary "*" 2" && $hs == "secondary "*" 2" ]] &&
            wait_port "$(node_ip "$p")" "$LAB_PORT" 1 && wait_port "$(node_ip "$s")" "$LAB_PORT" 1; then
            return 0
        fi
        if [[ -n $LAB_PID ]] && ! alive "$LAB_PID"; then
            say "the lab process ended"
            return 1
        fi
        sleep 0.2
    done
    say "timeout: $p is '$hp', $s is '$hs' (role alua link)"
    return 1
}

# Starts a controller again by hand (after kill -9), like the lab's spawn_node does.
lab_restart_node() {
    local node=$1 pid
    RUST_LOG=${RUST_LOG:-warn} "$BIN_DIR/duetd" --config "$LAB_DIR/$node.toml" \
        2>>"$LAB_DIR/$node.restart.log" </dev/null >/dev/null &
    pid=$!
    # No "Killed" job notice when a later event kills it; it is still stopped by PID at exit.
    disown "$pid"
    track_pid "$pid"
    say "  restarted $node (pid $pid)"
}

lab_stop() {
    local node pid
    [[ -n $LAB_DIR ]] || return 0
    if [[ -n $LAB_PID ]] && tr '\0' ' ' <"/proc/$LAB_PID/cmdline" 2>/dev/null | grep -q "lab --dir $LAB_DIR "; then
        say "stopping the lab (pid $LAB_PID)"
        stop_pid "$LAB_PID" 15
    fi
    for node in ctrl-a ctrl-b; do
        pid=$(node_pid "$node")
        if [[ -n $pid ]]; then
            say "stopping $node (pid $pid)"
            stop_pid "$pid" 10
        fi
    done
    LAB_PID=""
    LAB_DIR=""
}
