#!/usr/bin/env bash
# System packages the multi-node tests need (tests/test_ansible_twohost.py): `ip netns` from iproute2 and
# sshd from Debian's openssh-server. Idempotent; installs only what is missing. Run as root (CI is).
set -euo pipefail

need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)

if [ ${#need[@]} -eq 0 ]; then
    echo "ci-deps: iproute2 and openssh-server already installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ci-deps: need root to install: ${need[*]} (run: sudo $0)" >&2
    exit 1
fi
echo "ci-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d keeps the package from starting a system-wide sshd: the tests run their own, per namespace.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
fi
apt-get install -y -qq --no-install-recommends "${need[@]}"
if [ "$made_policy" -eq 1 ]; then rm -f "$policy"; fi
