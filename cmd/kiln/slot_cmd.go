package main

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kiln-os/kiln/build/slot"
	"github.com/kiln-os/kiln/build/verify"
	"github.com/kiln-os/kiln/layout"
	"github.com/kiln-os/kiln/sign"
)

func newSlotCommand(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "slot",
		Short: "Show and change the A/B state of the USR slots",
	}
	c.AddCommand(newSlotStatusCommand(g), newSlotVerifyCommand(g), newSlotMarkBootableCommand(g), newSlotMarkGoodCommand(g), newSlotRollbackCommand(g))
	return c
}

// slotKey is the --key flag of the slot commands: with it, each slot's
// release record signature is checked.
func slotKey(c *cobra.Command, key *string) {
	c.Flags().StringVar(key, "key", "", "check each slot's release record signature with this public key")
}

// loadOptionalVerifier loads --key when given.
func loadOptionalVerifier(cmd *cobra.Command, key string) (sign.Verifier, error) {
	if key == "" {
		return nil, nil
	}
	v, err := sign.LoadVerifier(cmd.Context(), key)
	if err != nil {
		return nil, keyError(fmt.Errorf("--key %s: %w", key, err))
	}
	return v, nil
}

func printSlotStatus(g *globals, s *slot.Status) {
	w := g.env.Stdout
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SLOT\tPARTITION\tPRIORITY\tTRIES\tSUCCESSFUL\tVERSION\tRECORD\tROLE")
	for _, sl := range s.Slots {
		var roles []string
		for _, r := range []struct {
			on   bool
			name string
		}{{sl.Booted, "booted"}, {sl.Next, "next"}, {sl.OnTrial, "on trial"}, {sl.TrialFailed, "trial failed"}, {sl.Fallback, "fallback"},
			{sl.Unconfirmed > 0, fmt.Sprintf("%d boot(s) not confirmed by mark-good", sl.Unconfirmed)}, {sl.BelowFloor, "below the version floor"},
			{sl.Empty, "empty"}} {
			if r.on {
				roles = append(roles, r.name)
			}
		}
		version := sl.Version
		if version == "" {
			version = "-"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%v\t%s\t%s\t%s\n", sl.Label, sl.Number, sl.State.Priority, sl.State.Tries, sl.State.Successful, version, sl.Record, strings.Join(roles, ", "))
	}
	tw.Flush()
	if s.Booted != "" {
		fmt.Fprintf(w, "booted: %s: %s\n", s.Booted, s.BootedHow)
	} else {
		fmt.Fprintf(w, "booted: none: %s\n", s.BootedHow)
	}
	if s.Next != "" {
		fmt.Fprintf(w, "next boot: %s: %s\n", s.Next, s.NextWhy)
	} else {
		fmt.Fprintf(w, "next boot: none: %s\n", s.NextWhy)
	}
	if s.Floor != "" {
		fmt.Fprintf(w, "version floor: %s, %s\n", s.Floor, s.FloorFrom)
	}
}

// statusOf reads the slot status of an open disk.
func statusOf(d *layout.Disk, t *layout.Table, v sign.Verifier) (*slot.Status, error) {
	b, err := slot.FindBooted(slot.System{}, d.File, t)
	if err != nil {
		return nil, err
	}
	return slot.ReadStatus(d.File, t, b, v), nil
}

// bootedDisk returns the disk argument, or with none, the disk the
// running system booted from.
func bootedDisk(args []string) (string, error) {
	if len(args) > 0 {
		return args[0], nil
	}
	disk, err := slot.System{}.BootedDisk()
	if err != nil {
		return "", usageError(fmt.Errorf("no DISK given and %w", err))
	}
	return disk, nil
}

func newSlotStatusCommand(g *globals) *cobra.Command {
	var key string
	c := &cobra.Command{
		Use:   "status [DISK] [--key PUBKEY]",
		Short: "Show each USR slot's state, release and role: booted, next (GRUB gptprio's rule), on trial, fallback",
		Long:  "Without DISK, the disk the running system booted from (the disk under /usr).",
		Args:  cobra.RangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := loadOptionalVerifier(cmd, key)
			if err != nil {
				return err
			}
			disk, err := bootedDisk(args)
			if err != nil {
				return err
			}
			args = []string{disk}
			d, err := openDisk(args[0], false)
			if err != nil {
				return err
			}
			defer d.Close()
			t, err := d.ReadTable()
			if err != nil {
				return failed(err)
			}
			if len(t.Slots()) == 0 {
				return failed(fmt.Errorf("%s: no USR slots (no partition of type coreos-usr)", args[0]))
			}
			s, err := statusOf(d, t, v)
			if err != nil {
				return err
			}
			if g.json {
				if err := g.printJSON(struct {
					Disk string `json:"disk"`
					*slot.Status
				}{args[0], s}); err != nil {
					return err
				}
			} else {
				printSlotStatus(g, s)
			}
			if s.Next == "" {
				return failed(fmt.Errorf("%s: %s", args[0], s.NextWhy))
			}
			return nil
		},
	}
	slotKey(c, &key)
	return c
}

// changeSlots opens the disk for writing (under its lock), reads its GPT,
// applies change, which returns the slot it changed, and writes the
// attribute bits back to both GPT copies (repairing a damaged copy).
func changeSlots(g *globals, disk string, change func(*layout.Table, slot.Booted) (*layout.Entry, error), verb string) error {
	d, err := openDisk(disk, true)
	if err != nil {
		return err
	}
	defer d.Close()
	return changeSlotsOn(g, d, change, verb)
}

// attributes is the attribute bits of every partition of t, to tell
// whether a change changed anything.
func attributes(t *layout.Table) string {
	var b strings.Builder
	for _, e := range t.Partitions {
		fmt.Fprintf(&b, "%d:%x ", e.Number, e.Attributes)
	}
	return b.String()
}

// changeSlotsOn is changeSlots on a disk already open for writing. A
// change that changes no bit writes nothing (unless a GPT copy needs
// repair) and says so.
func changeSlotsOn(g *globals, d *layout.Disk, change func(*layout.Table, slot.Booted) (*layout.Entry, error), verb string) error {
	disk := d.Path
	t, err := d.ReadTable()
	if err != nil {
		return failed(err)
	}
	b, err := slot.FindBooted(slot.System{}, d.File, t)
	if err != nil {
		return failed(err)
	}
	before := attributes(t)
	e, err := change(t, b)
	if err != nil {
		if errors.Is(err, slot.ErrUnproven) || errors.Is(err, layout.ErrNoPartition) {
			return usageError(fmt.Errorf("%s: %w", disk, err))
		}
		return failed(fmt.Errorf("%s: %w", disk, err))
	}
	changed := attributes(t) != before
	if changed || t.Copies.Err() != nil {
		if err := d.UpdateAttributes(t); err != nil {
			return failed(err)
		}
	}
	if t, err = d.ReadTable(); err != nil {
		return failed(err)
	}
	if b, err = slot.FindBooted(slot.System{}, d.File, t); err != nil {
		return failed(err)
	}
	s := slot.ReadStatus(d.File, t, b, nil)
	if g.json {
		return g.printJSON(struct {
			Disk      string `json:"disk"`
			Changed   string `json:"changed"`
			Unchanged bool   `json:"unchanged,omitempty"`
			*slot.Status
		}{disk, e.Label, !changed, s})
	}
	if changed {
		fmt.Fprintf(g.env.Stdout, "%s: %s %s\n", disk, e.Label, verb)
	} else {
		fmt.Fprintf(g.env.Stdout, "%s: nothing changed: %s %s already\n", disk, e.Label, verb)
	}
	printSlotStatus(g, s)
	return nil
}

func newSlotMarkGoodCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "mark-good [DISK [SLOT]]",
		Short: "Mark the booted slot (or SLOT) as successfully booted",
		Long: "Without DISK, the disk the running system booted from (the disk under /usr).\n" +
			"Marks the slot that is booted: on the running system, the partition under /usr (through dm-verity),\n" +
			"or the SLOT named. It never guesses: on a disk image, or when /usr is not on a partition of DISK,\n" +
			"name the slot. It gets successful=1 and tries=0 (for a good slot the boot\n" +
			"path counts unconfirmed boots in the tries bits: run mark-good on every boot once the system is up).\n" +
			"When it has the highest priority it gets priority 2 and every other slot in the boot order priority 1,\n" +
			"so priorities never climb to the ceiling of 15; a slot that outranks it (an update waiting for its\n" +
			"trial) keeps its priority, and so does the slot marked.",
		Args: cobra.RangeArgs(0, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			disk, err := bootedDisk(args)
			if err != nil {
				return err
			}
			return changeSlots(g, disk, func(t *layout.Table, b slot.Booted) (*layout.Entry, error) {
				e := b.Entry
				if len(args) == 2 {
					var err error
					if e, err = t.Lookup(args[1]); err != nil {
						return nil, err
					}
				} else if !b.Running {
					return nil, fmt.Errorf("%w: %s is not the disk under this system's /usr (an image, another disk, or /usr not on a partition of it: an overlay, a tmpfs), so which slot booted cannot be proven; name the slot: kiln slot mark-good %s SLOT",
						slot.ErrUnproven, disk, disk)
				}
				if e == nil {
					return nil, fmt.Errorf("no slot is booted (%s); name the slot to mark", b.How)
				}
				return e, slot.MarkGood(t, e)
			}, "marked good")
		},
	}
}

func newSlotRollbackCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rollback [DISK [SLOT]]",
		Short: "Abandon the booted slot (or SLOT): a slot on trial leaves the boot order; a good one yields to the other good slot",
		Long: "Without DISK, the disk the running system booted from. The slot abandoned is the booted one: on the\n" +
			"running system the partition under /usr; on a disk image the slot the bits show booted last, and when\n" +
			"both slots booted successfully it refuses rather than guess: name SLOT. Running it again changes nothing.",
		Args: cobra.RangeArgs(0, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			disk, err := bootedDisk(args)
			if err != nil {
				return err
			}
			return changeSlots(g, disk, func(t *layout.Table, b slot.Booted) (*layout.Entry, error) {
				if len(args) == 2 {
					e, err := t.Lookup(args[1])
					if err != nil {
						return nil, err
					}
					if e.Type != layout.TypeCoreOSUsr {
						return nil, fmt.Errorf("partition %s is not a USR slot", e.Name())
					}
					if b.Running && b.Entry != e {
						return nil, fmt.Errorf("%s is not the booted slot (%s booted: %s); a rollback abandons the booted slot", e.Label, b.Entry.Label, b.How)
					}
					b = slot.Booted{Entry: e, How: "named", Running: b.Running}
				}
				next, _, err := slot.Rollback(t, b)
				return next, err
			}, "boots next")
		},
	}
}

// slotVerifyFlags are the flags slot verify and slot mark-bootable share.
type slotVerifyFlags struct {
	manifest, key string
}

func (f *slotVerifyFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&f.manifest, "manifest", "", "the signed manifest of the release the slot should hold (required)")
	c.Flags().StringVar(&f.key, "key", "", "public key of the manifest's signature (required)")
}

// verifySlot runs the slot verification and prints its report.
func verifySlot(cmd *cobra.Command, g *globals, disk, label string, f *slotVerifyFlags) (*verify.Report, error) {
	if f.manifest == "" || f.key == "" {
		return nil, usageError(fmt.Errorf("--manifest and --key are required"))
	}
	v, err := sign.LoadVerifier(cmd.Context(), f.key)
	if err != nil {
		return nil, keyError(fmt.Errorf("--key %s: %w", f.key, err))
	}
	rep, err := verify.Slot(cmd.Context(), disk, label, verify.Options{Manifest: f.manifest, Verifier: v, KeyName: f.key})
	if err != nil {
		return nil, usageError(err)
	}
	if !g.json {
		printReport(g, rep)
	}
	return rep, nil
}

func newSlotVerifyCommand(g *globals) *cobra.Command {
	var f slotVerifyFlags
	c := &cobra.Command{
		Use:   "verify DISK SLOT --manifest MANIFEST --key PUBKEY",
		Short: "Verify that a USR slot holds the release a signed manifest describes",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			rep, err := verifySlot(cmd, g, args[0], args[1], &f)
			if err != nil {
				return err
			}
			if g.json {
				if err := g.printJSON(rep); err != nil {
					return err
				}
			}
			if !rep.OK {
				return failed(fmt.Errorf("%s: slot %s does not verify", args[0], args[1]))
			}
			return nil
		},
	}
	f.add(c)
	return c
}

func newSlotMarkBootableCommand(g *globals) *cobra.Command {
	var f slotVerifyFlags
	c := &cobra.Command{
		Use:   "mark-bootable DISK SLOT --manifest MANIFEST --key PUBKEY",
		Short: "Verify a USR slot, then make it boot next on trial (priority above the other slot, tries 1)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			// The lock first: the slot cannot change between its check and
			// its marking.
			d, err := openDisk(args[0], true)
			if err != nil {
				return err
			}
			defer d.Close()
			rep, err := verifySlot(cmd, g, args[0], args[1], &f)
			if err != nil {
				return err
			}
			if !rep.OK {
				if g.json {
					g.printJSON(rep)
				}
				return failed(fmt.Errorf("%s: slot %s does not verify; not marked bootable", args[0], args[1]))
			}
			return changeSlotsOn(g, d, func(t *layout.Table, b slot.Booted) (*layout.Entry, error) {
				e, err := t.Lookup(args[1])
				if err != nil {
					return nil, err
				}
				if b.Entry == e {
					return nil, fmt.Errorf("%s is the booted slot (%s); mark-bootable is for the other slot", e.Label, b.How)
				}
				if b.Entry != nil && slot.OnTrial(b.Entry.Slot()) {
					return nil, fmt.Errorf("%s booted on trial and is not marked good; a second slot on trial would leave no fallback", b.Entry.Label)
				}
				if err := slot.CheckSpare(t, e, "putting it on trial (its successful bit cleared)"); err != nil {
					return nil, err
				}
				return e, slot.MarkTrial(t, e)
			}, "marked bootable (on trial)")
		},
	}
	f.add(c)
	return c
}

// printReport prints a verification report, a line a check.
func printReport(g *globals, rep *verify.Report) {
	for _, c := range rep.Checks {
		mark := "ok  "
		switch {
		case !c.OK:
			mark = "FAIL"
		case c.Warn:
			mark = "warn"
		}
		fmt.Fprintf(g.env.Stdout, "%s %-16s %s\n", mark, c.Name, c.Detail)
	}
}
