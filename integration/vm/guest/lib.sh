# Shared by the guest scripts: attach/detach with overlaybd-attach over the frontend $F, and
# checks that a frontend left nothing behind.
HBA=/sys/kernel/config/target/core/user_999999999
fail() { echo "FAIL($F): $*"; exit 1; }
attach() { # $1 config -> DEV, A
  overlaybd-attach --frontend "$F" --run-dir /run/obd "$1" > /tmp/attach.out 2> /tmp/attach.err &
  A=$!
  for i in $(seq 600); do DEV=$(head -1 /tmp/attach.out 2>/dev/null); [ -b "$DEV" ] && return 0; kill -0 $A 2>/dev/null || break; sleep 0.1; done
  fail "no device: $(cat /tmp/attach.err)"
}
attach_many() { # $@ configs, served by one process -> DEVS, A
  overlaybd-attach --frontend "$F" --run-dir /run/obd "$@" > /tmp/attach.out 2> /tmp/attach.err &
  A=$!
  for i in $(seq 600); do
    [ "$(wc -l < /tmp/attach.out)" = $# ] && { DEVS=$(cat /tmp/attach.out); return 0; }
    kill -0 $A 2>/dev/null || break; sleep 0.1
  done
  fail "not all devices attached: $(cat /tmp/attach.err)"
}
detach() { kill -TERM $A; wait $A || fail "overlaybd-attach exited with $?: $(cat /tmp/attach.err)"; }
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
check_clean() { # the kernel removes some entries when their last user goes: allow it 5 s
  for i in $(seq 50); do [ -z "$(leftovers)" ] && return 0; sleep 0.1; done
  fail "left behind: $(leftovers | tr '\n' ' ')"
}
