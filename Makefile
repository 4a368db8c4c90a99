# nfsentry: one entry point for users, developers and CI.
#   make run    bootstrap (apt packages, venv, package) and run the daemon in the foreground
#   make test   bootstrap + test tools, then the whole suite (host tier + qemu stock-kernel tier)
#   make try    bootstrap + nmap, then examples/try-it.sh: a scan caught in throw-away namespaces
#   make bench  benchmarks under bench/
#   make deb    the Debian package, build/deb/nfsentry_<version>_<arch>.deb (then: apt install ./that.deb)
# Every target is idempotent: a second run installs nothing and starts in seconds.

SHELL      := /bin/bash
PY_SYSTEM  := /usr/bin/python3
VENV       ?= $(CURDIR)/.venv
PY         := $(VENV)/bin/python
STAMPS     := $(VENV)/.stamps

RUN_DEBS   := nftables python3-nftables iptables libnetfilter-queue-dev libnetfilter-log1 gcc python3-venv python3-dev iproute2
TEST_DEBS  := nmap hping3 tcpreplay vsftpd fail2ban procps tcpdump iputils-ping conntrack strace man-db logrotate openssl
KERNEL_DEBS := qemu-system-x86 busybox-static cpio
# what `make deb` (debian/rules) builds with
DEB_DEBS   := debhelper dpkg-dev fakeroot lintian gcc libnetfilter-queue-dev python3.11-dev python3.11-venv
DEB_OUT    ?= $(CURDIR)/build/deb

PYTEST_ARGS ?=
# every run lists its 15 slowest tests, so a creeping suite shows in each CI log
PYTEST_FLAGS := --durations=15

.PHONY: run try test test-host test-kernel lint bench deps-run deps-test deps-deb deps-crowdsec venv rules man deb clean

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
	$(call apt_ensure,$(TEST_DEBS) $(KERNEL_DEBS) $(DEB_DEBS))
	@$(MAKE) --no-print-directory deps-crowdsec

# crowdsec: the fleet tests' Local API (each test starts its own). Installed offline: its postinst
# registers with the Central API unless /etc/crowdsec/online_api_credentials.yaml exists already
# (README.Debian); a temporary policy-rc.d keeps the service from starting, and it stays disabled.
# Not fatal: without it the fleet tests skip, saying why.
deps-crowdsec:
	@dpkg-query -W -f='$${Status}' crowdsec 2>/dev/null | grep -q "install ok installed" && exit 0; \
	[ "$$(id -u)" = 0 ] || { echo "nfsentry: installing crowdsec needs root (the fleet tests will skip)" >&2; exit 0; }; \
	echo "nfsentry: apt-get install crowdsec (offline: no Central API registration, service not started)"; \
	mkdir -p /etc/crowdsec; \
	[ -e /etc/crowdsec/online_api_credentials.yaml ] || echo "# no Central API (nfsentry)" > /etc/crowdsec/online_api_credentials.yaml; \
	made=""; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made=1; fi; \
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends crowdsec >/dev/null; }; rc=$$?; \
	[ -z "$$made" ] || rm -f /usr/sbin/policy-rc.d; \
	if systemctl is-system-running >/dev/null 2>&1 || [ -d /run/systemd/system ]; then systemctl disable --now crowdsec >/dev/null 2>&1 || true; fi; \
	[ $$rc = 0 ] || echo "nfsentry: crowdsec could not be installed (the fleet tests will skip)" >&2

deps-deb:
	$(call apt_ensure,$(DEB_DEBS))

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

# See it work without touching this machine's firewall: a throw-away pair of namespaces, the
# daemon in one (state in a temporary directory), nmap in the other (examples/try-it.sh)
try: deps-run $(STAMPS)/pkg
	$(call apt_ensure,nmap)
	examples/try-it.sh $(TRY_ARGS)

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

# Man pages nfsentry(8), nfsentry.toml(5) and the bash/zsh completion files, generated from the
# typer app and examples/nfsentry.toml (tests/unit/test_manpages.py keeps them in step).
man: $(STAMPS)/pkg
	$(PY) -m nfsentry.cli.manpages build/man

# The Debian package, built by debian/rules in a copy of the checkout's files (tracked and new,
# not ignored ones) under $(DEB_OUT), checked by lintian (errors fail; warnings are printed).
# Needs no venv; pip fetches the pinned Python dependencies (debian/python-constraints.txt).
deb: deps-deb
	@set -e; ver=$$(dpkg-parsechangelog -l debian/changelog -S Version); src=$(DEB_OUT)/nfsentry-$$ver; \
	rm -rf $(DEB_OUT) && mkdir -p $$src; \
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	  git ls-files -z -co --exclude-standard | tar --null -T - --ignore-failed-read -cf - | tar -xf - -C $$src; \
	else \
	  tar --exclude=./.venv --exclude=./build --exclude='*.so' --exclude='__pycache__' -cf - . | tar -xf - -C $$src; \
	fi; \
	(cd $$src && dpkg-buildpackage -b -us -uc) > $(DEB_OUT)/build.log 2>&1 || { tail -40 $(DEB_OUT)/build.log; exit 1; }; \
	deb=$$(ls $(DEB_OUT)/nfsentry_$${ver}_*.deb); \
	lintian --fail-on error $$deb || { echo "nfsentry: lintian found errors" >&2; exit 1; }; \
	echo "nfsentry: built $$deb"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
