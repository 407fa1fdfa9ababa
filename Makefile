# podnet — the two sacred commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
VENV ?= .venv
# Debian's own Python: under the QEMU guest's software emulation it runs Python code about 3x faster than an
# unoptimised build with a shared libpython (pyenv's default), and it is what a fresh Debian 12 machine has.
PYTHON ?= /usr/bin/python3
PY := $(VENV)/bin/python
# Lab and tests: iproute2..graphviz; the IPIP guest (DESIGN.md section 6): qemu-system-x86 busybox-static;
# real CNI plugins and SSH-reached lab nodes: containernetworking-plugins openssh-*; iperf3: bench;
# the machines lab (booted systemd nodes, docs/machines-lab.md): systemd-container mmdebstrap;
# ethtool: rendered scripts set the VXLAN offload with it (the render-exact tests run them); wireguard-tools: `wg`,
# which rendered WireGuard scripts use and the guest's WireGuard tests read the devices with.
APT_PACKAGES := iproute2 iptables iputils-ping python3-venv kmod procps bird2 graphviz \
	qemu-system-x86 busybox-static containernetworking-plugins openssh-server openssh-client iperf3 \
	systemd-container mmdebstrap ethtool wireguard-tools
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup demo test test-quick test-ipip-vm test-machines molecule-ipip-vm unit lint sanity clean dist bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  ./scripts/apt-install-no-start.sh $$missing; \
	fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q '.[dev]'
	touch $@

demo: setup
	./scripts/demo.sh

# pytest runs test modules in parallel (pytest-xdist, --dist loadfile: a module's tests share its lab in
# order, so a module runs whole on one worker; tests/conftest.py orders the modules slowest first, and
# --no-loadscope-reorder keeps xdist from reordering them by their number of tests).
# PYTEST_WORKERS=0 runs everything in one process.
# Each stage prints its time ("[time] ...", pytest in its closing line, which stays the last line of the
# run): the whole `make test` must stay under 40 minutes here.
PYTEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: setup lint sanity
	$(PYTEST) tests $(PYTEST_ARGS)

# The inner loop, a few minutes: unit and tooling tests and one lab (flannel-vxlan, converged, checked,
# drifted, reset).
test-quick: setup
	$(PYTEST) tests/unit tests/tooling tests/integration/test_flannel.py \
		-k "not (test_flannel.py and flannel-host-gw)" $(PYTEST_ARGS)

# The Ansible-driven calico-ipip tests inside a QEMU guest with a stock Debian kernel (this kernel has no ipip
# module): four site.yml runs, up to an hour under software emulation, so not part of `make test` (which runs the
# guest's engine tests and its one WireGuard site.yml run; this target runs those too).
test-ipip-vm: setup
	PODNET_IPIP_VM=1 $(PY) -m pytest -q tests/integration/test_ipip_vm.py $(PYTEST_ARGS)

# The machines lab's tests alone (docs/machines-lab.md; also part of `make test`): builds the Debian image
# once (cached by recipe hash), boots systemd machines reached over SSH, reboots them, kills runs.
test-machines: setup
	$(PYTEST) tests/integration/test_machines_lab.py tests/integration/test_machines_sigkill.py $(PYTEST_ARGS)

# Molecule scenario ipip-vm: calico-ipip through create, converge, idempotence, verify and destroy inside one
# QEMU guest (molecule/README.md); ~45 min under software emulation, so `make test` excludes it.
molecule-ipip-vm: setup
	molecule test -s ipip-vm

unit: setup
	$(PY) -m pytest -q tests/unit

lint: setup
	scripts/timed ruff $(VENV)/bin/ruff check collections tests bench scripts
	scripts/timed ansible-lint $(VENV)/bin/ansible-lint -q

# ansible-test's sanity tests on the collection, with the local Python (each test's pinned tools are
# installed by ansible-test into ~/.ansible/test on first use). ansible-test would download a get-pip
# script from a host of its own for that: scripts/ansible_test_offline.py puts an offline stand-in where
# ansible-test looks (pip from the bundled wheel, then from pip's configured index). Ignores, with
# reasons: tests/sanity/.
sanity: setup
	$(PY) scripts/ansible_test_offline.py --python 3.11
	cd collections/ansible_collections/podnet/dataplane && \
		$(CURDIR)/scripts/timed sanity $(CURDIR)/$(VENV)/bin/ansible-test sanity --python 3.11 --color no
	cd collections/ansible_collections/podnet/lab && \
		$(CURDIR)/scripts/timed sanity-lab $(CURDIR)/$(VENV)/bin/ansible-test sanity --python 3.11 --color no

# The product's artifact: podnet.dataplane only (the namespace lab, podnet.lab, stays in the repository).
dist: setup
	mkdir -p build && $(VENV)/bin/ansible-galaxy collection build --force --output-path build collections/ansible_collections/podnet/dataplane

# Benchmarks (not part of `make test`): ratios against baselines measured in the same run.
bench: setup
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .podnet
