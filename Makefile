# kiln — see README.md. Targets: demo, test, bench, build, deps.
GO      ?= go
# Build tags. kms builds in the four KMS providers (awskms://, gcpkms://,
# azurekms://, hashivault://; kms_aws, kms_gcp, kms_azure, kms_hashivault
# one each: sign/kms.go). The release binary (make build) and the tests
# have them. `make demo` alone builds bin/kiln without them: the demo signs
# nothing with a KMS, and their SDKs are 72 of the 121 modules a cold build
# fetches and half the binary. That kiln refuses a KMS key, naming the tag.
TAGS    := containers_image_openpgp,exclude_graphdriver_btrfs,exclude_graphdriver_devicemapper,$(if $(filter-out demo clean,$(or $(MAKECMDGOALS),build)),kms)
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
OUT     ?= out

# Debian tools the tests run, as "command:package".
TOOLS := sgdisk:gdisk sfdisk:fdisk cgpt:cgpt fsck.vfat:dosfstools mdir:mtools \
         e2fsck:e2fsprogs debugfs:e2fsprogs unsquashfs:squashfs-tools mksquashfs:squashfs-tools \
         veritysetup:cryptsetup-bin openssl:openssl umoci:umoci tar:tar \
         bsdiff:bsdiff bspatch:bsdiff bzip2:bzip2 protoc:protobuf-compiler \
         xz:xz-utils zstd:zstd setfacl:acl getfacl:acl git:git mount:mount \
         losetup:mount xxd:xxd /usr/bin/time:time qemu-img:qemu-utils \
         docker-registry:docker-registry htpasswd:apache2-utils \
         qemu-system-x86_64:qemu-system-x86 /usr/share/ovmf/OVMF.fd:ovmf \
         dpkg-deb:dpkg apt-get:apt cpio:cpio objdump:binutils objcopy:binutils modinfo:kmod \
         sbverify:sbsigntool osslsigncode:osslsigncode pesign:pesign cert-to-efi-sig-list:efitools \
         swtpm:swtpm tpm2_nvread:tpm2-tools /usr/lib/python3/dist-packages/jsonschema/__init__.py:python3-jsonschema xmllint:libxml2-utils file:file

# update_engine's payload checker, paycheck.py, that test/paycheck_test.go
# runs on kiln's payloads: AOSP platform/system/update_engine as of the
# android-12.1 release, fetched once into the cache (never into the
# repository). The pin is on content: the scripts/ tree and the
# update_metadata.proto blob must have these git object ids (those of
# commit e7ba2a80e50c, the sc-v2-release (Android 12.1) snapshot; neither
# changed on that branch after 2021-04-30).
# Any copy with the same content passes the pin: LineageOS's
# android_system_update_engine, branch lineage-19.1, holds both objects
# (make deps UPDATE_ENGINE_GIT=file:///path/to/it UPDATE_ENGINE_REF=refs/heads/lineage-19.1).
# Its protobuf module is regenerated from the .proto with Debian's protoc so
# that it matches Debian's python3-protobuf.
UPDATE_ENGINE_GIT   ?= https://android.googlesource.com/platform/system/update_engine
UPDATE_ENGINE_REF   ?= refs/tags/android-12.1.0_r1
UPDATE_ENGINE_TREE  := 552df1d635aabfdeb0bb739c5adec93dd731fd63
UPDATE_ENGINE_PROTO := 93e4e2e1a2bccfcdd1e2e9e870bbe94e5fe2a774
KILN_CACHE          ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/kiln
PAYCHECK_DIR        := $(KILN_CACHE)/update_engine-$(UPDATE_ENGINE_TREE)

.PHONY: build demo boot-demo test deps bench clean paycheck

build: bin/kiln

bin/kiln: FORCE
	CGO_ENABLED=0 $(GO) build -tags '$(TAGS)' -trimpath -ldflags '-s -w -X main.version=$(VERSION)' -o $@ ./cmd/kiln
	@case ',$(TAGS),' in *,kms,*) ;; *) echo "$@: built without the tag kms, so without some or all KMS providers; make build makes the release binary, with all four";; esac

FORCE:

# The demo: build recipes/demo.yaml and show the result.
demo: bin/kiln
	@mkdir -p $(OUT)/demo
	SOURCE_DATE_EPOCH=1700000000 bin/kiln build recipes/demo.yaml -o $(OUT)/demo
	bin/kiln layout show $(OUT)/demo/disk.img
	bin/kiln slot status $(OUT)/demo/disk.img

# The bootable example (recipes/bootable.yaml): fetch Debian's cloud kernel,
# systemd's UEFI stub and busybox (recipes/bootable/fetch.sh), build and sign
# the image (release records with a fresh RSA key; the chooser and the
# slot's kernel for Secure Boot with the snakeoil key that Debian's OVMF has
# enrolled), then boot it under UEFI firmware with Secure Boot enforced
# (QEMU + OVMF's secboot build, the disk image alone) and show the serial
# console: Secure Boot on, the chooser picks a slot, the slot's kernel
# mounts USR through dm-verity, and the init prints the running slot and
# release, marks the slot good and powers off. The image stays in
# out/bootable/image/disk.img; the disk booted is out/bootable/node.img and
# the firmware variable store it booted with out/bootable/OVMF_VARS.fd.
BOOT_OUT := $(OUT)/bootable
OVMF_CODE := /usr/share/OVMF/OVMF_CODE_4M.secboot.fd
OVMF_VARS := /usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd
SB_KEY    := /usr/share/ovmf/PkKek-1-snakeoil.key
SB_CERT   := /usr/share/ovmf/PkKek-1-snakeoil.pem
boot-demo: bin/kiln
	@[ -e $(OVMF_CODE) ] && command -v qemu-system-x86_64 >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 ovmf >/dev/null)
	sh recipes/bootable/fetch.sh
	@mkdir -p $(BOOT_OUT)
	@[ -f $(BOOT_OUT)/release.key ] || bin/kiln keygen --type rsa-2048 -o $(BOOT_OUT)/release
	SOURCE_DATE_EPOCH=1700000000 KILN_KEY_PASSWORD=snakeoil bin/kiln build recipes/bootable.yaml -o $(BOOT_OUT)/image \
	  --sign $(BOOT_OUT)/release.key --sb-key $(SB_KEY) --sb-cert $(SB_CERT)
	cp --sparse=always $(BOOT_OUT)/image/disk.img $(BOOT_OUT)/node.img
	cp $(OVMF_VARS) $(BOOT_OUT)/OVMF_VARS.fd
	timeout 300 qemu-system-x86_64 -machine q35,smm=on -global driver=cfi.pflash01,property=secure,value=on -m 512 \
	  -drive if=pflash,format=raw,unit=0,readonly=on,file=$(OVMF_CODE) -drive if=pflash,format=raw,unit=1,file=$(BOOT_OUT)/OVMF_VARS.fd \
	  -nic none -display none -serial stdio -monitor none -drive file=$(BOOT_OUT)/node.img,format=raw,if=virtio
	bin/kiln slot status $(BOOT_OUT)/node.img --key $(BOOT_OUT)/release.pub

# Installs the Debian tools the tests use when one is missing, then runs
# every test (the end-to-end ones in test/ run those tools on kiln's output).
# The oras CLI (a generic OCI client the registry tests pull kiln's
# artifacts with) is built once from the Go module proxy into the cache.
ORAS_VERSION := v1.3.6
ORAS         := $(KILN_CACHE)/oras-$(ORAS_VERSION)/oras
deps:
	@missing=""; for tp in $(TOOLS); do t=$${tp%%:*}; p=$${tp#*:}; \
	  [ -e "$$t" ] || command -v $$t >/dev/null 2>&1 || PATH="$$PATH:/usr/sbin:/sbin" command -v $$t >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@/usr/bin/python3 -c 'import google.protobuf' 2>/dev/null || { echo "installing: python3-protobuf"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-protobuf >/dev/null; }
	@$(MAKE) --no-print-directory paycheck
	@[ -x $(ORAS) ] || { echo "building oras $(ORAS_VERSION) into $(dir $(ORAS))"; \
	  GOBIN=$(dir $(ORAS)) CGO_ENABLED=0 GOFLAGS=-buildvcs=false $(GO) install oras.land/oras/cmd/oras@$(ORAS_VERSION); }

# paycheck: update_engine's scripts/ in $(PAYCHECK_DIR), checked against the
# pin: from the pinned copy beside the project ($(UPDATE_ENGINE_COPY), the
# same content ids) when it is there, else fetched from $(UPDATE_ENGINE_GIT).
UPDATE_ENGINE_COPY ?= ../shared/update_engine
paycheck:
	@if [ ! -f $(PAYCHECK_DIR)/.complete ]; then \
	  tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  git -C "$$tmp" init -q && \
	  if [ -f $(UPDATE_ENGINE_COPY)/update_metadata.proto ] && [ -d $(UPDATE_ENGINE_COPY)/scripts ]; then \
	    echo "update_engine from $(UPDATE_ENGINE_COPY)"; \
	    cp -r $(UPDATE_ENGINE_COPY)/scripts $(UPDATE_ENGINE_COPY)/update_metadata.proto "$$tmp"/ && \
	    git -C "$$tmp" add scripts update_metadata.proto && \
	    git -C "$$tmp" -c user.name=kiln -c user.email=kiln@localhost commit -q -m copy && rev=HEAD; \
	  else \
	    echo "fetching update_engine $(UPDATE_ENGINE_REF) from $(UPDATE_ENGINE_GIT)"; \
	    if ! timeout 120 git -C "$$tmp" fetch -q --depth 1 "$(UPDATE_ENGINE_GIT)" "$(UPDATE_ENGINE_REF)"; then \
	      echo "WARNING: cannot fetch update_engine from $(UPDATE_ENGINE_GIT): the paycheck.py tests will be SKIPPED." >&2; \
	      echo "         (set UPDATE_ENGINE_COPY to a directory holding its scripts/ and update_metadata.proto, or UPDATE_ENGINE_GIT" >&2; \
	      echo "         to a reachable copy of platform/system/update_engine and UPDATE_ENGINE_REF to a ref of it with the same content)" >&2; \
	      mkdir -p $(KILN_CACHE) && echo "update_engine could not be fetched from $(UPDATE_ENGINE_GIT)" > $(PAYCHECK_DIR).unavailable; exit 0; fi; \
	    rev=FETCH_HEAD; \
	  fi && \
	  tree=$$(git -C "$$tmp" rev-parse $$rev:scripts) && proto=$$(git -C "$$tmp" rev-parse $$rev:update_metadata.proto) && \
	  if [ "$$tree" != $(UPDATE_ENGINE_TREE) ] || [ "$$proto" != $(UPDATE_ENGINE_PROTO) ]; then \
	    echo "update_engine: scripts/ $$tree, update_metadata.proto $$proto; want $(UPDATE_ENGINE_TREE), $(UPDATE_ENGINE_PROTO)" >&2; exit 1; fi && \
	  rm -rf $(PAYCHECK_DIR) && mkdir -p $(PAYCHECK_DIR) && \
	  git -C "$$tmp" archive $$rev scripts update_metadata.proto | tar -x -C $(PAYCHECK_DIR) && \
	  protoc -I $(PAYCHECK_DIR) --python_out=$(PAYCHECK_DIR)/scripts/update_payload $(PAYCHECK_DIR)/update_metadata.proto && \
	  rm -f $(PAYCHECK_DIR).unavailable && touch $(PAYCHECK_DIR)/.complete; \
	fi

# Parsers of untrusted input, fuzzed briefly on every run (seeded from
# what kiln's writers produce).
FUZZ := ./build/payload:FuzzOpen ./build/payload/bsdiff:FuzzPatch ./build/verity:FuzzReadSuperblock \
        ./layout:FuzzReadTable ./sign:FuzzVerify ./internal/xzstream:FuzzXZ ./build/slot:FuzzDecode \
        ./internal/tpm2:FuzzResponse ./sign/authenticode:FuzzParse \
        ./build/diskimage:FuzzQCOW2Read ./build/diskimage:FuzzVMDKRead ./build/diskimage:FuzzVHDRead ./build/diskimage:FuzzVHDXRead \
        ./build/sbom:FuzzReadDatabases
FUZZTIME ?= 8s

test: deps
	KILN_ORAS=$(ORAS) KILN_PAYCHECK=$(PAYCHECK_DIR)/scripts/paycheck.py KILN_PAYCHECK_UNAVAILABLE="$$(cat $(PAYCHECK_DIR).unavailable 2>/dev/null)" PATH="$$PATH:/usr/sbin:/sbin" $(GO) test -tags '$(TAGS)' -count=1 -timeout 40m ./...
	@GO=$(GO) test/fuzz.sh '$(TAGS)' $(FUZZTIME) $(FUZZ)

clean:
	rm -rf bin $(OUT)

# kiln beside mksquashfs, mkfs.ext4, veritysetup and sha256sum on the same
# input, as ratios (see docs/benchmarks.md); then the package benchmarks.
bench: bin/kiln deps
	@command -v zstd >/dev/null && command -v xdelta3 >/dev/null && command -v xz >/dev/null && PATH="$$PATH:/usr/sbin" command -v debootstrap >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zstd xdelta3 xz-utils debootstrap >/dev/null)
	test/bench.sh
	PATH="$$PATH:/usr/sbin:/sbin" $(GO) test -run XXX -bench Compare1GiB -benchtime 1x ./build/verity/
