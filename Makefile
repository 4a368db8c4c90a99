# nfsentry: one entry point for users, developers and CI.
#   make run    bootstrap (apt packages, venv, package) and run the daemon in the foreground
#   make test   bootstrap + test tools, then the whole suite (host tier + qemu stock-kernel tier)
#   make bench  benchmarks under bench/
# Every target is idempotent: a second run installs nothing and starts in seconds.

SHELL      := /bin/bash
PY_SYSTEM  := /usr/bin/python3
VENV       ?= $(CURDIR)/.venv
PY         := $(VENV)/bin/python
STAMPS     := $(VENV)/.stamps

RUN_DEBS   := nftables python3-nftables iptables libnetfilter-queue-dev libnetfilter-log1 gcc python3-venv python3-dev iproute2
TEST_DEBS  := nmap hping3 tcpreplay vsftpd fail2ban procps tcpdump iputils-ping conntrack
KERNEL_DEBS := qemu-system-x86 busybox-static cpio

PYTEST_ARGS ?=
# every run lists its 15 slowest tests, so a creeping suite shows in each CI log
PYTEST_FLAGS := --durations=15

.PHONY: run test test-host test-kernel lint bench deps-run deps-test venv rules clean

# --- bootstrap -------------------------------------------------------------------------------
# Install only the Debian packages that are missing; `apt-get update` only when something is.
define apt_ensure
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  [ "$$(id -u)" = 0 ] || { echo "nfsentry: installing$$missing needs root" >&2; exit 1; }; \
	  echo "nfsentry: apt-get install$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

deps-run:
	$(call apt_ensure,$(RUN_DEBS))

deps-test: deps-run
	$(call apt_ensure,$(TEST_DEBS) $(KERNEL_DEBS))

# The venv sees the distribution's python3-nftables (--system-site-packages).
$(PY): | deps-run
	$(PY_SYSTEM) -m venv --system-site-packages $(VENV)
	@mkdir -p $(STAMPS)

# (re)installs, and compiles nfsentry/core/_fastpath.c in place, when the build inputs change.
# Editable as a plain path in a .pth (compat): the default import-hook finder costs every Python
# start in the venv ~13 ms (25 ms instead of 12 here; more under qemu), and tests start hundreds.
EDITABLE_MODE := --config-settings editable_mode=compat
$(STAMPS)/pkg: pyproject.toml setup.py nfsentry/core/_fastpath.c nfsentry/core/_fastpath_defs.h | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check -e . $(EDITABLE_MODE)
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/test: pyproject.toml $(STAMPS)/pkg
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]' $(EDITABLE_MODE)
	@touch $@

venv: deps-run $(STAMPS)/pkg

# --- the two commands -----------------------------------------------------------------------
run: deps-run $(STAMPS)/pkg
	$(VENV)/bin/nfsentry run --foreground $(RUN_ARGS)

# One pytest session: the host tier (this kernel, compat backend) and the stock-kernel tier
# (tests/kernel boots Debian's kernel under qemu and runs the native-marked tests in it).
test: deps-test $(STAMPS)/test lint
	$(PY) -m pytest tests $(PYTEST_FLAGS) $(PYTEST_ARGS)

# ruff (lint + format check) on the package, tests and benches; mypy on the pure core and the ledger
lint: $(STAMPS)/test
	$(VENV)/bin/ruff check nfsentry tests bench
	$(VENV)/bin/ruff format --check nfsentry tests bench
	$(VENV)/bin/mypy nfsentry/core nfsentry/ledger

test-host: deps-test $(STAMPS)/test
	$(PY) -m pytest tests --ignore=tests/kernel $(PYTEST_FLAGS) $(PYTEST_ARGS)

test-kernel: deps-test $(STAMPS)/test
	$(PY) -m pytest tests/kernel $(PYTEST_FLAGS) $(PYTEST_ARGS)

bench: deps-test $(STAMPS)/test
	$(PY) bench/run.py

# Regenerate the shipped rulesets from the renderer (tests check they agree).
rules: $(STAMPS)/pkg
	$(PY) -m nfsentry.nft --write-shipped rules

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
