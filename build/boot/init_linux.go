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

// DefaultInit is the init the slot's initrd starts when the OEM
// partition names none, or names one that is not on the verified /usr.
const DefaultInit = "/usr/sbin/init"

// ErrSlotStage is returned by Init when the slot's own initrd failed: the
// caller reboots, so the chooser counts the failed boot and falls back.
var ErrSlotStage = errors.New("boot: the slot's initrd failed")

// Init is PID 1 of kiln's initrd. Without kiln.usr= on the kernel command
// line it is the chooser, booted by the firmware from the ESP (see
// chooser.run). With kiln.usr= it is that slot's own initrd: it checks the
// record again with its own key, sets up /usr through dm-verity (restart
// on corruption), mounts ROOT read-write and OEM read-only, and starts an
// init on the verified /usr. Errors of the slot stage wrap ErrSlotStage.
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
	id, slotStage := cmdlineValue(string(cmdline), CmdlineUsr)
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
	if !slotStage {
		fmt.Fprintf(log, "kiln: %s\n", secureBootState())
	}
	disk, err := findDisk(ctx, 30*time.Second)
	if err != nil {
		if slotStage {
			return fmt.Errorf("%w: %v", ErrSlotStage, err)
		}
		return err
	}
	fmt.Fprintf(log, "kiln: disk %s\n", disk)
	if slotStage {
		if err := runSlot(log, disk, id, v); err != nil {
			return fmt.Errorf("%w: %v", ErrSlotStage, err)
		}
		return nil
	}
	c := &chooser{log: log, disk: disk, verifier: v, cmdline: string(cmdline), floors: openFloorStore(log)}
	return c.run()
}

func cmdlineValue(cmdline, key string) (string, bool) {
	for _, f := range strings.Fields(cmdline) {
		if k, val, ok := strings.Cut(f, "="); ok && k == key {
			return val, true
		}
	}
	return "", false
}

// loadModules loads the initrd's modules in the order the list gives. A
// module for hardware the machine does not have (a Xen or Hyper-V disk
// driver on another cloud) refuses to load, and so do the modules that
// need it: those are passed over in silence; any other failure is said
// on the console and the boot goes on (a missing disk driver shows as no
// disk found).
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
		switch {
		case err == nil, errors.Is(err, unix.EEXIST), errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENXIO), errors.Is(err, unix.ENOENT):
		default:
			fmt.Fprintf(log, "kiln: loading module %s: %v\n", p, err)
		}
	}
	return nil
}

// efiGlobal is the vendor GUID of the UEFI global variables.
const efiGlobal = "8be4df61-93ca-11d2-aa0d-00e098032b8c"

// secureBootState says whether the firmware booted with Secure Boot on
// (its SecureBoot variable) and the kernel's lockdown mode.
func secureBootState() string {
	os.MkdirAll("/sys/firmware/efi/efivars", 0o755)
	unix.Mount("efivarfs", "/sys/firmware/efi/efivars", "efivarfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	unix.Mount("securityfs", "/sys/kernel/security", "securityfs", 0, "")
	sb := "unknown (no EFI variables)"
	if _, err := os.Stat("/sys/firmware/efi"); err != nil {
		sb = "unknown (not booted by UEFI)"
	} else if b, err := os.ReadFile("/sys/firmware/efi/efivars/SecureBoot-" + efiGlobal); err == nil && len(b) == 5 {
		// 4 bytes of attributes, then the value.
		sb = map[bool]string{true: "enabled", false: "disabled"}[b[4] == 1]
	}
	lockdown := "unknown"
	if b, err := os.ReadFile("/sys/kernel/security/lockdown"); err == nil {
		for _, f := range strings.Fields(string(b)) {
			if strings.HasPrefix(f, "[") {
				lockdown = strings.Trim(f, "[]")
			}
		}
	}
	return fmt.Sprintf("Secure Boot: %s; kernel lockdown: %s", sb, lockdown)
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
			names := []string{}
			for _, e := range entries {
				names = append(names, e.Name())
			}
			return "", fmt.Errorf("no disk with USR slots appeared in %v (block devices: %s; is the disk controller's module in boot.load?)", wait, strings.Join(names, " "))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// partitionDev returns the device node of partition n of disk, as sysfs
// names it (vda3, sda3, nvme0n1p3, ...).
func partitionDev(disk string, n int) (string, error) {
	base := filepath.Base(disk)
	entries, err := os.ReadDir(filepath.Join("/sys/class/block", base))
	if err != nil {
		return "", fmt.Errorf("partition %d of %s: %w", n, disk, err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/sys/class/block", base, e.Name(), "partition"))
		if err == nil && strings.TrimSpace(string(b)) == fmt.Sprint(n) {
			return "/dev/" + e.Name(), nil
		}
	}
	return "", fmt.Errorf("%s has no partition %d in /sys/class/block/%s", disk, n, base)
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

// setupUsr maps slot e of disk through dm-verity as the device-mapper
// device name and returns its device node.
func setupUsr(name, disk string, e *layout.Entry, rec *slot.Signed, opts string) (string, error) {
	v := rec.Record.Verity
	part, err := partitionDev(disk, e.Number)
	if err != nil {
		return "", err
	}
	params := fmt.Sprintf("1 %s %s %d %d %d %d %s %s %s", part, part, v.DataBlockSize, v.HashBlockSize, v.DataBlocks,
		v.HashOffset/int64(v.HashBlockSize)+1, v.Algorithm, v.RootHash, v.Salt)
	if opts != "" {
		params += " " + opts
	}
	_, minor, err := dm.Create(name, true, []dm.Target{{Start: 0, Length: v.DataBlocks * uint64(v.DataBlockSize) / 512, Type: "verity", Params: params}})
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
// on to an init on the verified /usr.
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
	usr, err := setupUsr("usr", disk, e, rec, "1 restart_on_corruption")
	if err != nil {
		return err
	}
	root, err := t.Lookup("ROOT")
	if err != nil {
		return err
	}
	rootDev, err := partitionDev(disk, root.Number)
	if err != nil {
		return err
	}
	os.MkdirAll("/sysroot", 0o755)
	if err := unix.Mount(rootDev, "/sysroot", "ext4", 0, ""); err != nil {
		return fmt.Errorf("mounting ROOT: %w", err)
	}
	for _, p := range []string{"usr", "oem", "dev", "proc", "sys", "run", "tmp", "etc", "var"} {
		os.MkdirAll(filepath.Join("/sysroot", p), 0o755)
	}
	if err := mountAny(usr, "/sysroot/usr", unix.MS_RDONLY); err != nil {
		return err
	}
	if err := mergedUsr(log, "/sysroot"); err != nil {
		return err
	}
	asked := ""
	if oem, err := t.Lookup("OEM"); err == nil {
		if dev, err := partitionDev(disk, oem.Number); err == nil {
			if err := unix.Mount(dev, "/sysroot/oem", "ext4", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err == nil {
				asked = oemConfig("/sysroot/oem/kiln.conf")["init"]
			}
		}
	}
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
	initPath := DefaultInit
	if asked != "" {
		if err := VerifiedInit("/", asked); err != nil {
			fmt.Fprintf(log, "kiln: refusing init=%s from OEM's kiln.conf: %v; starting %s\n", asked, err, DefaultInit)
		} else {
			initPath = asked
		}
	}
	if asked == "" || initPath != asked {
		if err := VerifiedInit("/", initPath); err != nil {
			return fmt.Errorf("the default init: %w", err)
		}
	}
	fmt.Fprintf(log, "kiln: %s holds %s %s; /usr on %s through dm-verity; starting %s\n", e.Label, rec.Record.Name, rec.Record.Version, usr, initPath)
	return unix.Exec(initPath, []string{initPath}, []string{"PATH=/usr/sbin:/usr/bin", "HOME=/"})
}

// usrMerged are the top-level names that must be links into /usr, so that
// nothing on the writable ROOT stands where the system looks for programs
// and libraries (the dynamic loader included).
var usrMerged = []string{"bin", "sbin", "lib", "lib32", "lib64", "libx32"}

// mergedUsr makes root/bin, sbin, lib, lib32, lib64 and libx32 the links
// usr/NAME, for those that /usr has. Anything else found there on ROOT
// (a directory, a file, another link) is moved aside to NAME.kiln-refused
// and said on the console: ROOT is writable and unverified, and a program
// or library there would run with the verified /usr around it.
func mergedUsr(log io.Writer, root string) error {
	for _, n := range usrMerged {
		if _, err := os.Lstat(filepath.Join(root, "usr", n)); err != nil {
			continue
		}
		p := filepath.Join(root, n)
		want := "usr/" + n
		if target, err := os.Readlink(p); err == nil && target == want {
			continue
		}
		if _, err := os.Lstat(p); err == nil {
			aside := p + ".kiln-refused"
			for i := 1; ; i++ {
				if _, err := os.Lstat(aside); err != nil {
					break
				}
				aside = fmt.Sprintf("%s.kiln-refused.%d", p, i)
			}
			if err := os.Rename(p, aside); err != nil {
				return fmt.Errorf("ROOT's /%s is not the link %s and cannot be moved aside: %w", n, want, err)
			}
			fmt.Fprintf(log, "kiln: ROOT's /%s was not the link %s: moved to /%s\n", n, want, filepath.Base(aside))
		}
		if err := os.Symlink(want, p); err != nil {
			return fmt.Errorf("linking /%s to %s: %w", n, want, err)
		}
	}
	return nil
}

// VerifiedInit checks that path, seen from root (the switched root of the
// slot), is a program on the verified /usr: an absolute, clean path under
// /usr or one of the merged names (/sbin, /bin, …), whose file, after every
// link, is a regular executable file on the same filesystem as root/usr.
func VerifiedInit(root, path string) error {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return fmt.Errorf("%q is not a clean absolute path", path)
	}
	top, _, _ := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	allowed := top == "usr"
	for _, n := range usrMerged {
		allowed = allowed || top == n
	}
	if !allowed {
		return fmt.Errorf("%s is not under /usr", path)
	}
	var usr, st unix.Stat_t
	if err := unix.Stat(filepath.Join(root, "usr"), &usr); err != nil {
		return fmt.Errorf("/usr: %w", err)
	}
	if err := unix.Stat(filepath.Join(root, path), &st); err != nil {
		return err
	}
	if st.Dev != usr.Dev {
		return fmt.Errorf("%s is not on the verified /usr (device %d:%d, /usr is %d:%d)", path,
			unix.Major(st.Dev), unix.Minor(st.Dev), unix.Major(usr.Dev), unix.Minor(usr.Dev))
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Mode&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	return nil
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

// fullCheck reads slot e's whole dm-verity tree against its signed root.
func fullCheck(d *layout.Disk, e *layout.Entry, rec *slot.Signed) error {
	root, err := rec.Record.Verity.Root()
	if err != nil {
		return err
	}
	_, err = verity.Verify(io.NewSectionReader(d, e.Offset(), e.Size()), 0, rec.Record.Verity.HashOffset, root)
	return err
}
