# prefixd -- a thin wrapper over CMake and CTest.
#
# The README's two commands are scripts/run and scripts/test (they install make and cmake too);
# `make run` and `make test` are the same for people who have make.
#
# Other targets: build, asan (unit tests under ASan+UBSan), format, format-check, bench, clean.
BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc)
CMAKE_ARGS ?=
MODEL      ?= $(or $(PREFIXD_MODEL),$(HOME)/.cache/prefixd/SmolLM2-135M-Instruct.Q4_1.gguf)

FORMAT_FILES = $(shell git ls-files '*.c' '*.h' '*.cu' '*.cuh' 2>/dev/null)

.PHONY: all setup build run test asan format format-check bench clean

all: build

setup:
	@scripts/setup >/dev/null

build:
	@cmake -S . -B $(BUILD) -DPREFIXD_DEFAULT_MODEL=$(MODEL) $(CMAKE_ARGS) >/dev/null
	cmake --build $(BUILD) -j$(JOBS)

run:
	@scripts/run

test: setup build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS) --timeout 900

asan: setup
	cmake -S . -B $(ASAN_BUILD) -DPREFIXD_SANITIZE=ON -DPREFIXD_CUDA=OFF -DCMAKE_BUILD_TYPE=Debug \
	  -DPREFIXD_DEFAULT_MODEL=$(MODEL) $(CMAKE_ARGS)
	cmake --build $(ASAN_BUILD) -j$(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --output-on-failure -j$(JOBS) -L unit --timeout 900

format:
	clang-format -i $(FORMAT_FILES)

format-check:
	@clang-format --dry-run --Werror $(FORMAT_FILES) && echo "format: clean"

bench: build
	@echo "see bench/README.md"

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
