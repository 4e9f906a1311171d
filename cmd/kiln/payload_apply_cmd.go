package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/kiln-os/kiln/build/update"
	"github.com/kiln-os/kiln/layout"
	"github.com/kiln-os/kiln/sign"
)

func newPayloadApplyCommand(g *globals) *cobra.Command {
	var disk, key string
	var allowDowngrade, quiet bool
	c := &cobra.Command{
		Use:   "apply PAYLOAD [--disk DISK] --key PUBKEY [--allow-downgrade] [-q]",
		Short: "Install a payload into the passive USR slot, verify it on the device, then make it boot next on trial",
		Long: "Before changing anything: checks the payload's signatures and data hashes; finds the booted slot (on the\n" +
			"running system the partition under /usr, else from the slot bits) and refuses while it is on trial;\n" +
			"refuses a release older than the booted slot's signed release record; checks sizes and, for a delta,\n" +
			"the booted slot's hash. Then writes only the other slot (out of the boot order while it is written),\n" +
			"flushes it, reads it back past the page cache (SHA-256, the signed release record, the whole dm-verity\n" +
			"tree) and only then gives it a priority above the booted slot, tries 1, successful 0. No other slot\n" +
			"changes. Interrupted, the slot stays out of the boot order; run apply again.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if key == "" {
				return usageError(errors.New("payload apply: --key is required"))
			}
			if disk == "" {
				var err error
				if disk, err = bootedDisk(nil); err != nil {
					return err
				}
			}
			v, err := sign.LoadVerifier(cmd.Context(), key)
			if err != nil {
				return keyError(fmt.Errorf("--key %s: %w", key, err))
			}
			d, err := openDisk(disk, false) // bad input is exit 2; Install opens it for writing
			if err != nil {
				return err
			}
			d.Close()
			res, err := update.Install(cmd.Context(), update.InstallOptions{
				Payload: args[0], Disk: disk, Verifier: v, AllowDowngrade: allowDowngrade, Log: g.logger(),
				Progress: newProgress(g.env.Stderr, quiet || g.json),
			})
			if err != nil {
				return failed(fmt.Errorf("payload apply: %w", err))
			}
			if g.json {
				return g.printJSON(res)
			}
			installed := res.Installed
			if installed == "" {
				installed = "an unknown release"
			}
			fmt.Fprintf(g.env.Stdout, "%s: installed %s (%s payload, %d operations, %s written) into %s; %s (%s) untouched\n",
				disk, res.Version, res.Kind, res.Operations, layout.HumanSize(res.Written), res.Slot, res.Booted, installed)
			fmt.Fprintf(g.env.Stdout, "read back from the device: sha256 %s, signed release record, verity root %s\n", res.SHA256, res.VerityRoot)
			d, err = openDisk(disk, false)
			if err != nil {
				return err
			}
			defer d.Close()
			t, err := d.ReadTable()
			if err != nil {
				return failed(err)
			}
			s, err := statusOf(d, t, v)
			if err != nil {
				return failed(err)
			}
			printSlotStatus(g, s)
			return nil
		},
	}
	c.Flags().StringVar(&disk, "disk", "", "disk image or block device holding the A/B USR slots (default: the disk the running system booted from)")
	c.Flags().StringVar(&key, "key", "", "public key the payload and the release records must be signed with")
	c.Flags().BoolVar(&allowDowngrade, "allow-downgrade", false, "install a release older than the booted slot's")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress output")
	return c
}
