#!/usr/bin/env bash
# The demo: build the three-node namespace lab, converge it with podnet (flannel-vxlan unless
# PODNET_BACKEND says otherwise), verify it (state check + connectivity matrix), show one node's
# kernel state, and tear the lab down — unless KEEP=1, which leaves it for you to explore
# (remove it later with: PODNET_LAB_PREFIX=<prefix> ansible-playbook playbooks/lab_down.yml).
# PODNET_LAB=machines runs it on the machines lab instead (inventories/lab-machines: three booted
# systemd-nspawn machines reached over SSH, docs/machines-lab.md); PODNET_LAB=namespaces is the default.
set -euo pipefail
cd "$(dirname "$0")/.."
export ANSIBLE_CONFIG="$PWD/ansible.cfg"
export PATH="$PWD/.venv/bin:$PATH"
export PODNET_LAB_PREFIX="${PODNET_LAB_PREFIX:-demo$(printf '%04x' $((RANDOM % 65536)))}"
backend="${PODNET_BACKEND:-flannel-vxlan}"
lab="${PODNET_LAB:-namespaces}"
case "$lab" in
  namespaces) inventory=inventories/lab ;;
  machines) inventory=inventories/lab-machines ;;
  *) echo "PODNET_LAB must be 'namespaces' (the default) or 'machines', not '$lab'" >&2; exit 2 ;;
esac
args=(-i "$inventory" -e "podnet_backend=$backend")

teardown() {
  if [ "${KEEP:-0}" = 1 ]; then
    echo "KEEP=1: lab '$PODNET_LAB_PREFIX' left running; remove it with"
    echo "  PODNET_LAB_PREFIX=$PODNET_LAB_PREFIX .venv/bin/ansible-playbook -i $inventory playbooks/lab_down.yml"
  else
    echo "== tearing the lab down"
    ansible-playbook "${args[@]}" playbooks/lab_down.yml >/dev/null
  fi
}
trap teardown EXIT

elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
start=$EPOCHREALTIME
if [ "$lab" = machines ]; then
  echo "== machines lab '$PODNET_LAB_PREFIX': 3 booted systemd machines over SSH x 2 pods, backend $backend"
else
  echo "== lab '$PODNET_LAB_PREFIX': 3 nodes x 2 pods, backend $backend"
fi
ansible-playbook "${args[@]}" playbooks/lab_up.yml >/dev/null
echo "== converging (site.yml)"
ansible-playbook "${args[@]}" playbooks/site.yml | sed -n '/PLAY RECAP/,$p'
echo "== re-running site.yml (must change nothing)"
t0=$EPOCHREALTIME
ansible-playbook "${args[@]}" playbooks/site.yml | sed -n '/PLAY RECAP/,$p'
echo "   no-op re-run: $(elapsed "$t0") s"
echo "== verifying (verify.yml: state check + connectivity matrix)"
ansible-playbook "${args[@]}" playbooks/verify.yml | sed -n '/TASK \[Connectivity matrix\]/,/^$/p;/PLAY RECAP/,$p'
echo "== node1's kernel state"
# A machine's network namespace is the lab's "<prefix>-node1" too (it boots with it), so `ip -n` reads it.
ns="$PODNET_LAB_PREFIX-node1"
if [ "$lab" = machines ]; then
  ansible -i "$inventory" node1 -m command \
    -a "sh -c 'echo host \$(hostname), PID 1 \$(ps -p 1 -o comm=), podnet-apply \$(systemctl is-enabled podnet-apply)'" \
    2>/dev/null | sed -n '2,$s/^/   over SSH: /p'
fi
ip -n "$ns" -d link show type vxlan | sed 's/^/   /'
ip -n "$ns" neigh show nud permanent | sed 's/^/   /'
bridge -n "$ns" fdb show | grep ' dst ' | sed 's/^/   /' || true
ip -n "$ns" route show proto 152 | sed 's/^/   /'
echo "== demo finished in $(elapsed "$start") s (lab teardown follows)"
