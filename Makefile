# Developer and CI entry points. `make test` is the README's test command; .ci/run calls it.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
TORCH := torch==2.13.0
APT_PACKAGES := bible-kjv dataset-fashion-mnist iproute2 iptables chromium
APT_PACKAGES += prometheus  # tests/deploy: a real Prometheus and promtool
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo test unit integration long

# Idempotent: apt only when a package is missing; torch first and pinned in every pip call, so pip never picks
# another torch (the CPU wheel on local disk).
install:
	@if ! command -v dpkg >/dev/null 2>&1; then \
		echo "no dpkg: install $(APT_PACKAGES) by hand"; \
	elif ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(APT_PACKAGES); \
	fi
	$(PIP) install $(TORCH)
	$(PIP) install -e '.[test]' $(TORCH)

demo: install
	swarm demo --task albert --peers 3 --duration 90 --report demo-report.json

# Tiers (tests/tiers.py): unit has no subprocess and no network (under a minute); integration starts real peers on
# loopback; long is chaos, browser, deploy and slow tests. `make test` runs all of them, slowest 25 listed.
PYTEST := $(PYTHON) -m pytest tests -q --timeout=300 -p no:cacheprovider
# Tests that start real peers run on a shared 2-core CI machine: one that fails is run once more, and every such
# rerun is listed by name in the summary (-rR), so a flaky test stays visible instead of failing a whole run.
RERUN := --reruns 1 --reruns-delay 2 -rR

unit:
	$(PYTEST) -m unit

integration:
	$(PYTEST) -x $(RERUN) -m integration

long:
	$(PYTEST) -x $(RERUN) -m long

test:
	$(PYTEST) -x $(RERUN) --durations=25
