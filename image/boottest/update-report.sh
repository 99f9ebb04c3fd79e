#!/bin/bash
# Update test only (injected, never shipped): after each boot's health
# check, what the host reads off the serial console, between "@@ NAME" and
# "@@ end".
set -uo pipefail
section() { echo "@@ $1"; shift; "$@" 2>&1 || true; echo "@@ end"; }
section update-boot sh -c 'echo "slot=$(sed -n "s/.*rauc\.slot=\([AB]\).*/\1/p" /proc/cmdline) version=$(cat /etc/konsult/image-version)"'
section update-health sh -c 'systemctl show konsult-update-health -p Result -p ExecMainStatus; journalctl -b -u konsult-update-health --no-pager -o cat'
section update-rauc rauc status --detailed
section update-state cat /var/lib/konsult/update/state
section update-grubenv sh -c 'grep -v "^#" /boot/firmware/grub/grubenv'
echo "@@ update-done"
