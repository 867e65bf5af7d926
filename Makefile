# Thin wrapper over CMake. `make demo` and `make test` work on a fresh Debian 12 machine:
# both install missing packages through `make deps` first.
BUILD      ?= build
ASAN_BUILD ?= build-asan
PREFIX     ?= /usr/local
PYTHON     := /usr/bin/python3
JOBS       ?= $(shell nproc)

DEB_PACKAGES := cmake pkg-config gcc make libuv1-dev python3-dev libjansson-dev libinih-dev \
                libsystemd-dev libcmocka-dev python3-pytest inotify-tools watchman

.PHONY: all deps build test unit integration demo asan bench install clean

all: build

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "make deps: installing $$missing"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(BUILD)/Makefile: CMakeLists.txt
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: deps $(BUILD)/Makefile
	cmake --build $(BUILD) -j $(JOBS)

unit: build
	cd $(BUILD) && ctest --output-on-failure

integration: build
	PYHOT_BIN=$(abspath $(BUILD))/bin $(PYTHON) -m pytest -q tests/integration

test: build
	cd $(BUILD) && ctest --output-on-failure
	PYHOT_BIN=$(abspath $(BUILD))/bin $(PYTHON) -m pytest -q tests/integration

demo: build
	@echo "pyhotd is watching examples/. Edit examples/handlers.py and reload http://127.0.0.1:8765/"
	@echo "In another terminal: PYHOT_SOCKET=$(abspath $(BUILD))/demo.sock $(BUILD)/bin/pyhotctl tail"
	$(BUILD)/bin/pyhotd --watch examples --entry app:main --socket $(abspath $(BUILD))/demo.sock

# AddressSanitizer + UndefinedBehaviorSanitizer build, then the whole suite against it.
# libpython's interned objects live until exit by design: tests/asan.supp silences those leaks.
asan: deps
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DPYHOT_SANITIZE=ON
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1 LSAN_OPTIONS=suppressions=$(abspath tests/asan.supp) \
	    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure
	PYHOT_BIN=$(abspath $(ASAN_BUILD))/bin PYHOT_SANITIZED=1 \
	    ASAN_OPTIONS=detect_leaks=1 LSAN_OPTIONS=suppressions=$(abspath tests/asan.supp) \
	    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 $(PYTHON) -m pytest -q tests/integration

# The watcher benches compare with inotifywait (inotify-tools) and watchman; they generate
# a tree of 10,000 directories and 100,000 files under /tmp once and remove it at the end.
bench: build
	PYHOT_BIN=$(abspath $(BUILD))/bin $(PYTHON) tests/bench/latency.py
	PYHOT_BIN=$(abspath $(BUILD))/bin $(PYTHON) tests/bench/watch_setup.py --keep-tree
	PYHOT_BIN=$(abspath $(BUILD))/bin $(PYTHON) tests/bench/watch_idle.py
	PYHOT_BIN=$(abspath $(BUILD))/bin $(PYTHON) tests/bench/watch_storm.py

install: build
	cmake --install $(BUILD) --prefix $(PREFIX)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
