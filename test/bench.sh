#!/usr/bin/env bash
# make bench: kiln side by side with the standard tools on the same input,
# in one run, as ratios. Only public tools: mksquashfs, mkfs.ext4,
# veritysetup, sha256sum, GNU time. Prints a Markdown report.
#
#   BENCH_TREE  the /usr tree to build (default: the /usr of a Debian
#               bookworm minbase made by debootstrap into the cache, ~115 MB,
#               ~6k entries: a real OS tree)
#   BENCH_RUNS  runs per command, the median is reported (default 3)
#   BENCH_LEVEL zstd level for both kiln and mksquashfs (default 3)
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
CACHE=${KILN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}
if [ -z "${BENCH_TREE:-}" ]; then
	BENCH_TREE=$CACHE/bench-minbase/usr
	if [ ! -f "$CACHE/bench-minbase/.complete" ]; then
		echo "bench: debootstrap --variant=minbase bookworm into $CACHE/bench-minbase" >&2
		rm -rf "$CACHE/bench-minbase"; mkdir -p "$CACHE"
		debootstrap --variant=minbase bookworm "$CACHE/bench-minbase" http://deb.debian.org/debian >/dev/null
		touch "$CACHE/bench-minbase/.complete"
	fi
fi
TREE=$BENCH_TREE
RUNS=${BENCH_RUNS:-3}
LEVEL=${BENCH_LEVEL:-3}
KILN=${KILN:-$(pwd)/bin/kiln}
W=$(mktemp -d /var/tmp/kiln-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT

# timeit NAME CMD...: runs CMD $RUNS times (after one warm-up), records the
# median wall seconds and the median peak RSS (KiB) in $W/NAME.{s,kb}.
timeit() {
	local name=$1; shift
	"$@" >/dev/null 2>&1 || { echo "bench: $name failed: $*" >&2; "$@"; exit 1; }
	for _ in $(seq "$RUNS"); do
		/usr/bin/time -f "%e %M" -o "$W/t" bash -c '"$@"' bench "$@" >/dev/null 2>&1
		cat "$W/t" >>"$W/$name.runs"
	done
	sort -n -k1 "$W/$name.runs" | awk -v n="$RUNS" 'NR==int((n+1)/2){print $1}' >"$W/$name.s"
	sort -n -k2 "$W/$name.runs" | awk -v n="$RUNS" 'NR==int((n+1)/2){print $2}' >"$W/$name.kb"
}
s() { cat "$W/$1.s"; }
mb() { echo $(( $(cat "$W/$1.kb") / 1024 )); }
mbps() { awk -v b="$1" -v t="$2" 'BEGIN{ if (t>0) printf "%.0f", b/1e6/t; else print "n/a" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "n/a" }'; }

entries=$(find "$TREE" | wc -l)
bytes=$(du -sb "$TREE" | cut -f1)

# --- USR, squashfs + verity ------------------------------------------------
cat >"$W/bench-layout.yaml" <<YAML
name: bench
partitions:
  - {number: 3, label: USR-A, type: coreos-usr, size: 2GiB, filesystem: squashfs, verity: true}
YAML
for fs in squashfs ext4; do
cat >"$W/$fs.yaml" <<YAML
name: bench
version: 1.0.0
layout: bench-layout.yaml
partitions:
  USR-A:
    filesystem: $fs
    source: dir:$TREE
$( [ "$fs" = squashfs ] && echo "    level: $LEVEL" )
YAML
done

export W KILN TREE LEVEL
# kiln_build FS: one build; records the fs + verity stage seconds too.
kiln_build() {
	rm -rf "$W/out-$1"
	SOURCE_DATE_EPOCH=1700000000 "$KILN" build --json "$W/$1.yaml" -o "$W/out-$1" >"$W/$1.json"
	python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sum(s['duration_ns'] for s in d['stages'] if s['name'].startswith(('filesystem','verity')))/1e9)" "$W/$1.json" >>"$W/$1.stages"
}
# stages FS: median fs + verity seconds of the counted runs.
stages() { tail -n "$RUNS" "$W/$1.stages" | sort -n | awk -v n="$RUNS" 'NR==int((n+1)/2){printf "%.2f", $1}'; }
export -f kiln_build
timeit kiln-squashfs kiln_build squashfs
sq_kiln_size=$(python3 -c "import json;print(json.load(open('$W/out-squashfs/manifest.json'))['partitions'][0]['filesystem_size'])")

tools_squashfs() {
	rm -f "$W/sq.img"
	mksquashfs "$TREE" "$W/sq.img" -comp zstd -Xcompression-level "$LEVEL" -noappend -quiet -no-progress
	local size; size=$(stat -c %s "$W/sq.img")
	size=$(( (size + 4095) / 4096 * 4096 )); truncate -s "$size" "$W/sq.img"
	veritysetup format "$W/sq.img" "$W/sq.img" --hash-offset="$size" >/dev/null
}
export -f tools_squashfs
timeit tools-squashfs tools_squashfs
sq_tools_size=$(python3 -c "import os;print(os.path.getsize('$W/sq.img'))")
sq_tools_fs=$(unsquashfs -s "$W/sq.img" | awk '/Filesystem size/{print $3; exit}')
mksquashfs "$TREE" "$W/sqf.img" -comp zstd -Xcompression-level "$LEVEL" -noappend -quiet -no-progress -always-use-fragments
sq_tools_frag=$(unsquashfs -s "$W/sqf.img" | awk '/Filesystem size/{print $3; exit}')

# --- USR, ext4 + verity ------------------------------------------------------
timeit kiln-ext4 kiln_build ext4
ext4_kiln_size=$(python3 -c "import json;print(json.load(open('$W/out-ext4/manifest.json'))['partitions'][0]['filesystem_size'])")
ext4_blocks=$(( bytes * 12 / 10 / 4096 + 8192 ))
tools_ext4() {
	rm -f "$W/e.img"
	mkfs.ext4 -q -F -b 4096 -O ^has_journal -E root_owner=0:0 -d "$TREE" "$W/e.img" "$ext4_blocks"
	veritysetup format "$W/e.img" "$W/e.img" --hash-offset=$(( ext4_blocks * 4096 )) >/dev/null
}
export ext4_blocks; export -f tools_ext4
timeit tools-ext4 tools_ext4

# --- offline verify vs sha256sum on the same disk image ----------------------
"$KILN" keygen -o "$W/k" >/dev/null
SOURCE_DATE_EPOCH=1700000000 "$KILN" build -q recipes/demo.yaml -o "$W/demo" --sign "$W/k.key" >/dev/null
disk_size=$(stat -c %s "$W/demo/disk.img")
timeit kiln-verify "$KILN" verify "$W/demo/disk.img" --key "$W/k.pub"
timeit sha256sum sha256sum "$W/demo/disk.img"

# --- converted images: kiln convert beside qemu-img convert -----------------
# Each format of the demo disk.img (4.4 GiB, mostly holes), kiln beside
# qemu-img convert, or zstd -T0 / xz -T0 for the compressed raw formats,
# which qemu-img does not write; then the compressing formats of the ext4
# bench build's disk (a real /usr), where compression does the work.
# timeonce NAME CMD...: one run, no warm-up (xz -6 reads every zero of the
# disk: minutes), recorded as timeit records.
timeonce() {
	local name=$1; shift
	/usr/bin/time -f "%e %M" -o "$W/t" bash -c '"$@"' bench "$@" >/dev/null 2>&1 || { echo "bench: $name failed: $*" >&2; exit 1; }
	cut -d' ' -f1 "$W/t" >"$W/$name.s"; cut -d' ' -f2 "$W/t" >"$W/$name.kb"
}
FORMATS="qcow2 qcow2-zstd vmdk vmdk-sparse vhd vhd-dynamic vhdx raw.zst raw.xz"
tool_name() { case $1 in
	qcow2) echo "qemu-img convert -O qcow2";; qcow2-zstd) echo "qemu-img convert -O qcow2 -c -o compression_type=zstd";;
	vmdk) echo "qemu-img convert -O vmdk -o subformat=streamOptimized";; vmdk-sparse) echo "qemu-img convert -O vmdk -o subformat=monolithicSparse";;
	vhd) echo "qemu-img convert -O vpc -o subformat=fixed,force_size";; vhd-dynamic) echo "qemu-img convert -O vpc -o subformat=dynamic";;
	vhdx) echo "qemu-img convert -O vhdx -o subformat=dynamic";; raw.zst) echo "zstd -T0 -3";; raw.xz) echo "xz -T0 -6";; esac; }
kiln_convert() { "$KILN" convert -q "$1" --format "$2" -o "$W/conv/kiln.$2" --force >/dev/null; }
tool_convert() { case $2 in
	raw.zst) zstd -q -T0 -3 -f "$1" -o "$W/conv/tool.$2";;
	raw.xz) xz -T0 -6 -c "$1" >"$W/conv/tool.$2";;
	*) rm -f "$W/conv/tool.$2"; qemu-img convert -f raw $(tool_name "$2" | cut -d' ' -f3-) "$1" "$W/conv/tool.$2";; esac; }
export -f kiln_convert tool_convert tool_name
mkdir -p "$W/conv"
# fsize FILE: its size, and what it occupies when that is much less (a
# sparse file).
fsize() { local n a; n=$(stat -c %s "$1"); a=$(( $(stat -c %b "$1") * 512 )); if [ $((a + (1 << 20))) -lt "$n" ]; then echo "$n B ($((a >> 20)) MiB on disk)"; else echo "$n B"; fi; }
conv_rows=""
for f in $FORMATS; do
	timeit "kconv-$f" kiln_convert "$W/demo/disk.img" "$f"
	if [ "$f" = raw.xz ]; then timeonce "tconv-$f" tool_convert "$W/demo/disk.img" "$f"; else timeit "tconv-$f" tool_convert "$W/demo/disk.img" "$f"; fi
	conv_rows+="| $f | $(s "kconv-$f") s, $(mb "kconv-$f") MiB, $(fsize "$W/conv/kiln.$f") | $(tool_name "$f"): $(s "tconv-$f") s, $(mb "tconv-$f") MiB, $(fsize "$W/conv/tool.$f") | time $(ratio "$(s "kconv-$f")" "$(s "tconv-$f")"), size $(ratio "$(stat -c %s "$W/conv/kiln.$f")" "$(stat -c %s "$W/conv/tool.$f")") |
"
done
conv_big_rows=""
big_disk=$W/out-ext4/disk.img
for f in qcow2-zstd vmdk raw.zst raw.xz; do
	timeonce "kbig-$f" kiln_convert "$big_disk" "$f"
	timeonce "tbig-$f" tool_convert "$big_disk" "$f"
	conv_big_rows+="| $f | $(s "kbig-$f") s, $(mb "kbig-$f") MiB, $(fsize "$W/conv/kiln.$f") | $(tool_name "$f"): $(s "tbig-$f") s, $(mb "tbig-$f") MiB, $(fsize "$W/conv/tool.$f") | time $(ratio "$(s "kbig-$f")" "$(s "tbig-$f")"), size $(ratio "$(stat -c %s "$W/conv/kiln.$f")" "$(stat -c %s "$W/conv/tool.$f")") |
"
done
big_data=$(du -B1 "$big_disk" | cut -f1)

# --- delta payloads: two releases of an OS ---------------------------------
# Release 1 is the tree; release 2 is the same minbase with packages added
# (what a real OS update mostly is: new and replaced binaries), made by
# debootstrap into the cache once. With BENCH_TREE set, release 2 is the
# tree with every 10th file edited, every 25th deleted and 200 added.
mkdir -p "$W/d"
cp -a "$TREE/." "$W/d/v1/"
touch "$W/d/marker"; sleep 1
if [ "$TREE" = "$CACHE/bench-minbase/usr" ]; then
	if [ ! -f "$CACHE/bench-minbase2/.complete" ]; then
		echo "bench: debootstrap minbase + packages into $CACHE/bench-minbase2" >&2
		rm -rf "$CACHE/bench-minbase2"
		debootstrap --variant=minbase --include=python3,curl,openssh-client,less,vim-tiny,iproute2,procps,gnupg bookworm "$CACHE/bench-minbase2" http://deb.debian.org/debian >/dev/null
		touch "$CACHE/bench-minbase2/.complete"
	fi
	cp -a "$CACHE/bench-minbase2/usr/." "$W/d/v2/"
	release2="release 2: the same minbase with python3, curl, openssh-client, less, vim-tiny, iproute2, procps and gnupg added, with their dependencies"
else
	cp -a "$TREE/." "$W/d/v2/"
	(cd "$W/d/v2" && find . -type f | sort | awk 'NR%10==0' | while read -r f; do printf '\n# release 2\n' >>"$f"; done
	 find . -type f | sort | awk 'NR%25==0' | xargs -r rm -f
	 mkdir -p added && find "$TREE" -type f | sort | awk 'NR<=200' | while read -r f; do cp "$f" "added/$(echo "$f" | tr / _)"; done)
	release2="release 2: every 10th file edited, every 25th deleted, 200 added"
fi
cat >"$W/d/layout.yaml" <<YAML
name: delta-bench
partitions:
  - {number: 3, label: USR-A, type: coreos-usr, size: 1GiB, filesystem: ext4, verity: true, slot: {priority: 1, successful: true}}
  - {number: 4, label: USR-B, type: coreos-usr, size: 1GiB}
YAML
"$KILN" keygen --type rsa-2048 -o "$W/d/rk" >/dev/null
for v in 1 2; do
cat >"$W/d/r$v.yaml" <<YAML
name: delta-bench
version: 1.$v.0
layout: layout.yaml
partitions:
  USR-A:
    source: dir:v$v
YAML
SOURCE_DATE_EPOCH=1700000000 "$KILN" build -q "$W/d/r$v.yaml" -o "$W/d/out$v" --sign "$W/d/rk.key" >/dev/null
done
OLD=$W/d/out1/usr.img NEW=$W/d/out2/usr.img
export OLD NEW
kiln_delta() { "$KILN" payload generate --from "$W/d/out1" --to "$W/d/out2" -o "$W/d/delta.payload" --key "$W/d/rk.key"; }
kiln_delta_max() { "$KILN" payload generate --from "$W/d/out1" --to "$W/d/out2" -o "$W/d/delta-max.payload" --key "$W/d/rk.key" --compression xz-max; }
zstd_delta() { zstd -q -f -19 --long=31 --patch-from="$OLD" "$NEW" -o "$W/d/delta.zst"; }
xdelta_delta() { xdelta3 -f -9 -e -s "$OLD" "$NEW" "$W/d/delta.xd3"; }
export -f kiln_delta kiln_delta_max zstd_delta xdelta_delta
RUNS_SAVED=$RUNS; RUNS=1
timeit kiln-delta kiln_delta
timeit kiln-delta-max kiln_delta_max
timeit zstd-delta zstd_delta
timeit xdelta-delta xdelta_delta
bsdiff_state="timed out after 300 s"
if timeout 300 bsdiff "$OLD" "$NEW" "$W/d/delta.bsdiff" 2>/dev/null; then bsdiff_state="$(stat -c %s "$W/d/delta.bsdiff") B"; fi
# The floor: the new and changed files alone, tar | xz -9.
(cd "$W/d/v2" && find . -type f -print0 | while IFS= read -r -d '' f; do cmp -s "$f" "$W/d/v1/$f" || printf '%s\0' "$f"; done |
 tar --null -cf - -T - 2>/dev/null | xz -9 -T1 >"$W/d/floor.tar.xz")
# Apply: kiln into the passive slot of release 1's disk, vs dd of the
# whole partition.
kiln_apply() { cp --sparse=always "$W/d/out1/disk.img" "$W/d/apply.img"; "$KILN" payload apply "$W/d/delta.payload" --disk "$W/d/apply.img" --key "$W/d/rk.pub"; }
dd_apply() { cp --sparse=always "$W/d/out1/disk.img" "$W/d/apply.img"; dd if="$NEW" of="$W/d/apply.img" bs=4M seek=1 oflag=seek_bytes conv=notrunc,fsync status=none; }
dd_sum_apply() { dd_apply; sha256sum "$NEW"; }
export -f kiln_apply dd_apply dd_sum_apply
RUNS=$RUNS_SAVED
timeit kiln-apply kiln_apply
timeit dd-apply dd_apply
timeit dd-sum-apply dd_sum_apply
size() { stat -c %s "$1"; }

cat <<MD
### make bench — $(date -u +%Y-%m-%d), $(nproc) cores, kiln $("$KILN" version)

Tree: \`$TREE\` ($((bytes / 1000000)) MB, $entries entries). Median of $RUNS runs (after a warm-up), wall time and peak RSS by GNU time.

| stage | kiln | standard tools | ratio (kiln / tools) |
|---|---|---|---|
| USR squashfs zstd-$LEVEL + verity (fs + verity stages) | $(stages squashfs) s | mksquashfs + veritysetup format: $(s tools-squashfs) s, $(mb tools-squashfs) MiB | time $(ratio "$(stages squashfs)" "$(s tools-squashfs)") |
| … the whole kiln build (tree read, image, verity, digests, manifest, commit) | $(s kiln-squashfs) s, $(mb kiln-squashfs) MiB | mksquashfs + veritysetup format: $(s tools-squashfs) s | time $(ratio "$(s kiln-squashfs)" "$(s tools-squashfs)") |
| squashfs image size (kiln packs tail ends into fragments, as -always-use-fragments) | $sq_kiln_size B | mksquashfs: $sq_tools_fs B; with -always-use-fragments: $sq_tools_frag B | size $(ratio "$sq_kiln_size" "$sq_tools_fs"); $(ratio "$sq_kiln_size" "$sq_tools_frag") |
| USR ext4 + verity (fs + verity stages) | $(stages ext4) s | mkfs.ext4 -d + veritysetup format: $(s tools-ext4) s, $(mb tools-ext4) MiB | time $(ratio "$(stages ext4)" "$(s tools-ext4)") |
| … the whole kiln build | $(s kiln-ext4) s, $(mb kiln-ext4) MiB | mkfs.ext4 -d + veritysetup format: $(s tools-ext4) s | time $(ratio "$(s kiln-ext4)" "$(s tools-ext4)") |
| offline verify of the $((disk_size >> 20)) MiB demo disk.img | $(s kiln-verify) s ($(mbps "$disk_size" "$(s kiln-verify)") MB/s), $(mb kiln-verify) MiB | sha256sum: $(s sha256sum) s ($(mbps "$disk_size" "$(s sha256sum)") MB/s) | time $(ratio "$(s kiln-verify)" "$(s sha256sum)") |

Delta payloads between two releases ($release2; ext4 USR in a 1 GiB slot; kiln's default client, android-12: xz, the verity tree as data):

| | size | time | peak RSS |
|---|---|---|---|
| kiln payload generate (delta, signed) | $(size "$W/d/delta.payload") B | $(s kiln-delta) s | $(mb kiln-delta) MiB |
| … with --compression xz-max (the optimal parser) | $(size "$W/d/delta-max.payload") B | $(s kiln-delta-max) s | $(mb kiln-delta-max) MiB |
| zstd -19 --long=31 --patch-from | $(size "$W/d/delta.zst") B | $(s zstd-delta) s | $(mb zstd-delta) MiB |
| xdelta3 -9 | $(size "$W/d/delta.xd3") B | $(s xdelta-delta) s | $(mb xdelta-delta) MiB |
| bsdiff (whole image) | $bsdiff_state | | |
| floor: changed + added files, tar \| xz -9 | $(size "$W/d/floor.tar.xz") B | | |
| kiln payload apply (signature, source and new sha256, verity, fsync) vs dd conv=fsync of the partition | | $(s kiln-apply) s vs $(s dd-apply) s: ratio $(ratio "$(s kiln-apply)" "$(s dd-apply)") | $(mb kiln-apply) MiB |
| … vs dd + sha256sum of the written partition (the least check an update needs) | | $(s kiln-apply) s vs $(s dd-sum-apply) s: ratio $(ratio "$(s kiln-apply)" "$(s dd-sum-apply)") | |

The fs + verity rows compare kiln's own stage clock (from \`kiln build --json\`) with the pair; the whole-build rows compare the whole kiln process (reading the tree, the filesystem, verity, the slot record, the chunked digests of every partition, the manifest, the output directory) with the pair alone.

Converted images of the $((disk_size >> 20)) MiB demo disk.img ($(( $(du -B1 "$W/demo/disk.img" | cut -f1) >> 20 )) MiB of data): \`kiln convert\` (the chunked SHA-256 of the output included) beside qemu-img convert, or zstd / xz for compressed raw; time, peak RSS, file size (xz -6 once, the others the median of $RUNS):

| format | kiln convert | standard tool | ratio (kiln / tool) |
|---|---|---|---|
${conv_rows}
The compressing formats on the ext4 bench build's disk ($(( $(stat -c %s "$big_disk") >> 20 )) MiB, $((big_data >> 20)) MiB of data: the /usr tree above), one run each:

| format | kiln convert | standard tool | ratio (kiln / tool) |
|---|---|---|---|
${conv_big_rows}
MD
