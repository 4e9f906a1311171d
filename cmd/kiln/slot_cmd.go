package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

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

type slotJSON struct {
	Label string           `json:"label"`
	Num   int              `json:"number"`
	GUID  layout.GUID      `json:"guid"`
	State layout.SlotState `json:"state"`
	Next  bool             `json:"boots_next"`
}

type slotStatusJSON struct {
	Disk   string     `json:"disk"`
	Next   string     `json:"next,omitempty"`
	Reason string     `json:"reason"`
	Slots  []slotJSON `json:"slots"`
}

func slotStatus(disk string, t *layout.Table) slotStatusJSON {
	out := slotStatusJSON{Disk: disk, Slots: []slotJSON{}}
	next, why, err := t.NextSlot()
	if err != nil {
		out.Reason = err.Error()
	} else {
		out.Next, out.Reason = next.Label, why
	}
	for _, e := range t.Slots() {
		out.Slots = append(out.Slots, slotJSON{Label: e.Label, Num: e.Number, GUID: e.GUID, State: e.Slot(), Next: e == next})
	}
	return out
}

func printSlotStatus(g *globals, s slotStatusJSON) {
	w := g.env.Stdout
	for _, sl := range s.Slots {
		mark := " "
		if sl.Next {
			mark = "*"
		}
		fmt.Fprintf(w, "%s %-6s (partition %d)  %s\n", mark, sl.Label, sl.Num, sl.State)
	}
	if s.Next != "" {
		fmt.Fprintf(w, "next boot: %s: %s\n", s.Next, s.Reason)
	} else {
		fmt.Fprintf(w, "next boot: none: %s\n", s.Reason)
	}
}

func newSlotStatusCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status DISK",
		Short: "Show which USR slot boots next and why (GRUB gptprio's rule)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := readDisk(args[0])
			if err != nil {
				return err
			}
			if len(t.Slots()) == 0 {
				return failed(fmt.Errorf("%s: no USR slots (no partition of type coreos-usr)", args[0]))
			}
			s := slotStatus(args[0], t)
			if g.json {
				if err := g.printJSON(s); err != nil {
					return err
				}
			} else {
				printSlotStatus(g, s)
			}
			if s.Next == "" {
				return failed(fmt.Errorf("%s: %s", args[0], s.Reason))
			}
			return nil
		},
	}
}

// changeSlots reads the disk's GPT read-write, applies change, and writes
// the attribute bits back to both GPT copies.
func changeSlots(g *globals, disk string, change func(*layout.Table) (*layout.Entry, error), verb string) error {
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		return usageError(err)
	}
	defer f.Close()
	t, err := layout.ReadTable(f)
	if err != nil {
		return err
	}
	if t.FromBackup {
		return failed(fmt.Errorf("%s: the primary GPT is damaged; refusing to change slot state (repair the GPT first, e.g. sgdisk -e)", disk))
	}
	e, err := change(t)
	if err != nil {
		return failed(fmt.Errorf("%s: %w", disk, err))
	}
	if err := layout.UpdateAttributes(f, t); err != nil {
		return err
	}
	s := slotStatus(disk, t)
	if g.json {
		return g.printJSON(s)
	}
	fmt.Fprintf(g.env.Stdout, "%s: %s %s\n", disk, e.Label, verb)
	printSlotStatus(g, s)
	return nil
}

func newSlotMarkGoodCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "mark-good DISK",
		Short: "Mark the slot that boots next as successfully booted (successful=1, tries=0)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return changeSlots(g, args[0], (*layout.Table).MarkGood, "marked good")
		},
	}
}

func newSlotRollbackCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rollback DISK",
		Short: "Make the other slot boot next, if it booted successfully before",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return changeSlots(g, args[0], (*layout.Table).Rollback, "boots next")
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
		Short: "Verify a USR slot, then make it boot next on trial (priority above the active slot, tries 1)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
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
			return changeSlots(g, args[0], func(t *layout.Table) (*layout.Entry, error) {
				e, err := t.Lookup(args[1])
				if err != nil {
					return nil, err
				}
				if active, err := t.ActiveSlot(); err == nil && active.Number == e.Number {
					return nil, fmt.Errorf("%s is the active slot (the one that booted successfully); mark-bootable is for the other slot", e.Label)
				}
				return e, t.MarkTrial(e)
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
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(g.env.Stdout, "%s %-16s %s\n", mark, c.Name, c.Detail)
	}
}
