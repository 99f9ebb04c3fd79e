#!/usr/bin/env bash
# The QEMU lab's heavy, cached parts (everything under .cache/lab/, git-ignored):
#   - Debian's own kernel (linux-image-amd64's current ABI), unpacked, not installed
#   - gpio-sim (with irq_sim compiled in), v4l2-mem2mem and vicodec, built as
#     out-of-tree modules from linux-source-6.1 pinned to the kernel image's
#     exact version: Debian's kernel does not build them.
# Prints KEY=VALUE lines the lab test reads. A module that fails to build is
# reported (MISSING_<name>=reason) and the lab runs without it.
# Idempotent; quick when cached.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
lab="$root/.cache/lab"
mkdir -p "$lab"
cd "$lab"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive

# The ABI linux-image-amd64 points at today, e.g. 6.1.0-56-amd64.
abi="$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/.*Depends: linux-image-\(.*\)$/\1/p' | head -1)"
[ -n "$abi" ] || { echo "prepare: apt-cache knows no linux-image-amd64: run apt-get update" >&2; exit 1; }
ver="$(apt-cache show "linux-image-$abi" | sed -n 's/^Version: //p' | head -1)"

need=()
dpkg -s qemu-system-x86 >/dev/null 2>&1 || need+=(qemu-system-x86)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
dpkg -s cpio >/dev/null 2>&1 || need+=(cpio)
dpkg -s "linux-headers-$abi" >/dev/null 2>&1 || need+=("linux-headers-$abi")
# Pinned: gpio-sim reads gpiolib's internal structs, which must match the image.
[ "$(dpkg-query -W -f '${Version}' linux-source-6.1 2>/dev/null || true)" = "$ver" ] || need+=("linux-source-6.1=$ver")
if [ ${#need[@]} -gt 0 ]; then
  echo "prepare: apt-get install ${need[*]}" >&2
  $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >&2 ||
    { $SUDO apt-get update -q >&2 && $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >&2; }
fi

kdir="$lab/kernel-$abi"
if [ ! -f "$kdir/vmlinuz" ]; then
  echo "prepare: unpacking linux-image-$abi $ver" >&2
  rm -rf "$kdir" && mkdir -p "$kdir/x"
  (cd "$kdir" && apt-get download "linux-image-$abi=$ver" >&2 2>/dev/null)
  dpkg-deb -x "$kdir"/linux-image-*.deb "$kdir/x"
  cp "$kdir/x/boot/vmlinuz-$abi" "$kdir/vmlinuz.tmp"
  mv "$kdir/x/lib/modules/$abi" "$kdir/modules"
  rm -rf "$kdir/x" "$kdir"/linux-image-*.deb
  mv "$kdir/vmlinuz.tmp" "$kdir/vmlinuz"
fi

mdir="$lab/oot-$abi-$ver"
if [ ! -f "$mdir/.done" ]; then
  echo "prepare: building gpio-sim, v4l2-mem2mem, vicodec from linux-source-6.1 $ver" >&2
  rm -rf "$mdir" && mkdir -p "$mdir/src"
  tar -C "$mdir/src" --strip-components=1 -xJf /usr/src/linux-source-6.1.tar.xz \
    --wildcards 'linux-source-6.1/drivers/gpio/gpio-sim.c' 'linux-source-6.1/drivers/gpio/gpiolib*.h' \
    'linux-source-6.1/kernel/irq/irq_sim.c' 'linux-source-6.1/drivers/media/test-drivers/vicodec/*' \
    'linux-source-6.1/drivers/media/v4l2-core/v4l2-mem2mem.c'
  hdr="/usr/src/linux-headers-$abi"
  s="$mdir/src"
  # gpio-sim + irq_sim in one module: Debian leaves CONFIG_IRQ_SIM unset, and
  # 6.1 does not export irq_to_desc to modules (generic_handle_irq runs the
  # same mapped handler).
  mkdir -p "$mdir/gpio-sim"
  cp "$s"/drivers/gpio/gpio-sim.c "$s"/drivers/gpio/gpiolib*.h "$mdir/gpio-sim/"
  sed 's/handle_simple_irq(irq_to_desc(\([a-z_]*\)))/generic_handle_irq(\1)/' "$s/kernel/irq/irq_sim.c" > "$mdir/gpio-sim/irq_sim.c"
  printf 'obj-m := gpio-sim.o\ngpio-sim-y := gpio-sim-main.o irq_sim.o\n' > "$mdir/gpio-sim/Kbuild"
  mv "$mdir/gpio-sim/gpio-sim.c" "$mdir/gpio-sim/gpio-sim-main.c"
  mkdir -p "$mdir/m2m"
  cp "$s/drivers/media/v4l2-core/v4l2-mem2mem.c" "$mdir/m2m/"
  printf 'obj-m := v4l2-mem2mem.o\n' > "$mdir/m2m/Kbuild"
  mkdir -p "$mdir/vicodec"
  cp "$s"/drivers/media/test-drivers/vicodec/*.[ch] "$mdir/vicodec/"
  printf 'obj-m := vicodec.o\nvicodec-objs := vicodec-core.o codec-fwht.o codec-v4l2-fwht.o\n' > "$mdir/vicodec/Kbuild"
  log="$mdir/build.log"
  for m in gpio-sim m2m; do
    make -C "$hdr" M="$mdir/$m" modules >>"$log" 2>&1 || echo "build of $m failed: see $log" >&2
  done
  if [ -f "$mdir/m2m/Module.symvers" ]; then
    make -C "$hdr" M="$mdir/vicodec" KBUILD_EXTRA_SYMBOLS="$mdir/m2m/Module.symvers" modules >>"$log" 2>&1 || echo "build of vicodec failed: see $log" >&2
  fi
  touch "$mdir/.done"
fi

echo "ABI=$abi"
echo "VERSION=$ver"
echo "KERNEL=$kdir/vmlinuz"
echo "MODULES=$kdir/modules"
for m in gpio-sim/gpio-sim m2m/v4l2-mem2mem vicodec/vicodec; do
  n="$(basename "$m")"
  if [ -f "$mdir/$m.ko" ]; then
    echo "OOT_${n//-/_}=$mdir/$m.ko"
  else
    echo "MISSING_${n//-/_}=did not build from linux-source-6.1 $ver (log: $mdir/build.log)"
  fi
done
