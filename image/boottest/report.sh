#!/bin/bash
# Boot test only: what the host reads off the serial console. Each section
# sits between "@@ NAME" and "@@ end".
set -euo pipefail
section() { echo "@@ $1"; shift; "$@" 2>&1 || true; echo "@@ end"; }
pid="$(systemctl show -p MainPID --value roomd)"
section roomd-show systemctl show roomd -p ActiveState -p SubState -p NRestarts -p Type \
  -p ActiveEnterTimestampMonotonic -p ExecMainStartTimestampMonotonic -p WatchdogUSec -p User
section time-sync systemctl show time-sync.target -p ActiveEnterTimestampMonotonic
section proc-status grep -E '^(Uid|Gid|Groups|NoNewPrivs|CapEff|CapBnd|Seccomp):' "/proc/$pid/status"
section socket ls -ln /run/konsult/
section mounts sh -c 'for m in / /boot/firmware /data /var/lib/konsult; do echo "$m $(findmnt -rno SOURCE,FSTYPE "$m")"; done'
section claim sh -c 'echo "identity: $(cat /var/lib/konsult/identity/claim-code)"; echo "card: $(grep -v "^#" /boot/firmware/konsult-claim.txt)"'
section growdata journalctl -b -u konsult-growdata --no-pager -o cat
section data-size findmnt -bno SIZE /data
section rauc rauc status
# Boot is not finished yet (getty waits), so no critical-chain: when each
# unit on roomd's path started and became active, in ms since the kernel.
section timings sh -c 'for u in NetworkManager NetworkManager-wait-online systemd-timesyncd systemd-time-wait-sync konsult-growdata konsult-claim roomd; do echo "$u: started $(( $(systemctl show -P InactiveExitTimestampMonotonic $u.service) / 1000 )) ms, active $(( $(systemctl show -P ActiveEnterTimestampMonotonic $u.service) / 1000 )) ms"; done'
section security systemd-analyze security --no-pager roomd
# Issue 19: the kiosk, started after roomd's READY=1, as its own user. The
# host takes screendumps meanwhile; here only what systemd and /proc say.
kiosk_show() { systemctl show konsult-kiosk -p ActiveState -p SubState -p NRestarts -p MainPID -p User \
  -p ExecMainStartTimestampMonotonic -p ActiveEnterTimestampMonotonic; }
for _ in $(seq 1 120); do
  [ "$(systemctl show -P ActiveState konsult-kiosk)" = active ] && break
  sleep 0.5
done
section kiosk-show kiosk_show
section drm sh -c 'ls -l /dev/dri/; lsmod | grep -E "^(virtio_gpu|drm) "'
section display-source sh -c 'systemctl show konsult-boottest-screen -p ActiveState -p ConditionResult; ls -ln /run/konsult/'
kpid="$(systemctl show -P MainPID konsult-kiosk)"
section kiosk-proc-status sh -c "grep -E '^(Uid|NoNewPrivs|CapEff|CapBnd|Seccomp):' /proc/$kpid/status; cat /proc/$kpid/comm"
# Process names only: a command line would carry the page's secret.
section kiosk-procs sh -c 'ps -eo user:20,comm --no-headers | grep -E "cage|chromium" | sort | uniq -c'
# The kiosk's processes stay in its unit's cgroup, where IPAddressDeny=,
# DevicePolicy= and MemoryMax= hold (a logind session would move them).
section kiosk-cgroup sh -c 'cat "/proc/$(systemctl show -P MainPID konsult-kiosk)/cgroup"; systemctl show konsult-kiosk -p IPAddressDeny -p DevicePolicy -p MemoryMax'
section kiosk-ps sh -c 'ps -eo user:16,pid,ppid,stat,wchan:24,comm | grep -E "^konsult-kiosk"'
section kiosk-policy ls -ln /etc/chromium/policies/managed/
# Any local user may read every process's command line: the page's secret
# must be on none (the kiosk hands Chromium a private file, not the URL).
# The secret reaches grep on stdin, so grep's own command line lacks it.
section kiosk-secret sh -c 'cut -d/ -f4 /run/konsult/display.url | runuser -u nobody -- sh -c "echo cmdlines-with-secret: \$(grep -lsF -f - /proc/[0-9]*/cmdline | wc -l)"'
# Issue 14: roomd logs into its own journal namespace, and a factory reset
# wipes that namespace and nothing else. A line in the system journal from
# another program must survive the reset; the first roomd's lines must not.
tag="boottest-marker-$(cat /proc/sys/kernel/random/uuid)"
logger -t konsult-boottest "$tag"
# Everything in roomd's namespace up to $cut was logged before the reset.
cut="$(date +%s)"
sleep 1.1
section log-before sh -c "echo \"namespace: \$(journalctl -q --namespace=konsult --until=@$cut --no-pager -o cat | grep -c msg=ready)\"; echo \"system: \$(journalctl -q _SYSTEMD_UNIT=roomd.service --no-pager -o cat | wc -l)\""
roomctl --socket /run/konsult/roomd.sock factory-reset --yes >/dev/null 2>&1 || echo "roomctl factory-reset failed"
newpid=""
for _ in $(seq 1 240); do
  newpid="$(systemctl show -p MainPID --value roomd)"
  if [ "$(systemctl show -p InactiveExitTimestampMonotonic --value konsult-reset.service)" != 0 ] &&
     [ "$(systemctl show -p ActiveState --value konsult-reset.service)" != activating ] &&
     [ ! -e /var/lib/konsult/factory-reset ] && [ "$(systemctl show -p ActiveState --value roomd)" = active ] &&
     [ "$(journalctl -q --namespace=konsult --since=@$cut --no-pager -o cat | grep -c msg=ready)" -ge 1 ]; then
    break
  fi
  sleep 0.5
done
section log-after sh -c "echo \"pids: $pid -> $newpid\"; \
  echo \"before reset in namespace: \$(journalctl -q --namespace=konsult --until=@$cut --no-pager -o cat | wc -l)\"; \
  echo \"new in namespace: \$(journalctl -q --namespace=konsult --since=@$cut --no-pager -o cat | grep -c msg=ready)\"; \
  echo \"system marker: \$(journalctl -q -t konsult-boottest --no-pager -o cat | grep -c $tag)\"; \
  systemctl show konsult-reset.service -p Result -p NRestarts; \
  journalctl -b -u konsult-reset.service --no-pager -o short-monotonic | tail -n 8; \
  journalctl --namespace=konsult --header 2>&1 | grep -E 'File path|State:|Head realtime' ; \
  ls -la /var/log/journal/*/ /run/log/journal/ 2>&1 | tail -n 20"
# The kiosk comes back after a crash: kill it, wait for a new one. The
# host then checks that the idle screen is painted again.
# roomd's restart by the factory reset restarted the kiosk too (BindsTo=,
# WantedBy=roomd.service): wait for that one first.
for _ in $(seq 1 120); do
  [ "$(systemctl show -P ActiveState konsult-kiosk)" = active ] && break
  sleep 0.5
done
section kiosk-reset kiosk_show
old="$(systemctl show -P MainPID konsult-kiosk)"
systemctl kill -s SIGKILL konsult-kiosk
for _ in $(seq 1 120); do
  new="$(systemctl show -P MainPID konsult-kiosk)"
  [ "$new" != 0 ] && [ "$new" != "$old" ] && [ "$(systemctl show -P ActiveState konsult-kiosk)" = active ] && break
  sleep 0.5
done
section kiosk-after sh -c "echo \"pids: $old -> \$(systemctl show -P MainPID konsult-kiosk)\"; systemctl show konsult-kiosk -p ActiveState -p NRestarts -p Result"
section kiosk-procs-late sh -c 'ps -eo user:16,pid,ppid,stat,wchan:24,comm | grep -E "^konsult-kiosk"'
section kiosk-journal sh -c "{ journalctl -b -u konsult-kiosk -u konsult-boottest-screen --no-pager -o cat; echo '-- the kiosk user:'; journalctl -b _UID=$(id -u konsult-kiosk) --no-pager -o cat; } | sed -E 's#(127[.]0[.]0[.]1:8788/)[A-Za-z0-9_-]+#\\1SECRET#g' | tail -n 80"
section failed systemctl --failed --no-legend --plain
section journal journalctl --namespace=konsult -b -u roomd --no-pager -o cat
section nft nft list ruleset
section listening ss -Hlntu
echo "@@ done"
