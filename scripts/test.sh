#!/usr/bin/env bash
# The whole test suite, exactly what CI runs (.ci/run calls this script):
# formatting, lints, API docs, every unit and integration test (the root-namespace
# tests need root), the benchmarks compile, and the end-to-end suites in a
# real micro-VM (scripts/vm.sh installs what it needs).
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

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo doc (no broken links or markup)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

step "cargo test (unit, integration, namespace tests)"
cargo test --workspace

step "cargo bench --no-run"
cargo bench --workspace --no-run

if [ "$run_vm" -eq 1 ]; then
	step "end-to-end in a real micro-VM (scripts/vm.sh e2e)"
	scripts/vm.sh e2e
else
	step "skipped: micro-VM suites (--no-vm)"
fi
