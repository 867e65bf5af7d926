# Thin wrapper over CMake. `make demo` and `make test` work on a fresh Debian 12 machine:
# both install missing packages through `make deps` first.
BUILD      ?= build
ASAN_BUILD ?= build-asan
PREFIX     ?= /usr/local
PYTHON     := /usr/bin/python3
JOBS       ?= $(shell nproc)

# Build, run and test: the suite runs the frameworks of the reload tests, vim (editor
# saves) and setpriv (util-linux: peers of another uid); the README's tour runs curl and
# an editor.
DEB_PACKAGES := cmake pkg-config gcc make libuv1-dev python3-dev libjansson-dev libinih-dev \
                libsystemd-dev libseccomp-dev libcmocka-dev libedit-dev python3-pytest inotify-tools systemd \
                python3-flask python3-fastapi python3-uvicorn python3-django python3-aiohttp \
                python3-sqlalchemy python3-click python3-numpy vim curl util-linux bindfs fuse3 \
                prometheus
# prometheus: its promtool checks the metrics command's exposition in the tests.
# Peers measured beside pyhotd by `make bench` only; perf (linux-perf) for
# tests/bench/run_timeline.py's scheduler events.
BENCH_PACKAGES := watchman hyperfine python3-watchdog bubblewrap linux-perf
# clang and its runtime (libFuzzer, ASan) for `make fuzz`.
FUZZ_PACKAGES := clang libclang-rt-14-dev

FUZZ_BUILD ?= build-fuzz
FUZZ_TIME  ?= 60
FUZZ_CC    ?= clang

.PHONY: all deps deps-bench deps-fuzz install-packages build test unit integration demo asan bench bench-status fuzz fuzz-build install verify-units clean

all: build

deps:
	@$(MAKE) --no-print-directory install-packages PACKAGES="$(DEB_PACKAGES)"

deps-bench: deps
	@$(MAKE) --no-print-directory install-packages PACKAGES="$(BENCH_PACKAGES)"

# Installs those of $(PACKAGES) that are missing (apt-get, as root or through sudo).
install-packages:
	@missing=$$(for p in $(PACKAGES); do \
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

# The socket's directory must be private (0700): pyhotd refuses any other.
DEMO_SOCKET := $(abspath $(BUILD))/run/pyhotd.sock
# The demo app's port (examples/app.py reads PYHOT_DEMO_PORT): `make demo PYHOT_DEMO_PORT=8080`.
PYHOT_DEMO_PORT ?= 8765

demo: build
	@install -d -m 0700 $(dir $(DEMO_SOCKET))
	@echo "pyhotd is watching examples/: curl http://127.0.0.1:$(PYHOT_DEMO_PORT)/, edit examples/handlers.py, curl again."
	@echo "In another terminal: PYHOT_SOCKET=$(DEMO_SOCKET) $(BUILD)/bin/pyhotctl tail"
	PYHOT_DEMO_PORT=$(PYHOT_DEMO_PORT) $(BUILD)/bin/pyhotd --watch examples --entry app:main --socket $(DEMO_SOCKET)

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

# The watcher benches compare with inotifywait (inotify-tools), watchman and watchdog's
# PollingObserver (python3-watchdog); they generate
# a tree of 10,000 directories and 100,000 files under /tmp once and remove it at the end.
bench: deps-bench build
	PYHOT_BIN=$(abspath $(BUILD))/bin $(PYTHON) tests/bench/latency.py
	PYHOT_BIN=$(abspath $(BUILD))/bin $(PYTHON) tests/bench/watch_setup.py --keep-tree
	PYHOT_BIN=$(abspath $(BUILD))/bin $(PYTHON) tests/bench/watch_idle.py
	PYHOT_BIN=$(abspath $(BUILD))/bin $(PYTHON) tests/bench/watch_storm.py
	PYHOT_BIN=$(abspath $(BUILD))/bin $(PYTHON) tests/bench/watch_poll.py
	PYHOT_BIN=$(abspath $(BUILD))/bin $(PYTHON) tests/bench/sandbox.py
	PYHOT_BIN=$(abspath $(BUILD))/bin $(PYTHON) tests/bench/run_timeline.py

# Installs into a temporary prefix and runs systemd-analyze verify on every unit there
# (ExecStart must name an installed binary, so the units are checked as installed). The
# templates under systemd/ are *.service.in; any plain unit there is verified as it is.
verify-units: build
	@src=$$(ls systemd/*.service 2>/dev/null); \
	if [ -n "$$src" ]; then systemd-analyze verify --man=no $$src || exit 1; fi; \
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	cmake --install $(BUILD) --prefix "$$tmp/prefix" > /dev/null && \
	mkdir "$$tmp/instance" && ln -s "$$tmp/prefix/lib/systemd/system/pyhotd@.service" "$$tmp/instance/pyhotd@ci.service" && \
	systemd-analyze verify --man=no "$$tmp/prefix/lib/systemd/system/pyhotd.service" \
	    "$$tmp/prefix/lib/systemd/user/pyhotd-user.service" "$$tmp/instance/pyhotd@ci.service" && \
	echo "verify-units: pyhotd.service, pyhotd@.service, pyhotd-user.service verified"

# status requests per second and latency with 32 clients, alone and during a 2 s job.
bench-status: build
	PYHOT_BIN=$(abspath $(BUILD))/bin $(PYTHON) tests/bench/status.py

# libFuzzer targets (tests/fuzz/), built with clang outside the CMake build, each run for
# FUZZ_TIME seconds under ASan + UBSan from the committed seeds (tests/fuzz/corpus/NAME);
# what they find new goes to $(FUZZ_BUILD)/corpus-NAME, crashes to $(FUZZ_BUILD)/crash-NAME/.
# "=", not ":=": evaluated when a fuzz target is built, after `make deps` installed python3,
# never when the Makefile is read.
FUZZ_FLAGS  = -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
              -D_GNU_SOURCE -Ilib -Wall -Wextra -Werror -Wno-unused-parameter \
              -DPYHOT_PYTHON_VERSION='"$(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')"'

$(FUZZ_BUILD)/fuzz_protocol: tests/fuzz/fuzz_protocol.c lib/protocol.c lib/protocol.h lib/events.c \
                             lib/events.h lib/log.c lib/log.h
	@mkdir -p $(FUZZ_BUILD)
	$(FUZZ_CC) $(FUZZ_FLAGS) tests/fuzz/fuzz_protocol.c lib/protocol.c lib/events.c lib/log.c \
	    -ljansson -lm -o $@

$(FUZZ_BUILD)/fuzz_config: tests/fuzz/fuzz_config.c lib/config.c lib/config.h lib/log.c lib/log.h \
                           lib/protocol.c lib/protocol.h lib/sandbox.c lib/sandbox.h
	@mkdir -p $(FUZZ_BUILD)
	$(FUZZ_CC) $(FUZZ_FLAGS) tests/fuzz/fuzz_config.c lib/config.c lib/log.c lib/protocol.c \
	    lib/sandbox.c -linih -ljansson -lseccomp -o $@

deps-fuzz: deps
	@$(MAKE) --no-print-directory install-packages PACKAGES="$(FUZZ_PACKAGES)"

fuzz-build: deps-fuzz $(FUZZ_BUILD)/fuzz_protocol $(FUZZ_BUILD)/fuzz_config

fuzz: fuzz-build
	@for t in protocol config; do \
	    mkdir -p $(FUZZ_BUILD)/corpus-$$t $(FUZZ_BUILD)/crash-$$t; \
	    echo "make fuzz: fuzz_$$t for $(FUZZ_TIME) s"; \
	    ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	        $(FUZZ_BUILD)/fuzz_$$t -max_total_time=$(FUZZ_TIME) -max_len=4096 -print_final_stats=1 \
	        -artifact_prefix=$(FUZZ_BUILD)/crash-$$t/ $(FUZZ_BUILD)/corpus-$$t tests/fuzz/corpus/$$t \
	        || exit 1; \
	done

install: build
	cmake --install $(BUILD) --prefix $(PREFIX)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
