#!/bin/sh
# Fetches what the bootable recipe boots, from Debian's own packages, into
# DIR (default: recipes/bootable/deb beside this script):
#   DIR/root   the packages unpacked: the cloud kernel and its modules,
#              systemd's UEFI stub, busybox
#   DIR/usr    the release's /usr: busybox and its applets, kiln, the init
#              script the OEM partition names
# Usage: fetch.sh [DIR] [KILN]   (KILN: the kiln binary to put in /usr)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$here/deb}
kiln=${2:-$here/../../bin/kiln}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ ! -f "$dir/.fetched" ]; then
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	# The cloud kernel: virtio, dm-verity and squashfs as modules, a small
	# image; systemd-boot-efi: linuxx64.efi.stub for the unified image.
	kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
	(cd "$tmp" && apt-get download -q "$kpkg" systemd-boot-efi busybox-static >/dev/null 2>&1) ||
		{ apt-get update -qq && (cd "$tmp" && apt-get download -q "$kpkg" systemd-boot-efi busybox-static >/dev/null); }
	rm -rf "$dir/root"
	for d in "$tmp"/*.deb; do dpkg-deb -x "$d" "$dir/root"; done
	version=${kpkg#linux-image-}
	ln -sfn "vmlinuz-$version" "$dir/root/boot/vmlinuz"
	ln -sfn "$version" "$dir/root/lib/modules/current"
	touch "$dir/.fetched"
fi
# The release's /usr (remade each time: kiln may have changed).
rm -rf "$dir/usr"
mkdir -p "$dir/usr/bin" "$dir/usr/sbin" "$dir/usr/lib/bootable"
cp "$dir/root/bin/busybox" "$dir/usr/bin/busybox"
for a in sh cat echo mount umount mkdir ls sleep sync poweroff reboot uname head grep awk cut tr; do
	ln -sf busybox "$dir/usr/bin/$a"
done
cp "$kiln" "$dir/usr/bin/kiln"
cat >"$dir/usr/lib/bootable/init" <<'INIT'
#!/bin/sh
# The bootable demo's init (the OEM partition's kiln.conf names it): say
# which slot and release booted, bless the slot, power off.
export PATH=/usr/bin:/usr/sbin
echo "bootable: up; kiln slot status:"
kiln slot status
kiln slot mark-good
poweroff -f
INIT
chmod 755 "$dir/usr/lib/bootable/init"
# The default init, which the slot's initrd starts when OEM names none.
ln -sf ../lib/bootable/init "$dir/usr/sbin/init"
