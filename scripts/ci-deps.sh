#!/usr/bin/env bash
# System packages the tests need: `ip netns` from iproute2 and sshd from Debian's openssh-server (the two-host
# tests, tests/test_ansible_twohost.py); prometheus + promtool from Debian's prometheus package (the monitoring
# tests, tests/test_monitoring*.py); iperf3 and iptables (tests/test_preflight_twohost.py). Idempotent; installs only what is missing. Run as root (CI is).
set -euo pipefail

need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# pre-flight: iperf3 measures the bandwidth between nodes; iptables blocks a port in the two-host tests
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || need+=(iptables)

if [ ${#need[@]} -eq 0 ]; then
    echo "ci-deps: iproute2, openssh-server, prometheus, iperf3 and iptables already installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ci-deps: need root to install: ${need[*]} (run: sudo $0)" >&2
    exit 1
fi
echo "ci-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d keeps the packages from starting a system-wide sshd or prometheus: the tests run their own
# (per namespace; on loopback with a scratch storage folder).
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
fi
apt-get install -y -qq --no-install-recommends "${need[@]}"
if [ "$made_policy" -eq 1 ]; then rm -f "$policy"; fi
