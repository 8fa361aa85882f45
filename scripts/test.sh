#!/usr/bin/env bash
# The whole test suite, exactly what CI runs (.ci/run only calls this script).
# It sets up what it needs on a fresh machine first (Debian packages for the
# root tests, rustup components and the macOS target, the micro-VM assets),
# then runs: formatting, lints, API docs, every unit and integration test
# (the namespace tests need root), the macOS host check, the benchmarks
# compile, and the end-to-end suites in a real micro-VM. Each step prints
# its time.
#
#   scripts/test.sh            everything
#   scripts/test.sh --no-vm    everything but the micro-VM suites (quick local loop)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

run_vm=1
for arg in "$@"; do
	case "$arg" in
	--no-vm) run_vm=0 ;;
	*)
		echo "usage: scripts/test.sh [--no-vm]" >&2
		exit 2
		;;
	esac
done

# Disk is the scarce resource on CI machines (a run once died with "No space
# left on device" while linking the benches): no incremental artefacts, and
# each step reports what is left.
export CARGO_INCREMENTAL=0
disk_free() { df -h --output=avail . 2>/dev/null | tail -1 | tr -d ' '; }

suite_start=$SECONDS
step_name=""
step_start=$SECONDS
step() {
	end_step
	step_name="$*"
	step_start=$SECONDS
	printf '\n==> %s\n' "$step_name"
}
end_step() {
	if [ -n "$step_name" ]; then
		printf '<== %s: %d s (disk: %s free)\n' "$step_name" $((SECONDS - step_start)) "$(disk_free)"
	fi
	step_name=""
}

step "set-up: Debian packages, rustup components and targets"
# Tools the root tests drive for real: mkfs.btrfs, mkfs.ext4, lsattr, losetup, unshare;
# dig, the real resolver client of the DNS tests; ip and dnsmasq, the link tool
# and DHCP server of the network tests; crun, criu, busybox, catatonit and
# containerd, the runtime, checkpointer, rootfs, idle init and image store of
# the sandbox tests; protoc, which the build of containerd's client crate (a
# Linux dependency of the core) runs.
need=()
for tool in mkfs.btrfs:btrfs-progs mkfs.ext4:e2fsprogs lsattr:e2fsprogs losetup:mount unshare:util-linux dig:bind9-dnsutils ip:iproute2 dnsmasq:dnsmasq-base crun:crun criu:criu busybox:busybox-static catatonit:catatonit containerd:containerd ctr:containerd protoc:protobuf-compiler; do
	command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
	if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
	else
		echo "note: missing ${need[*]} (not root or no apt-get): the root tests will show as ignored"
	fi
fi
rustup component add rustfmt clippy >/dev/null
macos_target=aarch64-apple-darwin
macos_ok=1
rustup target add "$macos_target" >/dev/null 2>&1 || macos_ok=0
if [ "$run_vm" -eq 1 ]; then
	# QEMU, busybox, lz4, cpio, the Debian kernel, vhost-device-vsock (cached).
	scripts/vm.sh deps
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo doc (no broken links or markup)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

step "cargo test (unit, integration, namespace tests)"
cargo test --workspace

step "macOS hosts: the client crate, arcbox-agentctl and the simulator check for $macos_target"
if [ "$macos_ok" -eq 1 ]; then
	cargo check --quiet --target "$macos_target" -p arcbox-agent-wire -p arcbox-agent-sim
	cargo check --quiet --target "$macos_target" -p arcbox-agent-bin --bin arcbox-agentctl
else
	echo "!!!!! SKIPPED: rustup could not install $macos_target; the macOS check did not run !!!!!"
fi

step "cargo bench --no-run"
cargo bench --workspace --no-run
# The benches only had to compile: their optimised artefacts (gigabytes) go
# before the VM suites build the guest image (a local release build is rebuilt
# on the next `cargo build --release`).
rm -rf "${CARGO_TARGET_DIR:-target}/release"

if [ "$run_vm" -eq 1 ]; then
	step "end-to-end in a real micro-VM (scripts/vm.sh e2e)"
	scripts/vm.sh e2e
else
	step "skipped: micro-VM suites (--no-vm)"
fi
end_step
printf '\n==> all passed in %d min %d s\n' $(((SECONDS - suite_start) / 60)) $(((SECONDS - suite_start) % 60))
