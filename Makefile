# Thin wrapper over CMake. `make demo` and `make test` work on a fresh Debian 12 machine:
# both install missing packages through `make deps` first.
BUILD      ?= build
ASAN_BUILD ?= build-asan
PREFIX     ?= /usr/local
PYTHON     := /usr/bin/python3
JOBS       ?= $(shell nproc)

DEB_PACKAGES := cmake pkg-config gcc make libuv1-dev python3-dev libjansson-dev libinih-dev \
                libsystemd-dev libcmocka-dev python3-pytest inotify-tools

FUZZ_BUILD ?= build-fuzz
FUZZ_TIME  ?= 60
FUZZ_CC    ?= clang

.PHONY: all deps build test unit integration demo asan bench bench-status fuzz fuzz-build install clean

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

bench: build
	PYHOT_BIN=$(abspath $(BUILD))/bin $(PYTHON) tests/bench/latency.py

# status requests per second and latency with 32 clients, alone and during a 2 s job.
bench-status: build
	PYHOT_BIN=$(abspath $(BUILD))/bin $(PYTHON) tests/bench/status.py

# libFuzzer targets (tests/fuzz/), built with clang outside the CMake build, each run for
# FUZZ_TIME seconds under ASan + UBSan from the committed seeds (tests/fuzz/corpus/NAME);
# what they find new goes to $(FUZZ_BUILD)/corpus-NAME, crashes to $(FUZZ_BUILD)/crash-NAME/.
FUZZ_FLAGS := -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
              -D_GNU_SOURCE -Ilib -Wall -Wextra -Werror -Wno-unused-parameter

$(FUZZ_BUILD)/fuzz_protocol: tests/fuzz/fuzz_protocol.c lib/protocol.c lib/protocol.h lib/events.c \
                             lib/events.h lib/log.c lib/log.h
	@mkdir -p $(FUZZ_BUILD)
	$(FUZZ_CC) $(FUZZ_FLAGS) tests/fuzz/fuzz_protocol.c lib/protocol.c lib/events.c lib/log.c \
	    -ljansson -lm -o $@

$(FUZZ_BUILD)/fuzz_config: tests/fuzz/fuzz_config.c lib/config.c lib/config.h lib/log.c lib/log.h \
                           lib/protocol.c lib/protocol.h
	@mkdir -p $(FUZZ_BUILD)
	$(FUZZ_CC) $(FUZZ_FLAGS) tests/fuzz/fuzz_config.c lib/config.c lib/log.c lib/protocol.c \
	    -linih -ljansson -o $@

fuzz-build: $(FUZZ_BUILD)/fuzz_protocol $(FUZZ_BUILD)/fuzz_config

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
