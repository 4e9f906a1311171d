package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kiln-os/kiln/layout"
)

func newLayoutCommand(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "layout",
		Short: "Create, show and check partition layouts",
	}
	c.AddCommand(newLayoutInitCommand(g), newLayoutShowCommand(g), newLayoutCheckCommand(g))
	return c
}

func newLayoutInitCommand(g *globals) *cobra.Command {
	var name, size, seed string
	var force bool
	c := &cobra.Command{
		Use:   "init [--layout NAME|FILE] [--size SIZE] [--seed SEED] [--force] DISK",
		Short: "Create an empty sparse disk image with a layout's partition table",
		Long: "Creates DISK, a new sparse image holding only the layout's partition table. An existing file or\n" +
			"block device is refused unless --force: a file is then replaced whole, a block device gets the new\n" +
			"partition table (its size is the disk size) and keeps its other bytes.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := layout.Load(name)
			if err != nil {
				return err
			}
			var bytes int64
			if cmd.Flags().Changed("size") {
				if bytes, err = layout.ParseSize(size); err != nil {
					return usageError(fmt.Errorf("--size: %w", err))
				}
				if bytes <= 0 {
					return usageError(fmt.Errorf("--size %q: a disk needs a size above 0", size))
				}
			}
			path := args[0]
			st, statErr := os.Stat(path)
			exists := statErr == nil
			if exists && !force {
				return usageError(fmt.Errorf("%s exists; pass --force to replace it", path))
			}
			if exists && st.IsDir() {
				return usageError(fmt.Errorf("%s is a directory", path))
			}
			if seed == "" {
				// Fresh GUIDs: two disks never share them by accident.
				var b [16]byte
				if _, err := rand.Read(b[:]); err != nil {
					return err
				}
				seed = hex.EncodeToString(b[:])
			}
			var t *layout.Table
			if exists && st.Mode()&os.ModeDevice != 0 {
				// A block device: its own size, the table written in place,
				// under the device's lock.
				d, err := openDisk(path, true)
				if err != nil {
					return err
				}
				defer d.Close()
				if bytes != 0 && bytes != d.Size {
					return usageError(fmt.Errorf("--size %s: %s is %d bytes", size, path, d.Size))
				}
				if t, err = l.Plan(d.Size, seed); err != nil {
					return err
				}
				if err := layout.WriteTable(d, t); err != nil {
					return failed(fmt.Errorf("%s: %w", path, err))
				}
			} else {
				if t, err = l.Plan(bytes, seed); err != nil {
					return err
				}
				if err := layout.CreateDisk(path, t); err != nil {
					return err
				}
			}
			if g.json {
				return g.printJSON(tableJSON(path, t))
			}
			fmt.Fprintf(g.env.Stdout, "%s: created with layout %s\n", path, l.Name)
			return printTable(g, path, t)
		},
	}
	c.Flags().StringVar(&name, "layout", "coreos", "built-in layout name or layout file")
	c.Flags().StringVar(&size, "size", "", "disk size (e.g. 6GiB); default: the layout's own size")
	c.Flags().StringVar(&seed, "seed", "", "seed for the disk and partition GUIDs (same seed, same bytes); default: fresh random GUIDs")
	c.Flags().BoolVar(&force, "force", false, "replace an existing file, or write a new table onto an existing block device")
	return c
}

func newLayoutShowCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show DISK",
		Short: "Show a disk's partition table and slot state",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := readDisk(args[0])
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(tableJSON(args[0], t))
			}
			return printTable(g, args[0], t)
		},
	}
}

func newLayoutCheckCommand(g *globals) *cobra.Command {
	var name string
	c := &cobra.Command{
		Use:   "check [--layout NAME|FILE] DISK",
		Short: "Check that a disk's partition table matches a layout",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := layout.Load(name)
			if err != nil {
				return err
			}
			t, err := readDisk(args[0])
			if err != nil {
				return err
			}
			diffs, err := l.Check(t)
			if err != nil {
				return err
			}
			damage := t.Copies.Err()
			if g.json {
				out := map[string]any{"disk": args[0], "layout": l.Name, "match": len(diffs) == 0 && damage == nil, "differences": nonNil(diffs)}
				if damage != nil {
					out["gpt_damage"] = damage.Error()
				}
				if err := g.printJSON(out); err != nil {
					return err
				}
			} else {
				if damage != nil {
					fmt.Fprintf(g.env.Stdout, "GPT: %v\n", damage)
				}
				for _, d := range diffs {
					fmt.Fprintln(g.env.Stdout, d)
				}
			}
			if damage != nil {
				return failed(fmt.Errorf("%s: %w (the next kiln command that writes the disk repairs it; so do sgdisk -e and cgpt repair)", args[0], damage))
			}
			if len(diffs) > 0 {
				return failed(fmt.Errorf("%s does not match layout %s: %d difference(s)", args[0], l.Name, len(diffs)))
			}
			if !g.json {
				fmt.Fprintf(g.env.Stdout, "%s matches layout %s\n", args[0], l.Name)
			}
			return nil
		},
	}
	c.Flags().StringVar(&name, "layout", "coreos", "built-in layout name or layout file")
	return c
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// readDisk opens a disk image or device read-only and reads its GPT.
func readDisk(path string) (*layout.Table, error) {
	d, err := openDisk(path, false)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.ReadTable()
}

// openDisk opens a disk image or device, for writing under its lock when
// write is set. A path that is not a disk is bad input (exit 2); a disk
// another command holds is a failure (exit 1).
func openDisk(path string, write bool) (*layout.Disk, error) {
	open := layout.OpenDisk
	if write {
		open = layout.OpenDiskForWriting
	}
	d, err := open(path)
	switch {
	case errors.Is(err, layout.ErrLocked):
		return nil, failed(err)
	case err != nil:
		return nil, usageError(err)
	}
	return d, nil
}

type entryJSON struct {
	Number     int               `json:"number"`
	Label      string            `json:"label"`
	Type       layout.GUID       `json:"type"`
	TypeName   string            `json:"type_name"`
	GUID       layout.GUID       `json:"guid"`
	Start      uint64            `json:"start_sector"`
	Sectors    uint64            `json:"sectors"`
	Offset     int64             `json:"offset"`
	Size       int64             `json:"size"`
	Attributes string            `json:"attributes"`
	Slot       *layout.SlotState `json:"slot,omitempty"`
}

type tableJSONOut struct {
	Disk       string      `json:"disk"`
	DiskGUID   layout.GUID `json:"disk_guid"`
	Size       int64       `json:"size"`
	Sectors    uint64      `json:"sectors"`
	FromBackup bool        `json:"from_backup"`
	GPTDamage  string      `json:"gpt_damage,omitempty"`
	Partitions []entryJSON `json:"partitions"`
}

func tableJSON(disk string, t *layout.Table) tableJSONOut {
	out := tableJSONOut{Disk: disk, DiskGUID: t.DiskGUID, Size: t.Size(), Sectors: t.Sectors, FromBackup: t.FromBackup(), Partitions: []entryJSON{}}
	if err := t.Copies.Err(); err != nil {
		out.GPTDamage = err.Error()
	}
	for _, e := range t.Partitions {
		j := entryJSON{
			Number: e.Number, Label: e.Label, Type: e.Type, TypeName: layout.TypeName(e.Type), GUID: e.GUID,
			Start: e.Start, Sectors: e.Sectors, Offset: e.Offset(), Size: e.Size(),
			Attributes: fmt.Sprintf("0x%016x", e.Attributes),
		}
		if e.Type == layout.TypeCoreOSUsr {
			s := e.Slot()
			j.Slot = &s
		}
		out.Partitions = append(out.Partitions, j)
	}
	return out
}

func printTable(g *globals, disk string, t *layout.Table) error {
	w := g.env.Stdout
	fmt.Fprintf(w, "%s: %s (%d sectors), disk GUID %s\n", disk, layout.HumanSize(t.Size()), t.Sectors, t.DiskGUID)
	if err := t.Copies.Err(); err != nil {
		fmt.Fprintf(w, "warning: %v; the table shown is the %s copy\n", err, map[bool]string{true: "backup", false: "primary"}[t.FromBackup()])
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tLABEL\tTYPE\tSTART\tSIZE\tGUID\tSLOT")
	for _, e := range t.Partitions {
		slot := ""
		if e.Type == layout.TypeCoreOSUsr {
			slot = e.Slot().String()
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%s\t%s\n", e.Number, e.Label, layout.TypeName(e.Type), e.Start, layout.HumanSize(e.Size()), e.GUID, slot)
	}
	return tw.Flush()
}
