#!/usr/bin/env bash
# make bench: kiln side by side with the standard tools on the same input,
# in one run, as ratios. Only public tools: mksquashfs, mkfs.ext4,
# veritysetup, sha256sum, GNU time. Prints a Markdown report.
#
#   BENCH_TREE  the /usr-like tree to build (default /usr/local/go: ~270 MB,
#               ~17k entries, present on every machine of this kind)
#   BENCH_RUNS  runs per command, the median is reported (default 3)
#   BENCH_LEVEL zstd level for both kiln and mksquashfs (default 3)
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
TREE=${BENCH_TREE:-/usr/local/go}
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
# The whole build also leaves the SHA-256 of the whole partition in the
# manifest; the tools' equivalent is sha256sum over the partition-sized image.
tools_squashfs_sum() { tools_squashfs; truncate -s 2G "$W/sq.img"; sha256sum "$W/sq.img"; }
export -f tools_squashfs tools_squashfs_sum
timeit tools-squashfs tools_squashfs
timeit tools-squashfs-sum tools_squashfs_sum
sq_tools_size=$(python3 -c "import os;print(os.path.getsize('$W/sq.img'))")
sq_tools_fs=$(unsquashfs -s "$W/sq.img" | awk '/Filesystem size/{print $3; exit}')

# --- USR, ext4 + verity ------------------------------------------------------
timeit kiln-ext4 kiln_build ext4
ext4_kiln_size=$(python3 -c "import json;print(json.load(open('$W/out-ext4/manifest.json'))['partitions'][0]['filesystem_size'])")
ext4_blocks=$(( bytes * 12 / 10 / 4096 + 8192 ))
tools_ext4() {
	rm -f "$W/e.img"
	mkfs.ext4 -q -F -b 4096 -O ^has_journal -E root_owner=0:0 -d "$TREE" "$W/e.img" "$ext4_blocks"
	veritysetup format "$W/e.img" "$W/e.img" --hash-offset=$(( ext4_blocks * 4096 )) >/dev/null
}
tools_ext4_sum() { tools_ext4; truncate -s 2G "$W/e.img"; sha256sum "$W/e.img"; }
export ext4_blocks; export -f tools_ext4 tools_ext4_sum
timeit tools-ext4 tools_ext4
timeit tools-ext4-sum tools_ext4_sum

# --- offline verify vs sha256sum on the same disk image ----------------------
"$KILN" keygen -o "$W/k" >/dev/null
SOURCE_DATE_EPOCH=1700000000 "$KILN" build -q recipes/demo.yaml -o "$W/demo" --sign "$W/k.key" >/dev/null
disk_size=$(stat -c %s "$W/demo/disk.img")
timeit kiln-verify "$KILN" verify "$W/demo/disk.img" --key "$W/k.pub"
timeit sha256sum sha256sum "$W/demo/disk.img"

cat <<MD
### make bench — $(date -u +%Y-%m-%d), $(nproc) cores, kiln $("$KILN" version)

Tree: \`$TREE\` ($((bytes / 1000000)) MB, $entries entries). Median of $RUNS runs (after a warm-up), wall time and peak RSS by GNU time.

| stage | kiln | standard tools | ratio (kiln / tools) |
|---|---|---|---|
| USR squashfs zstd-$LEVEL + verity (fs + verity stages) | $(stages squashfs) s | mksquashfs + veritysetup format: $(s tools-squashfs) s, $(mb tools-squashfs) MiB | time $(ratio "$(stages squashfs)" "$(s tools-squashfs)") |
| … the whole kiln build (tree read, image, verity, partition SHA-256, manifest) | $(s kiln-squashfs) s, $(mb kiln-squashfs) MiB | the same + sha256sum of the 2 GiB partition image: $(s tools-squashfs-sum) s | time $(ratio "$(s kiln-squashfs)" "$(s tools-squashfs-sum)") (vs the pair alone: $(ratio "$(s kiln-squashfs)" "$(s tools-squashfs)")) |
| squashfs image size | $sq_kiln_size B | $sq_tools_fs B | size $(ratio "$sq_kiln_size" "$sq_tools_fs") |
| USR ext4 + verity (fs + verity stages) | $(stages ext4) s | mkfs.ext4 -d + veritysetup format: $(s tools-ext4) s, $(mb tools-ext4) MiB | time $(ratio "$(stages ext4)" "$(s tools-ext4)") |
| … the whole kiln build | $(s kiln-ext4) s, $(mb kiln-ext4) MiB | the same + sha256sum of the 2 GiB partition image: $(s tools-ext4-sum) s | time $(ratio "$(s kiln-ext4)" "$(s tools-ext4-sum)") (vs the pair alone: $(ratio "$(s kiln-ext4)" "$(s tools-ext4)")) |
| offline verify of the $((disk_size >> 20)) MiB demo disk.img | $(s kiln-verify) s ($(mbps "$disk_size" "$(s kiln-verify)") MB/s), $(mb kiln-verify) MiB | sha256sum: $(s sha256sum) s ($(mbps "$disk_size" "$(s sha256sum)") MB/s) | time $(ratio "$(s kiln-verify)" "$(s sha256sum)") |

The fs + verity rows compare like with like (kiln's own stage clock, from \`kiln build --json\`); the whole-build rows compare the whole kiln build with the tools doing the same work, a partition checksum included (kiln's manifest holds the SHA-256 of the whole 2 GiB partition).
MD
