# kiln — see README.md. Targets: demo, test, bench, build, deps.
GO      ?= go
TAGS    := containers_image_openpgp,exclude_graphdriver_btrfs,exclude_graphdriver_devicemapper
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
OUT     ?= out

# Debian tools the tests run, as "command:package".
TOOLS := sgdisk:gdisk sfdisk:fdisk cgpt:cgpt fsck.vfat:dosfstools mdir:mtools \
         e2fsck:e2fsprogs debugfs:e2fsprogs unsquashfs:squashfs-tools mksquashfs:squashfs-tools \
         veritysetup:cryptsetup-bin openssl:openssl umoci:umoci tar:tar \
         bsdiff:bsdiff bspatch:bsdiff bzip2:bzip2

.PHONY: build demo test deps bench clean

build: bin/kiln

bin/kiln: FORCE
	CGO_ENABLED=0 $(GO) build -tags '$(TAGS)' -trimpath -ldflags '-s -w -X main.version=$(VERSION)' -o $@ ./cmd/kiln

FORCE:

# The demo: build recipes/demo.yaml and show the result.
demo: bin/kiln
	@mkdir -p $(OUT)/demo
	SOURCE_DATE_EPOCH=1700000000 bin/kiln build recipes/demo.yaml -o $(OUT)/demo
	bin/kiln layout show $(OUT)/demo/disk.img
	bin/kiln slot status $(OUT)/demo/disk.img

# Installs the Debian tools the tests use when one is missing, then runs
# every test (the end-to-end ones in test/ run those tools on kiln's output).
deps:
	@missing=""; for tp in $(TOOLS); do t=$${tp%%:*}; p=$${tp#*:}; \
	  command -v $$t >/dev/null 2>&1 || PATH="$$PATH:/usr/sbin:/sbin" command -v $$t >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# Parsers of untrusted input, fuzzed briefly on every run (seeded from
# what kiln's writers produce).
FUZZ := ./build/payload:FuzzOpen ./build/payload/bsdiff:FuzzPatch ./build/verity:FuzzReadSuperblock \
        ./layout:FuzzReadTable ./sign:FuzzVerify
FUZZTIME ?= 8s

test: deps
	PATH="$$PATH:/usr/sbin:/sbin" $(GO) test -tags '$(TAGS)' -count=1 ./...
	@for f in $(FUZZ); do pkg=$${f%%:*}; fn=$${f#*:}; \
	  echo "fuzz $$fn ($$pkg, $(FUZZTIME))"; \
	  $(GO) test -tags '$(TAGS)' -run XXX -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) $$pkg >/tmp/kiln-fuzz.log 2>&1 || { cat /tmp/kiln-fuzz.log; exit 1; }; tail -n 1 /tmp/kiln-fuzz.log; \
	done

clean:
	rm -rf bin $(OUT)

# kiln beside mksquashfs, mkfs.ext4, veritysetup and sha256sum on the same
# input, as ratios (see docs/benchmarks.md); then the package benchmarks.
bench: bin/kiln deps
	@command -v zstd >/dev/null && command -v xdelta3 >/dev/null && command -v xz >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zstd xdelta3 xz-utils >/dev/null)
	test/bench.sh
	PATH="$$PATH:/usr/sbin:/sbin" $(GO) test -run XXX -bench Compare1GiB -benchtime 1x ./build/verity/
