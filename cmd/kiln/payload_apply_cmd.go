package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/kiln-os/kiln/build"
	"github.com/kiln-os/kiln/build/manifest"
	"github.com/kiln-os/kiln/build/update"
	"github.com/kiln-os/kiln/layout"
	"github.com/kiln-os/kiln/sign"
)

func newPayloadApplyCommand(g *globals) *cobra.Command {
	var disk, key, manifestPath string
	var allowDowngrade bool
	c := &cobra.Command{
		Use:   "apply PAYLOAD --disk DISK --key PUBKEY [--manifest INSTALLED] [--allow-downgrade]",
		Short: "Install a payload into the passive USR slot, verify it, then make it boot next on trial",
		Long: "Checks the payload's signatures and data hashes, refuses an older release (a delta records its\n" +
			"source version; for a full payload the installed release's manifest tells, by default manifest.json\n" +
			"beside DISK when it describes that disk), writes only the passive slot, verifies every operation,\n" +
			"the slot's SHA-256 and its whole dm-verity tree, and only then sets priority above the active slot,\n" +
			"tries 1, successful 0. Interrupted, the slot stays out of the boot order; run apply again.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if disk == "" || key == "" {
				return usageError(errors.New("payload apply: --disk and --key are required"))
			}
			v, err := sign.LoadVerifier(cmd.Context(), key)
			if err != nil {
				return keyError(fmt.Errorf("--key %s: %w", key, err))
			}
			installed, err := installedManifest(disk, manifestPath)
			if err != nil {
				return usageError(err)
			}
			res, err := update.Install(cmd.Context(), update.InstallOptions{
				Payload: args[0], Disk: disk, Verifier: v, Installed: installed,
				AllowDowngrade: allowDowngrade, Log: g.logger(),
			})
			if err != nil {
				return failed(fmt.Errorf("payload apply: %w", err))
			}
			if g.json {
				return g.printJSON(res)
			}
			fmt.Fprintf(g.env.Stdout, "%s: installed %s (%s payload, %d operations, %s written) into %s; %s untouched\n",
				disk, res.Version, res.Kind, res.Operations, layout.HumanSize(res.Written), res.Slot, res.Active)
			fmt.Fprintf(g.env.Stdout, "verified: sha256 %s, verity root %s\n", res.SHA256, res.VerityRoot)
			t, err := readDisk(disk)
			if err != nil {
				return err
			}
			printSlotStatus(g, slotStatus(disk, t))
			return nil
		},
	}
	c.Flags().StringVar(&disk, "disk", "", "disk image or block device holding the A/B USR slots")
	c.Flags().StringVar(&key, "key", "", "public key the payload must be signed with")
	c.Flags().StringVar(&manifestPath, "manifest", "", "manifest of the installed release (default: manifest.json beside DISK, if it describes DISK)")
	c.Flags().BoolVar(&allowDowngrade, "allow-downgrade", false, "install an older release")
	return c
}

// installedManifest reads the installed release's manifest: the one named,
// or manifest.json beside the disk when its disk GUID is the disk's.
func installedManifest(disk, path string) (*manifest.Manifest, error) {
	explicit := path != ""
	if !explicit {
		path = filepath.Join(filepath.Dir(disk), build.ManifestFile)
	}
	f, err := os.Open(path)
	if err != nil {
		if !explicit && errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	defer f.Close()
	m, err := manifest.Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if !explicit {
		t, err := readDisk(disk)
		if err != nil || t.DiskGUID != m.DiskGUID {
			return nil, nil
		}
	}
	return m, nil
}
