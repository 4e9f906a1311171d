//go:build linux

package boot

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-os/kiln/build/slot"
	"github.com/kiln-os/kiln/build/verity"
	"github.com/kiln-os/kiln/internal/dm"
	"github.com/kiln-os/kiln/layout"
	"github.com/kiln-os/kiln/sign"
)

// Paths inside kiln's initrd.
const (
	InitrdKey     = "etc/kiln/release.pub" // the key slot records must verify with
	InitrdModules = "etc/kiln/modules"     // module files to load, in order
	// SlotBootDir is where a slot's filesystem holds its kernel, initrd
	// and command line (under /usr once mounted).
	SlotBootDir = "lib/kiln/boot"
)

// CmdlineUsr is the kernel command line parameter the chooser passes to
// the slot's kernel: kiln.usr=PARTUUID=<guid>.
const CmdlineUsr = "kiln.usr"

// Init is PID 1 of kiln's initrd. Without kiln.usr= on the kernel command
// line it is the chooser, booted by the firmware from the ESP: it picks
// the slot as GRUB's gptprio would (lowering a trial slot's tries on disk
// first), checks the slot's signed release record with the key built into
// the initrd (and a slot on trial's whole dm-verity tree), refuses a slot
// that fails (priority 0, and chooses again), mounts the slot through
// dm-verity and kexecs the kernel and initrd the slot carries. With
// kiln.usr= it is that slot's own initrd: it checks the record again with
// its own key, sets up /usr through dm-verity (restart on corruption),
// mounts ROOT read-write and OEM read-only, and switches to the init the
// OEM partition names.
func Init(ctx context.Context, log io.Writer) error {
	for _, m := range []struct{ src, dst, typ string }{{"devtmpfs", "/dev", "devtmpfs"}, {"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.typ, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mounting %s: %w", m.dst, err)
		}
	}
	if err := loadModules(log); err != nil {
		return err
	}
	cmdline, _ := os.ReadFile("/proc/cmdline")
	key, err := os.ReadFile("/" + InitrdKey)
	if err != nil {
		return fmt.Errorf("the initrd has no release key: %w", err)
	}
	pub, err := sign.ParsePublicKeyPEM(key, InitrdKey)
	if err != nil {
		return err
	}
	v, err := sign.NewVerifier(pub, "the release key")
	if err != nil {
		return err
	}
	disk, err := findDisk(ctx, 30*time.Second)
	if err != nil {
		return err
	}
	fmt.Fprintf(log, "kiln: disk %s\n", disk)
	if id, ok := cmdlineValue(string(cmdline), CmdlineUsr); ok {
		return runSlot(log, disk, id, v)
	}
	return choose(log, disk, string(cmdline), v)
}

func cmdlineValue(cmdline, key string) (string, bool) {
	for _, f := range strings.Fields(cmdline) {
		if k, val, ok := strings.Cut(f, "="); ok && k == key {
			return val, true
		}
	}
	return "", false
}

// loadModules loads the initrd's modules in the order the list gives.
func loadModules(log io.Writer) error {
	list, err := os.ReadFile("/" + InitrdModules)
	if err != nil {
		return nil // none
	}
	for _, p := range strings.Fields(string(list)) {
		f, err := os.Open("/" + p)
		if err != nil {
			return fmt.Errorf("module %s: %w", p, err)
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("loading module %s: %w", p, err)
		}
	}
	return nil
}

// findDisk waits for the first whole disk that holds a GPT with USR slots.
func findDisk(ctx context.Context, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		entries, _ := os.ReadDir("/sys/class/block")
		for _, e := range entries {
			if _, err := os.Stat(filepath.Join("/sys/class/block", e.Name(), "partition")); err == nil {
				continue
			}
			dev := "/dev/" + e.Name()
			d, err := layout.OpenDisk(dev)
			if err != nil {
				continue
			}
			t, err := d.ReadTable()
			d.Close()
			if err == nil && len(t.Slots()) > 0 {
				return dev, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return "", errors.New("no disk with USR slots appeared")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// partitionDev returns the device node of partition n of disk.
func partitionDev(disk string, n int) string {
	base := filepath.Base(disk)
	if c := base[len(base)-1]; c >= '0' && c <= '9' {
		return fmt.Sprintf("%sp%d", disk, n)
	}
	return fmt.Sprintf("%s%d", disk, n)
}

// slotRecord reads and verifies slot e's release record.
func slotRecord(d *layout.Disk, e *layout.Entry, v sign.Verifier) (*slot.Signed, error) {
	rec, err := slot.Read(io.NewSectionReader(d, e.Offset(), e.Size()), e.Size())
	if err != nil {
		return nil, err
	}
	if err := rec.Verify(v); err != nil {
		return nil, err
	}
	return rec, nil
}

// choose picks a slot, checks it and kexecs what it carries.
func choose(log io.Writer, disk, cmdline string, v sign.Verifier) error {
	d, err := layout.OpenDiskForWriting(disk)
	if err != nil {
		return err
	}
	defer d.Close()
	for {
		t, err := d.ReadTable()
		if err != nil {
			return err
		}
		e, err := slot.Try(t)
		if err != nil {
			return fmt.Errorf("%s: %w", disk, err)
		}
		trial := !e.Slot().Successful
		if err := d.UpdateAttributes(t); err != nil {
			return err
		}
		fmt.Fprintf(log, "kiln: gptprio chose %s (%s)\n", e.Label, e.Slot())
		rec, err := slotRecord(d, e, v)
		if err == nil && trial {
			// A slot on trial has its whole tree checked before it runs.
			var root []byte
			if root, err = rec.Record.Verity.Root(); err == nil {
				_, err = verity.Verify(io.NewSectionReader(d, e.Offset(), e.Size()), 0, rec.Record.Verity.HashOffset, root)
			}
		}
		if err != nil {
			fmt.Fprintf(log, "kiln: refusing %s: %v\n", e.Label, err)
			if t, err = d.ReadTable(); err != nil {
				return err
			}
			e, _ = t.Lookup(e.Label)
			slot.MarkUnbootable(e)
			if err := d.UpdateAttributes(t); err != nil {
				return err
			}
			continue
		}
		fmt.Fprintf(log, "kiln: %s holds %s %s\n", e.Label, rec.Record.Name, rec.Record.Version)
		d.Close()
		return kexecSlot(log, disk, e, rec, cmdline)
	}
}

// setupUsr maps slot e of disk through dm-verity as /dev/mapper/usr and
// returns the device node.
func setupUsr(disk string, e *layout.Entry, rec *slot.Signed, opts string) (string, error) {
	v := rec.Record.Verity
	part := partitionDev(disk, e.Number)
	params := fmt.Sprintf("1 %s %s %d %d %d %d %s %s %s", part, part, v.DataBlockSize, v.HashBlockSize, v.DataBlocks,
		v.HashOffset/int64(v.HashBlockSize)+1, v.Algorithm, v.RootHash, v.Salt)
	if opts != "" {
		params += " " + opts
	}
	_, minor, err := dm.Create("usr", true, []dm.Target{{Start: 0, Length: v.DataBlocks * uint64(v.DataBlockSize) / 512, Type: "verity", Params: params}})
	if err != nil {
		return "", err
	}
	dev := fmt.Sprintf("/dev/dm-%d", minor)
	for range 50 {
		if _, err := os.Stat(dev); err == nil {
			return dev, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return "", fmt.Errorf("%s did not appear", dev)
}

// kexecSlot mounts the slot through dm-verity, loads the kernel and
// initrd it carries and boots them.
func kexecSlot(log io.Writer, disk string, e *layout.Entry, rec *slot.Signed, cmdline string) error {
	dev, err := setupUsr(disk, e, rec, "")
	if err != nil {
		return err
	}
	os.MkdirAll("/slot", 0o755)
	if err := mountAny(dev, "/slot", unix.MS_RDONLY); err != nil {
		return err
	}
	dir := filepath.Join("/slot", SlotBootDir)
	kernel, err := os.Open(filepath.Join(dir, "vmlinuz"))
	if err != nil {
		return fmt.Errorf("%s carries no kernel: %w", e.Label, err)
	}
	initrd, err := os.Open(filepath.Join(dir, "initrd.img"))
	if err != nil {
		return fmt.Errorf("%s carries no initrd: %w", e.Label, err)
	}
	args, err := os.ReadFile(filepath.Join(dir, "cmdline"))
	if err != nil {
		return fmt.Errorf("%s carries no command line: %w", e.Label, err)
	}
	line := strings.TrimSpace(string(args)) + fmt.Sprintf(" %s=PARTUUID=%s", CmdlineUsr, e.GUID)
	fmt.Fprintf(log, "kiln: booting %s's kernel: %s\n", e.Label, line)
	if err := unix.KexecFileLoad(int(kernel.Fd()), int(initrd.Fd()), line, 0); err != nil {
		return fmt.Errorf("kexec_file_load: %w", err)
	}
	kernel.Close()
	initrd.Close()
	unix.Unmount("/slot", 0)
	dm.Remove("usr")
	unix.Sync()
	return unix.Reboot(unix.LINUX_REBOOT_CMD_KEXEC)
}

// mountAny mounts dev at dir as ext4, else squashfs.
func mountAny(dev, dir string, flags uintptr) error {
	var errs []error
	for _, fs := range []string{"ext4", "squashfs"} {
		err := unix.Mount(dev, dir, fs, flags, "")
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", fs, err))
	}
	return fmt.Errorf("mounting %s on %s: %w", dev, dir, errors.Join(errs...))
}

// runSlot is the slot's own initrd: /usr through dm-verity, ROOT, OEM, and
// on to init.
func runSlot(log io.Writer, disk, id string, v sign.Verifier) error {
	g, err := layout.ParseGUID(strings.TrimPrefix(strings.ToUpper(id), "PARTUUID="))
	if err != nil {
		return fmt.Errorf("%s=%s: %w", CmdlineUsr, id, err)
	}
	d, err := layout.OpenDisk(disk)
	if err != nil {
		return err
	}
	t, err := d.ReadTable()
	if err != nil {
		d.Close()
		return err
	}
	var e *layout.Entry
	for _, s := range t.Slots() {
		if s.GUID == g {
			e = s
		}
	}
	if e == nil {
		d.Close()
		return fmt.Errorf("no USR slot has GUID %s", g)
	}
	rec, err := slotRecord(d, e, v)
	d.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", e.Label, err)
	}
	usr, err := setupUsr(disk, e, rec, "1 restart_on_corruption")
	if err != nil {
		return err
	}
	root, err := t.Lookup("ROOT")
	if err != nil {
		return err
	}
	os.MkdirAll("/sysroot", 0o755)
	if err := unix.Mount(partitionDev(disk, root.Number), "/sysroot", "ext4", 0, ""); err != nil {
		return fmt.Errorf("mounting ROOT: %w", err)
	}
	for _, p := range []string{"usr", "oem", "dev", "proc", "sys", "run", "tmp", "etc", "var"} {
		os.MkdirAll(filepath.Join("/sysroot", p), 0o755)
	}
	if err := mountAny(usr, "/sysroot/usr", unix.MS_RDONLY); err != nil {
		return err
	}
	for _, l := range []string{"bin", "sbin", "lib", "lib64"} {
		os.Symlink("usr/"+l, filepath.Join("/sysroot", l))
	}
	initPath := "/sbin/init"
	if oem, err := t.Lookup("OEM"); err == nil {
		if err := unix.Mount(partitionDev(disk, oem.Number), "/sysroot/oem", "ext4", unix.MS_RDONLY, ""); err == nil {
			if p, ok := oemConfig("/sysroot/oem/kiln.conf")["init"]; ok {
				initPath = p
			}
		}
	}
	fmt.Fprintf(log, "kiln: %s holds %s %s; /usr on %s through dm-verity; starting %s\n", e.Label, rec.Record.Name, rec.Record.Version, usr, initPath)
	for _, m := range []string{"/dev", "/proc", "/sys"} {
		if err := unix.Mount(m, "/sysroot"+m, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("moving %s: %w", m, err)
		}
	}
	if err := unix.Chdir("/sysroot"); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("switching root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return err
	}
	unix.Chdir("/")
	return unix.Exec(initPath, []string{initPath}, []string{"PATH=/usr/sbin:/usr/bin", "HOME=/"})
}

// oemConfig reads KEY=VALUE lines.
func oemConfig(path string) map[string]string {
	out := map[string]string{}
	b, err := os.ReadFile(path)
	if err != nil {
		return out
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			out[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return out
}
