package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/kiln-os/kiln/build"
	"github.com/kiln-os/kiln/build/verify"
	"github.com/kiln-os/kiln/sign"
)

func newVerifyCommand(g *globals) *cobra.Command {
	var key, manifestPath, partition string
	var deployed bool
	c := &cobra.Command{
		Use:   "verify IMAGE --key PUBKEY [--manifest FILE] [--partition LABEL | --deployed]",
		Short: "Verify a built disk image byte for byte, or a deployed disk's read-only parts, offline",
		Long: "Two checks (see docs/verify.md). By default IMAGE is a built image, checked byte for byte against\n" +
			"its signed manifest: the signature; the MBR; both GPT copies with the initial slot attributes; the\n" +
			"gaps outside the partitions; every partition's SHA-256; every verity partition's whole hash tree.\n" +
			"With --deployed, IMAGE is a disk in use: both GPT copies valid and alike (and laid out as --manifest,\n" +
			"if given), and every USR slot's signed release record and whole dm-verity tree; nothing writable\n" +
			"(ESP, OEM, ROOT, slot attributes) is checked. With --partition, IMAGE is that partition alone\n" +
			"(usr.img). The manifest defaults to manifest.json beside IMAGE.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if key == "" {
				return usageError(fmt.Errorf("verify: --key is required"))
			}
			if deployed && partition != "" {
				return usageError(fmt.Errorf("verify: --deployed and --partition exclude each other"))
			}
			if manifestPath != "" {
				// A manifest named on the command line must be there: its
				// absence is bad input, not a failed check.
				if _, err := os.Stat(manifestPath); err != nil {
					return usageError(fmt.Errorf("verify: --manifest: %w", err))
				}
			} else if !deployed {
				manifestPath = filepath.Join(filepath.Dir(args[0]), build.ManifestFile)
			}
			v, err := sign.LoadVerifier(cmd.Context(), key)
			if err != nil {
				return keyError(fmt.Errorf("--key %s: %w", key, err))
			}
			o := verify.Options{Manifest: manifestPath, Verifier: v, KeyName: key}
			var rep *verify.Report
			switch {
			case partition != "":
				rep, err = verify.Partition(cmd.Context(), args[0], partition, o)
			case deployed:
				rep, err = verify.Deployed(cmd.Context(), args[0], verify.DeployedOptions{Verifier: v, KeyName: key, Manifest: manifestPath})
			default:
				rep, err = verify.Image(cmd.Context(), args[0], o)
			}
			if err != nil {
				return usageError(err)
			}
			if g.json {
				if err := g.printJSON(rep); err != nil {
					return err
				}
			} else {
				printReport(g, rep)
			}
			if !rep.OK {
				return failed(fmt.Errorf("%s does not verify", args[0]))
			}
			if !g.json {
				fmt.Fprintf(g.env.Stdout, "%s verifies\n", args[0])
			}
			return nil
		},
	}
	c.Flags().StringVar(&key, "key", "", "public key: PEM file, env://VAR or KMS URI")
	c.Flags().StringVar(&manifestPath, "manifest", "", "manifest (default: manifest.json beside IMAGE; with --deployed, none); its signature is MANIFEST.sig")
	c.Flags().StringVar(&partition, "partition", "", "IMAGE is this partition alone (e.g. USR-A for usr.img)")
	c.Flags().BoolVar(&deployed, "deployed", false, "IMAGE is a disk in use: check only what must not change (GPT, USR slots' signed records and verity trees)")
	return c
}
