# The targets users expect. Every one runs a script of scripts/ (or cargo)
# with the same defaults as the README's commands.
#   make load-test N=10 [ARGS='--launcher qemu --max-boot-ms 20000']
#   make test            the whole suite (installs what it needs)
#   make bench           measured figures (no timing assertions)
#   make microvm N=10    a load test of real microVMs under QEMU
#   make doctor          what each launcher needs
N ?= 10
ARGS ?=

.PHONY: all build load-test test bench microvm doctor clean
all: build

build:
	cargo build --release --bins

load-test:
	bash scripts/load-test-unikernels.sh $(N) $(ARGS)

test:
	bash scripts/test.sh

bench:
	bash scripts/benchmark-unikernel-performance.sh $(ARGS)

microvm:
	bash scripts/load-test-unikernels.sh $(N) --launcher qemu --max-boot-ms 20000 $(ARGS)

doctor: build
	./target/release/ukload doctor $(ARGS)

clean:
	cargo clean
