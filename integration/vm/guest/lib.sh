# Shared by the guest scripts: attach/detach with overlaybd-attach over the frontend $F, and
# checks that a frontend left nothing behind. The guest runs under software emulation on a
# possibly loaded host: every wait is for an event, bounded by a wide deadline (it only costs
# time when something fails), never a fixed sleep.
HBA=/sys/kernel/config/target/core/user_999999999
fail() { echo "FAIL($F): $*"; exit 1; }
deadline() { echo $(($(date +%s) + $1)); } # $1 seconds from now
before() { [ "$(date +%s)" -lt "$1" ]; }   # $1 a deadline
running() { # $1 pid: alive and not a zombie (the shell may reap a background job late)
  st=$(grep '^State:' "/proc/$1/status" 2>/dev/null) && [ "${st#*Z}" = "$st" ]
}
wait_gone() { # $1 pid, $2 seconds: until the process has exited
  end=$(deadline "$2")
  while running "$1"; do before "$end" || return 1; sleep 0.1; done
}
attach() { # $1 config -> DEV, A
  # (the output file is removed first: the shell opens it for the background job only later,
  # and a previous device path there must not be read as this one's)
  rm -f /tmp/attach.out /tmp/attach.err
  overlaybd-attach --frontend "$F" --run-dir /run/obd "$1" > /tmp/attach.out 2> /tmp/attach.err &
  A=$!
  end=$(deadline 300)
  while before "$end"; do DEV=$(head -1 /tmp/attach.out 2>/dev/null || true); [ -b "$DEV" ] && return 0; running $A || break; sleep 0.1; done
  fail "no device: $(cat /tmp/attach.err)"
}
attach_many() { # $@ configs, served by one process -> DEVS, A
  rm -f /tmp/attach.out /tmp/attach.err
  overlaybd-attach --frontend "$F" --run-dir /run/obd "$@" > /tmp/attach.out 2> /tmp/attach.err &
  A=$!
  end=$(deadline 300)
  while before "$end"; do
    [ "$(wc -l < /tmp/attach.out 2>/dev/null)" = $# ] && { DEVS=$(cat /tmp/attach.out); return 0; }
    running $A || break; sleep 0.1
  done
  fail "not all devices attached: $(cat /tmp/attach.err)"
}
detach() {
  kill -TERM $A
  wait_gone $A 600 || fail "overlaybd-attach did not exit after SIGTERM: $(cat /tmp/attach.err)"
  wait $A || fail "overlaybd-attach exited with $?: $(cat /tmp/attach.err)"
}
expect_kind() { # the device node matches the frontend
  case $F:$DEV in ublk:/dev/ublkb*|tcmu:/dev/sd*|fuse-loop:/dev/loop*) ;; *) fail "unexpected device $DEV";; esac
}
leftovers() { # what a frontend left in the kernel
  case $F in
    ublk) ls /sys/class/ublk-char 2>/dev/null ;;
    tcmu) ls -d $HBA/dev_* /sys/kernel/config/target/loopback/naa.* /sys/block/sd* 2>/dev/null ;;
    fuse-loop) grep overlaybd /proc/mounts; for l in /sys/block/loop*/loop/backing_file; do [ -f "$l" ] && cat "$l"; done ;;
  esac
}
check_clean() { # the kernel removes some entries when their last user goes, asynchronously
  end=$(deadline 300)
  while [ -n "$(leftovers)" ]; do before "$end" || fail "left behind: $(leftovers | tr '\n' ' ')"; sleep 0.1; done
}
