#!/usr/bin/env bash
# Boot arcbox-agent in a real micro-VM: QEMU (TCG, microvm machine), a Debian
# cloud kernel, a busybox initramfs trampoline that mounts the host share
# (virtio-fs, tag `arcbox`, served by virtiofsd) and execs the agent from it
# as PID 1, as the reference boots, and guest vsock exposed on a host Unix
# socket by vhost-device-vsock ("hybrid vsock"). `--embedded` boots the agent
# from inside the initramfs instead, for hosts without virtio-fs.
#
# Usage: scripts/vm.sh <command> [options]
#   deps              install qemu, busybox, lz4, cpio, socat, a Debian cloud
#                     kernel, vhost-device-vsock and virtiofsd (idempotent,
#                     cached)
#   build-agent       build the static agent binary, print its path
#   build-initramfs   pack both initramfs images (agent inside; trampoline
#                     that boots the agent from the share), print their paths
#   rootfs            build the Debian rootfs image (docker.io, containerd, ...)
#   prepare [--rootfs]  deps + build-agent + build-initramfs (+ rootfs); prints
#                     key=value lines for tests/support/vm.rs
#   run [--smp N] [--mem SIZE] [--rootfs] [--runtime] [--data-disk PATH]
#       [--nic] [--append ARGS] [--share DIR | --embedded] [--users DIR]
#                     boot, wait for READY, print the hvsock: address, stay up
#                     until Ctrl-C (or until the guest powers off). --runtime:
#                     the Debian rootfs plus a data disk (blank sparse 8 GiB,
#                     or PATH, created if absent and kept), 2 vCPUs, 2 GiB.
#                     The `arcbox` share is DIR (default: a per-run folder
#                     laid out like the reference's: bin/arcbox-agent,
#                     runtime/bin/, log/); --embedded: no share, the agent
#                     from the image; --users DIR: the optional `users` share
#   e2e [ARGS...]     cargo test --test vm_e2e --test vm_runtime -- --ignored
#                     --test-threads=1 (one VM at a time)
#   bench             boot-to-ready figures (median of 5 boots, min, max)
#
# Environment:
#   ARCBOX_VM_CACHE      cache folder (default ~/.cache/arcbox-vm)
#   ARCBOX_AGENT_BIN     use this agent binary instead of building one
#   ARCBOX_VM_TIMEOUT    seconds to wait for the guest's READY dial (default 60)
#   ARCBOX_VM_KEEP=1     keep the run folder (console log) after `run`
#
# Every wait has a timeout, and QEMU, vhost-device-vsock and the READY listener
# are stopped on every exit path (trap on EXIT/INT/TERM).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${ARCBOX_VM_CACHE:-$HOME/.cache/arcbox-vm}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
OUT_DIR=$TARGET_DIR/vm
# The static agent gets its own target dir: its artifacts share nothing with
# host debug builds anyway, and a build here then never holds the lock of a
# developer's `cargo build`.
AGENT_TARGET_DIR=$OUT_DIR/cargo
RUST_TARGET=x86_64-unknown-linux-gnu
VHOST_VERSION=0.3.0
# vhost-device-vsock turns a host-side half-close into a full shutdown and
# ignores the guest's (rust-vmm/vhost-device#874); this patch passes both on,
# which the Docker API proxy needs (`docker run` without -i, `docker run -i`
# with stdin). See docs/VM-HARNESS.md.
VHOST_PATCH=$REPO_ROOT/scripts/vhost-device-vsock-half-close.patch
# virtiofsd, the virtio-fs project's daemon (Rust; Debian bookworm packages
# none but QEMU 7.2's deprecated C one), built from the crate registry.
VIRTIOFSD_VERSION=1.14.0
GUEST_CID=3
RPC_PORT=1024
READY_PORT=1025
# Modules the trampoline loads (dependencies are added from modules.dep, and
# the load order is computed from it). Everything else the agent may want is
# copied into the image too (see IMAGE_MODULES).
BOOT_MODULES="virtio_mmio virtio_pci vmw_vsock_virtio_transport virtio_blk virtio_net virtiofs"
IMAGE_MODULES="$BOOT_MODULES fuse btrfs overlay ext4 bridge veth br_netfilter nf_nat
  nf_conntrack xt_conntrack xt_MASQUERADE xt_addrtype iptable_nat iptable_filter
  ip_tables x_tables nft_compat nf_tables tun dummy loop"
ROOTFS_PACKAGES="docker.io,containerd,runc,crun,catatonit,btrfs-progs,iptables,kmod,iproute2,procps"
# What the runtime needs in the share's runtime/bin (the reference's list,
# plus docker-init and docker-proxy), copied from the Debian rootfs packages.
RUNTIME_BINARIES="usr/sbin/dockerd usr/sbin/docker-proxy usr/bin/docker-init usr/bin/containerd
  usr/bin/containerd-shim-runc-v2 usr/sbin/runc"

log() { printf 'vm.sh: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }
as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
now_ns() { date +%s%N; }

# --- deps ----------------------------------------------------------------

pkg_installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

deps_apt() {
	local missing=() p
	for p in qemu-system-x86 busybox-static lz4 cpio socat patch "$@"; do
		pkg_installed "$p" || missing+=("$p")
	done
	[ "${#missing[@]}" -eq 0 ] && return 0
	log "installing ${missing[*]} (log: $CACHE/apt.log)"
	{
		as_root timeout 300 apt-get update -qq &&
			as_root env DEBIAN_FRONTEND=noninteractive timeout 600 \
				apt-get install -y -qq --no-install-recommends "${missing[@]}"
	} >"$CACHE/apt.log" 2>&1 || {
		tail -n 20 "$CACHE/apt.log" >&2
		die "apt-get install ${missing[*]} failed"
	}
}

# Newest linux-image-6.1.0-N-cloud-amd64 that apt knows about.
newest_cloud_kernel() {
	apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$' |
		awk '{print $1}' | sort -V | tail -n1
}

# The bzImage payload is LZ4 (legacy frame): find the magic 02 21 4c 18 and
# decompress from there to get the ELF vmlinux, which QEMU boots via PVH.
extract_vmlinux() {
	local vmlinuz=$1 out=$2 off
	while read -r off; do
		# lz4 complains about the trailing non-LZ4 bytes; the ELF check decides.
		tail -c +"$((off + 1))" "$vmlinuz" | lz4 -dc >"$out.tmp" 2>/dev/null || true
		if [ "$(head -c 4 "$out.tmp" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ]; then
			mv "$out.tmp" "$out"
			return 0
		fi
	done < <(LC_ALL=C grep -obUaP '\x02\x21\x4c\x18' "$vmlinuz" | cut -d: -f1)
	rm -f "$out.tmp"
	return 1
}

deps_kernel() {
	local env=$CACHE/kernel.env
	if [ -f "$env" ]; then
		# shellcheck disable=SC1090
		. "$env"
		[ -f "${VMLINUX:-}" ] && [ -f "${KROOT:-}/lib/modules/${KREL:-}/modules.dep" ] && return 0
	fi
	local pkg
	pkg=$(newest_cloud_kernel)
	if [ -z "$pkg" ]; then
		as_root timeout 300 apt-get update -qq
		pkg=$(newest_cloud_kernel)
	fi
	[ -n "$pkg" ] || die "no linux-image-6.1.0-*-cloud-amd64 package found"
	local krel=${pkg#linux-image-}
	local dir=$CACHE/kernel/$krel
	log "fetching kernel $pkg"
	rm -rf "$dir" && mkdir -p "$dir/dl"
	(cd "$dir/dl" && timeout 300 apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2)
	local deb ver
	deb=$(ls "$dir"/dl/*.deb)
	ver=$(dpkg-deb -f "$deb" Version)
	dpkg-deb -x "$deb" "$dir/root"
	rm -rf "$dir/dl"
	[ -d "$dir/root/lib/modules/$krel" ] || die "no modules in $pkg"
	busybox depmod -b "$dir/root" "$krel"
	extract_vmlinux "$dir/root/boot/vmlinuz-$krel" "$dir/vmlinux" ||
		die "could not extract vmlinux from $pkg"
	cat >"$env.tmp" <<EOF
KREL=$krel
KPKG=$pkg
KVERSION=$ver
KROOT=$dir/root
VMLINUX=$dir/vmlinux
EOF
	mv "$env.tmp" "$env"
	log "kernel $krel ($ver) ready"
}

vhost_dir() {
	printf '%s/vhost-%s-%s\n' "$CACHE" "$VHOST_VERSION" "$(sha256sum <"$VHOST_PATCH" | cut -c1-12)"
}

# The crate's source as cargo unpacked it (a plain `cargo install` of the
# same version unpacks it, so that is the fallback).
unpacked_vhost_source() {
	local d
	for d in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"vhost-device-vsock-$VHOST_VERSION"; do
		[ -f "$d/Cargo.toml" ] && printf '%s\n' "$d" && return 0
	done
	return 0
}

vhost_source() {
	local home=${CARGO_HOME:-$HOME/.cargo} src
	src=$(unpacked_vhost_source)
	if [ -z "$src" ]; then
		log "cargo install vhost-device-vsock $VHOST_VERSION (unpatched, for its source; about a minute)"
		timeout 1200 cargo install --quiet --locked vhost-device-vsock \
			--version "$VHOST_VERSION" --root "$CACHE/vhost" >&2
		src=$(unpacked_vhost_source)
	fi
	[ -n "$src" ] || die "no source of vhost-device-vsock $VHOST_VERSION under $home/registry/src"
	printf '%s\n' "$src"
}

deps_vhost() {
	local dir
	dir=$(vhost_dir)
	[ -x "$dir/bin/vhost-device-vsock" ] && return 0
	local src
	src=$(vhost_source)
	log "building vhost-device-vsock $VHOST_VERSION with $(basename "$VHOST_PATCH") (about a minute)"
	rm -rf "$dir.src" && cp -r "$src" "$dir.src"
	patch -d "$dir.src" -p1 --quiet <"$VHOST_PATCH" || die "cannot apply $VHOST_PATCH"
	timeout 1200 cargo install --quiet --locked --offline --path "$dir.src" --root "$dir" >&2 ||
		timeout 1200 cargo install --quiet --locked --path "$dir.src" --root "$dir" >&2
	rm -rf "$dir.src"
	[ -x "$dir/bin/vhost-device-vsock" ] || die "vhost-device-vsock did not install"
}

virtiofsd_path() {
	printf '%s/virtiofsd-%s/bin/virtiofsd\n' "$CACHE" "$VIRTIOFSD_VERSION"
}

# virtiofsd links libseccomp and libcap-ng; ~3-4 min to compile on 2 cores.
deps_virtiofsd() {
	local bin
	bin=$(virtiofsd_path)
	[ -x "$bin" ] && return 0
	deps_apt libseccomp-dev libcap-ng-dev
	log "cargo install virtiofsd $VIRTIOFSD_VERSION (a few minutes)"
	local start=$SECONDS
	timeout 2400 cargo install --quiet --locked virtiofsd --version "$VIRTIOFSD_VERSION" \
		--root "${bin%/bin/virtiofsd}" >&2 || die "cargo install virtiofsd failed"
	[ -x "$bin" ] || die "virtiofsd did not install"
	log "virtiofsd $VIRTIOFSD_VERSION built in $((SECONDS - start)) s"
}

cmd_deps() {
	mkdir -p "$CACHE"
	# One installer at a time (parallel test binaries, CI reruns).
	exec 9>"$CACHE/.deps.lock"
	timeout 1800 flock 9 || die "timed out waiting for $CACHE/.deps.lock"
	deps_apt "$@"
	# The runtime suite drives the guest's dockerd with the host's Docker CLI.
	have docker || deps_apt docker.io
	deps_kernel
	deps_vhost
	deps_virtiofsd
	exec 9>&-
}

load_kernel_env() {
	[ -f "$CACHE/kernel.env" ] || die "no kernel: run scripts/vm.sh deps"
	# shellcheck disable=SC1091
	. "$CACHE/kernel.env"
}

# --- agent and initramfs -------------------------------------------------

agent_path() {
	if [ -n "${ARCBOX_AGENT_BIN:-}" ]; then
		printf '%s\n' "$ARCBOX_AGENT_BIN"
	else
		printf '%s\n' "$AGENT_TARGET_DIR/$RUST_TARGET/release/arcbox-agent"
	fi
}

cmd_build_agent() {
	local bin
	bin=$(agent_path)
	if [ -z "${ARCBOX_AGENT_BIN:-}" ]; then
		# The explicit --target keeps crt-static off build scripts and proc
		# macros, and keeps this build apart from the host-target one.
		(cd "$REPO_ROOT" && RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR="$AGENT_TARGET_DIR" \
			timeout 3600 cargo build --release --target "$RUST_TARGET" \
			-p arcbox-agent-bin --bin arcbox-agent >&2)
	fi
	[ -x "$bin" ] || die "no agent binary at $bin"
	if ! head -c 4 "$bin" | grep -q ELF; then
		: # a script stand-in (development only)
	elif ! ldd "$bin" 2>&1 | grep -Eq 'not a dynamic|statically linked'; then
		die "$bin is not statically linked"
	fi
	printf '%s\n' "$bin"
}

# All modules needed by the names given, deepest dependencies first, as paths
# relative to the modules folder. modules.dep lists "path: dep1 dep2 ..." where
# each line's deps are complete (transitive).
module_closure() {
	local moddir=$1
	shift
	awk -v want="$*" '
		function base(p) { sub(/.*\//, "", p); sub(/\.ko(\.[a-z]+)?$/, "", p); gsub(/-/, "_", p); return p }
		BEGIN { n = split(want, w, /[ \t\n]+/) }
		FNR == NR { builtin[base($1)] = 1; next }
		{
			sub(/:$/, "", $1); m = base($1); path[m] = $1; ndeps[m] = NF - 1
			for (i = 2; i <= NF; i++) dep[m, i - 1] = base($i)
		}
		function visit(m,   i) {
			if (seen[m]++ || !(m in path)) return
			for (i = ndeps[m]; i >= 1; i--) visit(dep[m, i])
			print path[m]
		}
		END {
			for (i = 1; i <= n; i++) {
				if (w[i] == "" || w[i] in builtin) continue
				if (w[i] in path) visit(w[i])
				else print "vm.sh: no module " w[i] > "/dev/stderr"
			}
		}
	' "$moddir/modules.builtin" "$moddir/modules.dep"
}

# Copies the agent into an image, stripped: the release profile keeps line
# tables, which triple the size, and a bigger initramfs costs about 0.5 s of
# boot under TCG. The unstripped binary stays in the target dir.
install_agent() {
	install -m 755 "$1" "$2"
	if [ -z "${ARCBOX_VM_NO_STRIP:-}" ] && have strip && head -c 4 "$1" | grep -q ELF; then
		strip "$2"
	fi
}

# Write the /init trampoline. $1 = mode (initramfs: exec the agent inside;
# share: mount the `arcbox` share and exec the agent from it, as the
# reference's /sbin/init does; rootfs: switch_root into /dev/vda, to the
# share's agent when the command line says arcbox_vm.share), $2 = KREL,
# stdin = module paths in load order. A busybox script: busybox is in the
# image anyway (insmod, mount, switch_root), and the script's own cost is a
# few ms of the boot (docs/VM-HARNESS.md has the figures).
write_init() {
	local mode=$1 krel=$2 m
	cat <<'EOF'
#!/bin/sh
# arcbox-vm trampoline (generated by scripts/vm.sh): mount the kernel
# filesystems, load the virtio/vsock/virtio-fs modules, then exec the agent
# as PID 1.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
if ! grep -qw arcbox_vm.no_modules /proc/cmdline; then
EOF
	while read -r m; do
		printf '\tinsmod /lib/modules/%s/%s 2>/dev/null || echo "trampoline: insmod %s failed"\n' \
			"$krel" "$m" "${m##*/}"
	done
	echo 'fi'
	# mount_share ROOT: the host share at ROOT/arcbox, or power off saying why.
	cat <<'EOF'
mount_share() {
	mkdir -p "$1/arcbox"
	mount -t virtiofs arcbox "$1/arcbox" ||
		{ echo "trampoline: cannot mount the arcbox share (no virtio-fs device tagged arcbox?)"; poweroff -f; }
	[ -x "$1/arcbox/bin/arcbox-agent" ] ||
		{ echo "trampoline: the arcbox share has no bin/arcbox-agent"; poweroff -f; }
}
EOF
	case $mode in
	rootfs)
		cat <<'EOF'
share=0
grep -qw arcbox_vm.share /proc/cmdline && share=1
root=/dev/vda
i=0
while [ ! -b "$root" ] && [ "$i" -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
mkdir -p /newroot
# The image carries the label arcbox-root, should the disks ever enumerate
# in another order.
mount -t ext4 -o rw "$root" /newroot 2>/dev/null ||
	mount -t ext4 -o rw "$(findfs LABEL=arcbox-root)" /newroot ||
	{ echo "trampoline: cannot mount the root disk"; poweroff -f; }
agent=/sbin/arcbox-agent
if [ "$share" = 1 ]; then
	mount_share /newroot
	agent=/arcbox/bin/arcbox-agent
fi
for d in dev proc sys; do mkdir -p "/newroot/$d"; mount --move "/$d" "/newroot/$d"; done
exec switch_root /newroot "$agent"
EOF
		;;
	share)
		echo 'mount_share ""'
		echo 'exec /arcbox/bin/arcbox-agent'
		;;
	*) echo 'exec /sbin/arcbox-agent' ;;
	esac
	echo 'echo "trampoline: exec of the agent failed"; poweroff -f'
}

# Pack an initramfs. $1 = mode (initramfs: agent inside; share: trampoline
# that boots the agent from the host share; rootfs: trampoline that
# switch_roots into /dev/vda), $2 = output path, $3 = the agent (initramfs).
pack_initramfs() {
	local mode=$1 out=$2 agent=${3:-}
	load_kernel_env
	local moddir=$KROOT/lib/modules/$KREL
	local stage
	stage=$(mktemp -d "${TMPDIR:-/tmp}/arcbox-initramfs.XXXXXX")
	STAGE_DIR=$stage # removed by the EXIT trap should we not get to the end
	arm_traps # again: command substitution subshells do not inherit traps
	mkdir -p "$stage"/{bin,sbin,dev,proc,sys,run,tmp,etc,newroot,lib/modules/"$KREL"}
	cp /bin/busybox "$stage/bin/busybox"
	local a
	for a in $(/bin/busybox --list); do
		[ "$a" = busybox ] || ln -s busybox "$stage/bin/$a"
	done
	if [ "$(id -u)" -eq 0 ]; then
		mknod -m 600 "$stage/dev/console" c 5 1
		mknod -m 666 "$stage/dev/null" c 1 3
	fi
	local boot_mods image_mods
	boot_mods=$(module_closure "$moddir" "$BOOT_MODULES")
	if [ "$mode" = rootfs ]; then
		image_mods=$boot_mods
	else
		# The agent loads modules itself later (finit_module + modules.dep),
		# so the image carries more than the trampoline loads.
		image_mods=$(module_closure "$moddir" "$IMAGE_MODULES")
	fi
	[ "$mode" != initramfs ] || install_agent "$agent" "$stage/sbin/arcbox-agent"
	local m
	for m in $image_mods; do
		mkdir -p "$stage/lib/modules/$KREL/${m%/*}"
		cp "$moddir/$m" "$stage/lib/modules/$KREL/$m"
	done
	cp "$moddir"/modules.{order,builtin,builtin.modinfo} "$stage/lib/modules/$KREL/" 2>/dev/null || true
	busybox depmod -b "$stage" "$KREL"
	printf '%s\n' "$boot_mods" | write_init "$mode" "$KREL" >"$stage/init"
	chmod 755 "$stage/init"
	mkdir -p "$(dirname "$out")"
	(cd "$stage" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -1) >"$out.tmp"
	mv "$out.tmp" "$out"
	rm -rf "$stage"
	STAGE_DIR=""
}

# Both initramfs images (printed in this order), and the stripped agent
# the share's bin/ gets.
cmd_build_initramfs() {
	local agent
	agent=$(cmd_build_agent)
	pack_initramfs initramfs "$OUT_DIR/initramfs.cpio.gz" "$agent"
	pack_initramfs share "$OUT_DIR/initramfs-share.cpio.gz"
	mkdir -p "$OUT_DIR/share-bin"
	install_agent "$agent" "$OUT_DIR/share-bin/arcbox-agent.tmp"
	mv "$OUT_DIR/share-bin/arcbox-agent.tmp" "$OUT_DIR/share-bin/arcbox-agent"
	log "initramfs: $OUT_DIR/initramfs.cpio.gz ($(du -h "$OUT_DIR/initramfs.cpio.gz" | cut -f1)), trampoline $OUT_DIR/initramfs-share.cpio.gz ($(du -h "$OUT_DIR/initramfs-share.cpio.gz" | cut -f1))"
	printf '%s\n%s\n' "$OUT_DIR/initramfs.cpio.gz" "$OUT_DIR/initramfs-share.cpio.gz"
}

# make_share DIR [RUNTIME_BIN]: lay DIR out like the reference's host share:
# bin/arcbox-agent, runtime/bin/ (the runtime's binaries, when given), log/.
# Hard links when on the same filesystem, copies otherwise.
make_share() {
	local dir=$1 runtime=${2:-} f
	mkdir -p "$dir/bin" "$dir/runtime/bin" "$dir/log"
	ln -f "$OUT_DIR/share-bin/arcbox-agent" "$dir/bin/arcbox-agent" 2>/dev/null ||
		cp "$OUT_DIR/share-bin/arcbox-agent" "$dir/bin/arcbox-agent"
	[ -n "$runtime" ] || return 0
	for f in "$runtime"/*; do
		ln -f "$f" "$dir/runtime/bin/" 2>/dev/null || cp "$f" "$dir/runtime/bin/"
	done
}

# --- rootfs image --------------------------------------------------------

rootfs_key() {
	printf '%s|%s' "$ROOTFS_PACKAGES" bookworm | sha256sum | cut -c1-12
}

# Debian bookworm from packages, cached by package list. The tree is kept
# (not the image) so the agent and modules can be refreshed cheaply.
rootfs_tree() {
	local dir
	dir=$CACHE/rootfs-$(rootfs_key)
	if [ ! -f "$dir/.complete" ]; then
		deps_apt debootstrap e2fsprogs
		log "debootstrap bookworm into $dir (a few minutes)"
		rm -rf "$dir"
		timeout 1800 debootstrap --variant=minbase \
			--include="$ROOTFS_PACKAGES" bookworm "$dir" >"$CACHE/debootstrap.log" 2>&1 ||
			die "debootstrap failed, see $CACHE/debootstrap.log"
		rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
		touch "$dir/.complete"
	fi
	printf '%s\n' "$dir"
}

cmd_rootfs() {
	# debootstrap, and the root-owned tree it makes, need root.
	[ "$(id -u)" -eq 0 ] || die "rootfs: run as root"
	local agent tree img=$OUT_DIR/rootfs.ext4
	tree=$(rootfs_tree)
	agent=$(cmd_build_agent)
	load_kernel_env
	log "rootfs image $img"
	install_agent "$agent" "$tree/sbin/arcbox-agent"
	rm -rf "$tree/lib/modules"
	mkdir -p "$tree/lib/modules"
	cp -a "$KROOT/lib/modules/$KREL" "$tree/lib/modules/"
	# The image's own kmod depmod: modprobe (dockerd's `modprobe bridge`, the
	# kernel's request_module for nf_tables when iptables-nft runs) reads
	# modules.dep.bin, which busybox depmod does not write ("Module bridge not
	# found in directory ...", then "iptables: Failed to initialize nft").
	chroot "$tree" /sbin/depmod -a "$KREL" || die "depmod in the rootfs failed"
	mkdir -p "$OUT_DIR"
	rm -f "$img"
	local size_mb
	size_mb=$(($(du -sm "$tree" | cut -f1) * 13 / 10 + 256))
	truncate -s "${size_mb}M" "$img"
	mkfs.ext4 -q -F -L arcbox-root -d "$tree" "$img" "${size_mb}M"
	pack_initramfs rootfs "$OUT_DIR/initramfs-rootfs.cpio.gz"
	# The share's runtime/bin, from the same packages. The image keeps its
	# own copies, so the embedded mode (no share) still runs the runtime.
	local b
	rm -rf "$OUT_DIR/runtime-bin" && mkdir -p "$OUT_DIR/runtime-bin"
	for b in $RUNTIME_BINARIES; do
		cp -L "$tree/$b" "$OUT_DIR/runtime-bin/" || die "no $b in the rootfs tree"
	done
	printf '%s\n' "$img"
}

# --- prepare (for tests/support/vm.rs) -------------------------------------

cmd_prepare() {
	local rootfs=0
	[ "${1:-}" = --rootfs ] && rootfs=1
	cmd_deps
	load_kernel_env
	local images
	images=$(cmd_build_initramfs)
	echo "qemu=$(command -v qemu-system-x86_64)"
	echo "vhost=$(vhost_dir)/bin/vhost-device-vsock"
	echo "virtiofsd=$(virtiofsd_path)"
	echo "share_initramfs=$(sed -n 2p <<<"$images")"
	echo "share_agent=$OUT_DIR/share-bin/arcbox-agent"
	echo "kernel=$VMLINUX"
	echo "kernel_release=$KREL"
	echo "kernel_package_version=$KVERSION"
	echo "initramfs=$(sed -n 1p <<<"$images")"
	echo "tsc_khz=$(tsc_khz)"
	echo "cmdline=$(base_cmdline)"
	if [ "$rootfs" = 1 ]; then
		local img
		img=$(cmd_rootfs)
		echo "rootfs=$img"
		echo "rootfs_initramfs=$OUT_DIR/initramfs-rootfs.cpio.gz"
		echo "runtime_bin=$OUT_DIR/runtime-bin"
	fi
}

# --- boot -----------------------------------------------------------------

# microvm under TCG hangs calibrating the TSC unless told its rate; TCG's
# rdtsc reads the host TSC, so the host's rate is right.
tsc_khz() {
	local khz
	khz=$(awk -F': *' '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)
	printf '%s\n' "${khz:-2600000}"
}

RUN_DIR=""
STAGE_DIR=""
QEMU_PID=""
VHOST_PID=""
READY_PID=""
# virtiofsd per share, and the QEMU arguments of their devices.
VIRTIOFSD_PIDS=()
FS_DEVICES=()

stop_pid() {
	local pid=$1
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	for _ in $(seq 40); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

# EXIT trap; INT and TERM exit through it with 130 and 143. In a $(...)
# subshell only that subshell's staging folder is its business.
cleanup() {
	local rc=$?
	trap - EXIT
	if [ "$BASHPID" != "$$" ]; then
		[ -z "$STAGE_DIR" ] || rm -rf "$STAGE_DIR"
		exit "$rc"
	fi
	stop_pid "$READY_PID"
	stop_pid "$QEMU_PID"
	stop_pid "$VHOST_PID"
	local p
	for p in "${VIRTIOFSD_PIDS[@]}"; do stop_pid "$p"; done
	QEMU_PID="" VHOST_PID="" READY_PID="" VIRTIOFSD_PIDS=()
	[ -z "$STAGE_DIR" ] || rm -rf "$STAGE_DIR"
	if [ -n "$RUN_DIR" ] && [ -z "${ARCBOX_VM_KEEP:-}" ]; then
		rm -rf "$RUN_DIR"
	elif [ -n "$RUN_DIR" ]; then
		log "kept $RUN_DIR"
	fi
	exit "$rc"
}

# start_virtiofsd TAG DIR [CACHE]: serves DIR on $RUN_DIR/fs-TAG.sock and
# adds the vhost-user-fs device with that tag to FS_DEVICES (QEMU starts
# after it). CACHE (default auto, which the host may change under the guest)
# is `always` for the per-run share: with `auto` every exec of runc and the
# shim from runtime/bin reads the whole binary through virtiofsd again (its
# page cache is dropped at each open), which made each `docker run` ~5x
# slower under TCG.
# No --tag: QEMU 7.1-8.0 crash on the CONFIG feature it enables; the tag is
# QEMU's. --sandbox chroot: the namespace sandbox needs unshare rights a
# container may not have; chroot keeps the guest inside DIR all the same.
start_virtiofsd() {
	local tag=$1 dir=$2 cache=${3:-auto} sock=$RUN_DIR/fs-$1.sock pid
	[ -d "$dir" ] || die "share $tag: no folder $dir"
	"$(virtiofsd_path)" --socket-path="$sock" --shared-dir="$dir" --sandbox=chroot --cache="$cache" \
		>"$RUN_DIR/virtiofsd-$tag.log" 2>&1 &
	pid=$!
	VIRTIOFSD_PIDS+=("$pid")
	for _ in $(seq 100); do
		[ -S "$sock" ] && break
		kill -0 "$pid" 2>/dev/null || die "virtiofsd ($tag) exited: $(cat "$RUN_DIR/virtiofsd-$tag.log")"
		sleep 0.05
	done
	[ -S "$sock" ] || die "virtiofsd ($tag) did not create its socket"
	FS_DEVICES+=(-chardev "socket,id=fs-$tag,path=$sock"
		-device "vhost-user-fs-device,chardev=fs-$tag,tag=$tag")
}

# boot_vm SMP MEM KERNEL INITRD APPEND [DISK...]: start the backend and QEMU in
# $RUN_DIR, wait for the guest's READY dial; sets READY_NS (ns since QEMU start).
boot_vm() {
	local smp=$1 mem=$2 kernel=$3 initrd=$4 append=$5
	shift 5
	local uds=$RUN_DIR/vm.vsock vhost
	vhost=$(vhost_dir)/bin/vhost-device-vsock
	local timeout_s=${ARCBOX_VM_TIMEOUT:-60}
	"$vhost" --vm "guest-cid=$GUEST_CID,socket=$RUN_DIR/vhost.sock,uds-path=$uds" \
		>"$RUN_DIR/vhost.log" 2>&1 &
	VHOST_PID=$!

	for _ in $(seq 100); do
		[ -S "$RUN_DIR/vhost.sock" ] && break
		kill -0 "$VHOST_PID" 2>/dev/null || die "vhost-device-vsock exited: $(cat "$RUN_DIR/vhost.log")"
		sleep 0.05
	done
	[ -S "$RUN_DIR/vhost.sock" ] || die "vhost-device-vsock did not create its socket"
	# The guest announces readiness by dialing CID 2 port READY_PORT; the
	# backend forwards that to the Unix listener <uds>_<port>.
	timeout "$timeout_s" socat -u "UNIX-LISTEN:${uds}_$READY_PORT" "OPEN:$RUN_DIR/ready,creat" &
	READY_PID=$!
	for _ in $(seq 100); do
		[ -S "${uds}_$READY_PORT" ] && break
		sleep 0.02
	done
	local disks=() n=0 d snap
	for d in "$@"; do
		# A disk given as PATH:snapshot is booted over a throwaway overlay.
		snap=""
		if [ "${d%:snapshot}" != "$d" ]; then
			d=${d%:snapshot}
			snap=,snapshot=on
		fi
		disks+=(-drive "id=disk$n,file=$d,format=raw,if=none,cache=unsafe$snap"
			-device "virtio-blk-device,drive=disk$n")
		n=$((n + 1))
	done
	# QEMU user networking, restricted: DHCP and the gateway, no way out.
	local nic=()
	[ -z "${VM_NIC:-}" ] || nic=(-netdev "user,id=net0,restrict=on" -device "virtio-net-device,netdev=net0")
	local start
	start=$(now_ns)
	qemu-system-x86_64 -nodefaults -no-user-config -nographic -no-reboot \
		-machine microvm,accel=tcg,memory-backend=mem -cpu max -smp "$smp" -m "$mem" \
		-object "memory-backend-memfd,id=mem,size=$mem,share=on" \
		-kernel "$kernel" -initrd "$initrd" -append "$append" \
		-serial "file:$RUN_DIR/console.log" \
		-chardev "socket,id=vsk,path=$RUN_DIR/vhost.sock" \
		-device vhost-user-vsock-device,chardev=vsk \
		"${FS_DEVICES[@]}" "${disks[@]}" "${nic[@]}" >"$RUN_DIR/qemu.log" 2>&1 &
	QEMU_PID=$!
	local deadline=$((start + timeout_s * 1000000000))
	while :; do
		if grep -q '^READY' "$RUN_DIR/ready" 2>/dev/null; then
			READY_NS=$(($(now_ns) - start))
			READY_LINE=$(head -n1 "$RUN_DIR/ready")
			wait "$READY_PID" 2>/dev/null || true
			READY_PID=""
			return 0
		fi
		if ! kill -0 "$QEMU_PID" 2>/dev/null; then
			log "QEMU exited before READY; qemu.log and console tail:"
			tail -n 5 "$RUN_DIR/qemu.log" >&2 || true
			tail -n 30 "$RUN_DIR/console.log" >&2 || true
			return 1
		fi
		if [ "$(now_ns)" -gt "$deadline" ]; then
			log "no READY within ${timeout_s}s; console tail:"
			tail -n 30 "$RUN_DIR/console.log" >&2 || true
			return 1
		fi
		sleep 0.01
	done
}

# tsc_early_khz: microvm under TCG hangs calibrating the TSC without it.
# tsc=reliable: with 2+ vCPUs the kernel finds the TSCs "unsynchronized" and
# falls back to jiffies (4 ms steps in every boot figure); TCG's rdtsc reads
# the host's synchronized TSC, so trusting it is right.
# The `arcbox` share's mode (booted from, absent) is added per boot.
base_cmdline() {
	printf 'console=ttyS0 reboot=t panic=-1 quiet tsc_early_khz=%s tsc=reliable cryptomgr.notests arcbox_agent.ready_port=%s' \
		"$(tsc_khz)" "$READY_PORT"
}

cmd_run() {
	local smp=2 mem="" rootfs=0 runtime=0 data_disk="" append="" share="" embedded=0 users=""
	while [ $# -gt 0 ]; do
		case $1 in
		--share) share=$2 && shift 2 ;;
		--embedded) embedded=1 && shift ;;
		--users) users=$2 && shift 2 ;;
		--smp) smp=$2 && shift 2 ;;
		--mem) mem=$2 && shift 2 ;;
		--rootfs) rootfs=1 && shift ;;
		--runtime) rootfs=1 runtime=1 && shift ;;
		--data-disk) data_disk=$2 && shift 2 ;;
		--append) append=$2 && shift 2 ;;
		--nic) VM_NIC=1 && shift ;;
		*) die "run: unknown option $1" ;;
		esac
	done
	[ -z "$data_disk" ] || [ "$rootfs" = 1 ] || die "run: --data-disk needs --rootfs or --runtime"
	[ -z "$share" ] || [ "$embedded" = 0 ] || die "run: --share and --embedded exclude each other"
	# dockerd and containerd want room: the runtime VM gets 2 GiB.
	if [ -z "$mem" ] && [ "$runtime" = 1 ]; then mem=2G; fi
	mem=${mem:-512M}
	cmd_deps
	load_kernel_env
	local initrd disks=() images mode_args
	images=$(cmd_build_initramfs)
	if [ "$rootfs" = 1 ]; then
		cmd_rootfs >/dev/null
		initrd=$OUT_DIR/initramfs-rootfs.cpio.gz
	elif [ "$embedded" = 1 ]; then
		initrd=$(sed -n 1p <<<"$images")
	else
		initrd=$(sed -n 2p <<<"$images")
	fi
	RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/arcbox-vm.XXXXXX")
	if [ "$embedded" = 1 ]; then
		mode_args="arcbox_agent.host_share=off"
	else
		# The default share is a per-run folder (kept with ARCBOX_VM_KEEP=1)
		# laid out like the reference's host share.
		local cache=auto
		if [ -z "$share" ]; then
			share=$RUN_DIR/share
			local runtime=""
			[ "$rootfs" = 0 ] || runtime=$OUT_DIR/runtime-bin
			make_share "$share" "$runtime"
			cache=always
		fi
		start_virtiofsd arcbox "$share" "$cache"
		mode_args="arcbox_vm.share"
		log "share arcbox: $share (daemon logs in $share/log)"
	fi
	[ -z "$users" ] || start_virtiofsd users "$users"
	if [ "$rootfs" = 1 ]; then
		# The cached image stays pristine under a snapshot overlay. The data
		# disk is blank and sparse unless given (then it is kept, so a second
		# boot finds what the first one left).
		if [ -z "$data_disk" ]; then
			data_disk=$RUN_DIR/data.img
			truncate -s 8G "$data_disk"
		elif [ ! -e "$data_disk" ]; then
			truncate -s 8G "$data_disk" || die "cannot create $data_disk"
			log "data disk $data_disk: blank, 8 GiB sparse"
		else
			log "data disk $data_disk: reused ($(du -h "$data_disk" | cut -f1) used)"
		fi
		disks=("$OUT_DIR/rootfs.ext4:snapshot" "$data_disk")
	fi
	boot_vm "$smp" "$mem" "$VMLINUX" "$initrd" "$(base_cmdline) $mode_args $append" "${disks[@]}" ||
		die "boot failed (console: $RUN_DIR/console.log)"
	log "ready in $((READY_NS / 1000000)) ms: $READY_LINE"
	log "console: $RUN_DIR/console.log; Ctrl-C stops the VM"
	if [ "$runtime" = 1 ]; then
		local a=hvsock:$RUN_DIR/vm.vsock:$RPC_PORT
		log "runtime: arcbox-agentctl --connect $a ensure-runtime --wait"
		log "Docker:  arcbox-agentctl --connect $a docker-proxy --listen unix:$RUN_DIR/docker.sock &"
		log "         DOCKER_HOST=unix://$RUN_DIR/docker.sock docker version"
	fi
	echo "hvsock:$RUN_DIR/vm.vsock:$RPC_PORT"
	wait "$QEMU_PID" || true
	QEMU_PID=""
	log "QEMU exited"
}

# Both VM suites, one test binary after the other and one test (one VM) at a
# time; --no-fail-fast so a failure in the first still runs the second.
cmd_e2e() {
	cmd_deps
	cd "$REPO_ROOT"
	# One suite at a time, each timed; a failed suite does not stop the next.
	local suite start status=0
	for suite in vm_e2e vm_runtime; do
		start=$SECONDS
		timeout 3600 cargo test --test "$suite" -- --ignored --test-threads=1 --skip bench_ "$@" || status=1
		log "suite $suite: $((SECONDS - start)) s"
	done
	return "$status"
}

cmd_bench() {
	cmd_deps
	cd "$REPO_ROOT"
	log "hardware: $(nproc) cores, $(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo), TCG"
	ARCBOX_VM_BENCH=1 timeout 1800 cargo test --test vm_e2e -- \
		--ignored --exact bench_boot_to_ready --nocapture --test-threads=1
	# The runtime image: EnsureRuntime -> Docker ready (a few minutes).
	ARCBOX_VM_BENCH=1 timeout 1800 cargo test --test vm_runtime -- \
		--ignored --exact bench_ensure_runtime_to_docker_ready --nocapture --test-threads=1
}

arm_traps() {
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

main() {
	arm_traps
	local cmd=${1:-}
	[ $# -gt 0 ] && shift
	case $cmd in
	deps) cmd_deps "$@" ;;
	build-agent) cmd_build_agent ;;
	build-initramfs) cmd_deps && cmd_build_initramfs ;;
	rootfs) cmd_deps && cmd_rootfs ;;
	prepare) cmd_prepare "$@" ;;
	run) cmd_run "$@" ;;
	e2e) cmd_e2e "$@" ;;
	bench) cmd_bench ;;
	*)
		sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
		exit 2
		;;
	esac
}

main "$@"
