//go:build linux

package boot

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kiln-os/kiln/build/slot"
	"github.com/kiln-os/kiln/build/version"
	"github.com/kiln-os/kiln/internal/dm"
	"github.com/kiln-os/kiln/layout"
	"github.com/kiln-os/kiln/sign"
)

// FloorStore keeps the boot-time version floor where an offline edit of
// the disk cannot lower it (a TPM NV index).
type FloorStore interface {
	// Read returns the stored floor; ok is false when none is stored yet.
	Read() (v string, ok bool, err error)
	// Write stores v (the caller only ever raises it).
	Write(v string) error
	// Lock refuses further writes until the next reset of the machine.
	Lock() error
	// String names the store for the console.
	String() string
}

// chooser is the boot path's first stage.
type chooser struct {
	log      io.Writer
	disk     string
	verifier sign.Verifier
	cmdline  string
	floors   FloorStore // nil: no TPM
}

// refusal is why a slot cannot boot. A lasting one (the slot's data or
// record is bad, or its release is below the floor) takes the slot out of
// the boot order on disk; any other only skips it for this boot.
type refusal struct {
	err     error
	lasting bool
}

// run chooses a slot and boots it: gptprio's choice with every boot
// counted (slot.Begin), the version floor (the TPM's and the good slots'
// own), the slot's signed record, its whole verity tree when it is on
// trial or its last boot was not confirmed, then kexec of the kernel it
// carries. A slot that fails any step is refused with a console line and
// the choice runs again; when nothing the boot order allows is left, a
// slot that verifies whole is booted as a last resort. It returns only
// when no slot can boot.
func (c *chooser) run() error {
	d, err := layout.OpenDiskForWriting(c.disk)
	if err != nil {
		return err
	}
	defer d.Close()
	t, err := d.ReadTable()
	if err != nil {
		return err
	}
	// The records and the floor as the boot began: the loop below changes
	// only attribute bits.
	records := c.records(d, t)
	floor, err := c.floor(t, records)
	if err != nil {
		return err
	}
	skipped := map[string]refusal{}
	lastResort := false
	for {
		t, err := d.ReadTable()
		if err != nil {
			return err
		}
		a, err := slot.Begin(t, func(e *layout.Entry) bool { _, ok := skipped[e.Label]; return ok })
		for _, s := range a.Demoted {
			fmt.Fprintf(c.log, "kiln: %s: falling back\n", s)
		}
		if err != nil {
			if lastResort {
				return c.nothingBoots(t, skipped, err)
			}
			lastResort = true
			if !c.lastResort(d, t, records, floor, skipped) {
				return c.nothingBoots(t, skipped, err)
			}
			continue
		}
		e := a.Entry
		if err := d.UpdateAttributes(t); err != nil {
			return err
		}
		fmt.Fprintf(c.log, "kiln: gptprio chose %s (%s): %s\n", e.Label, e.Slot(), a.Why)
		rec, ref := c.check(d, e, records[e.Label], floor, a.FullCheck)
		if ref == nil {
			fmt.Fprintf(c.log, "kiln: %s holds %s %s\n", e.Label, rec.Record.Name, rec.Record.Version)
			ref = c.kexec(e, rec)
		}
		// kexec returns only when the slot could not be booted.
		if err := c.refuse(d, e, ref, skipped); err != nil {
			return err
		}
	}
}

// records reads and verifies every slot's release record (nil where a
// slot has none or it does not verify).
func (c *chooser) records(d *layout.Disk, t *layout.Table) map[string]*slot.Signed {
	out := map[string]*slot.Signed{}
	for _, e := range t.Slots() {
		if rec, err := slotRecord(d, e, c.verifier); err == nil {
			out[e.Label] = rec
		}
	}
	return out
}

// floor returns the version floor: the TPM's, raised to what the good
// slots declare; a raise is written to the TPM, which is then locked
// against writes until the next reset.
func (c *chooser) floor(t *layout.Table, records map[string]*slot.Signed) (slot.Floor, error) {
	recs := map[*layout.Entry]*slot.Record{}
	for _, e := range t.Slots() {
		if r := records[e.Label]; r != nil {
			recs[e] = &r.Record
		}
	}
	f, err := slot.DiskFloor(t, recs)
	if err != nil {
		return f, err
	}
	if c.floors == nil {
		return f, nil
	}
	stored, ok, err := c.floors.Read()
	if err != nil {
		fmt.Fprintf(c.log, "kiln: %s: %v; using the floor the disk declares\n", c.floors, err)
		c.floors = nil
		return f, nil
	}
	if ok {
		if f, err = f.Raise(stored, "kept in "+c.floors.String()); err != nil {
			return f, err
		}
	}
	if f.Version != "" && (!ok || f.Version != stored) {
		if err := c.floors.Write(f.Version); err != nil {
			fmt.Fprintf(c.log, "kiln: %s: raising the version floor to %s: %v\n", c.floors, f.Version, err)
		} else {
			fmt.Fprintf(c.log, "kiln: version floor raised to %s (%s) in %s\n", f.Version, f.From, c.floors)
			f.From = "kept in " + c.floors.String()
		}
	}
	if err := c.floors.Lock(); err != nil {
		fmt.Fprintf(c.log, "kiln: %s: locking the version floor: %v\n", c.floors, err)
	}
	if f.Version != "" {
		fmt.Fprintf(c.log, "kiln: version floor %s (%s)\n", f.Version, f.From)
	}
	return f, nil
}

// check verifies that slot e may boot: its signed record, the floor,
// and, when full, its whole verity tree.
func (c *chooser) check(d *layout.Disk, e *layout.Entry, rec *slot.Signed, floor slot.Floor, full bool) (*slot.Signed, *refusal) {
	if rec == nil {
		_, err := slotRecord(d, e, c.verifier)
		if err == nil {
			err = errors.New("its release record changed while the boot path read it")
		}
		return nil, &refusal{err: err, lasting: true}
	}
	if err := floor.Admits(rec.Record.Version); err != nil {
		return nil, &refusal{err: err, lasting: true}
	}
	if full {
		fmt.Fprintf(c.log, "kiln: reading %s's whole dm-verity tree\n", e.Label)
		if err := fullCheck(d, e, rec); err != nil {
			return nil, &refusal{err: err, lasting: true}
		}
	}
	return rec, nil
}

// refuse records that slot e cannot boot: a lasting refusal takes it out
// of the boot order on disk (priority 0), any refusal skips it for the
// rest of this boot.
func (c *chooser) refuse(d *layout.Disk, e *layout.Entry, r *refusal, skipped map[string]refusal) error {
	how := "skipped for this boot"
	if r.lasting {
		how = "out of the boot order (priority 0)"
	}
	fmt.Fprintf(c.log, "kiln: refusing %s: %v; %s\n", e.Label, r.err, how)
	skipped[e.Label] = *r
	if !r.lasting {
		return nil
	}
	t, err := d.ReadTable()
	if err != nil {
		return err
	}
	if e, err = t.Lookup(e.Label); err != nil {
		return err
	}
	slot.MarkUnbootable(e)
	return d.UpdateAttributes(t)
}

// lastResort runs when the boot order allows no slot that is left: the
// slot of the highest version whose record verifies, that the floor
// admits and whose whole verity tree is good is put on trial (one try),
// so it boots and can be marked good. It reports whether there was one.
func (c *chooser) lastResort(d *layout.Disk, t *layout.Table, records map[string]*slot.Signed, floor slot.Floor, skipped map[string]refusal) bool {
	var cands []*layout.Entry
	for _, e := range t.Slots() {
		if _, ok := skipped[e.Label]; !ok && records[e.Label] != nil {
			cands = append(cands, e)
		}
	}
	slices.SortStableFunc(cands, func(a, b *layout.Entry) int {
		va, ea := version.Parse(records[a.Label].Record.Version)
		vb, eb := version.Parse(records[b.Label].Record.Version)
		if ea != nil || eb != nil {
			return 0
		}
		return vb.Compare(va)
	})
	for _, e := range cands {
		fmt.Fprintf(c.log, "kiln: no slot is bootable by the boot order; last resort: checking %s (%s) whole\n", e.Label, records[e.Label].Record.Version)
		if _, r := c.check(d, e, records[e.Label], floor, true); r != nil {
			c.refuse(d, e, r, skipped)
			continue
		}
		e.Attributes = layout.SlotState{Priority: 1, Tries: 1}.Attributes(e.Attributes)
		if err := d.UpdateAttributes(t); err != nil {
			fmt.Fprintf(c.log, "kiln: last resort %s: %v\n", e.Label, err)
			return false
		}
		return true
	}
	return false
}

// nothingBoots explains why no slot can boot.
func (c *chooser) nothingBoots(t *layout.Table, skipped map[string]refusal, err error) error {
	var why []string
	for _, e := range t.Slots() {
		if r, ok := skipped[e.Label]; ok {
			why = append(why, fmt.Sprintf("%s: %v", e.Label, r.err))
		} else {
			why = append(why, fmt.Sprintf("%s: %s", e.Label, e.Slot()))
		}
	}
	return fmt.Errorf("%s: no slot can boot (%w): %s", c.disk, err, strings.Join(why, "; "))
}

// kexec mounts slot e through dm-verity, loads the kernel, initrd and
// command line it carries with kexec_file_load and boots them. It returns
// only why it could not: a read error (dm-verity found a bad block) is a
// lasting refusal; anything else (a kernel the firmware's keys do not
// sign, under lockdown) skips the slot for this boot.
func (c *chooser) kexec(e *layout.Entry, rec *slot.Signed) *refusal {
	var open []*os.File
	release := func() {
		for _, f := range open {
			f.Close()
		}
		open = nil
		unix.Unmount("/slot", 0)
		dm.Remove("slot-" + e.Label)
	}
	fail := func(err error) *refusal {
		release()
		return &refusal{err: err, lasting: errors.Is(err, unix.EIO)}
	}
	dev, err := setupUsr("slot-"+e.Label, c.disk, e, rec, "")
	if err != nil {
		return fail(err)
	}
	os.MkdirAll("/slot", 0o755)
	if err := mountAny(dev, "/slot", unix.MS_RDONLY); err != nil {
		return fail(err)
	}
	dir := filepath.Join("/slot", SlotBootDir)
	kernel, err := os.Open(filepath.Join(dir, "vmlinuz"))
	if err != nil {
		return fail(fmt.Errorf("it carries no kernel: %w", err))
	}
	open = append(open, kernel)
	initrd, err := os.Open(filepath.Join(dir, "initrd.img"))
	if err != nil {
		return fail(fmt.Errorf("it carries no initrd: %w", err))
	}
	open = append(open, initrd)
	args, err := os.ReadFile(filepath.Join(dir, "cmdline"))
	if err != nil {
		return fail(fmt.Errorf("it carries no command line: %w", err))
	}
	line := strings.TrimSpace(string(args)) + fmt.Sprintf(" %s=PARTUUID=%s", CmdlineUsr, e.GUID)
	fmt.Fprintf(c.log, "kiln: booting %s's kernel: %s\n", e.Label, line)
	if err := unix.KexecFileLoad(int(kernel.Fd()), int(initrd.Fd()), line, 0); err != nil {
		what := "kexec_file_load"
		switch {
		case errors.Is(err, unix.EKEYREJECTED), errors.Is(err, unix.ENOKEY), errors.Is(err, unix.EPERM), errors.Is(err, unix.EBADMSG):
			what += " (under lockdown the kernel must be signed by a key the kernel's keyrings or the firmware's db hold)"
		case errors.Is(err, unix.EIO):
			what += " (dm-verity found a bad block in the kernel or initrd)"
		}
		return fail(fmt.Errorf("%s: %w", what, err))
	}
	release()
	unix.Sync()
	err = unix.Reboot(unix.LINUX_REBOOT_CMD_KEXEC)
	return &refusal{err: fmt.Errorf("kexec reboot: %w", err)}
}
