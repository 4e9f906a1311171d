package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/kiln-os/kiln/build"
	"github.com/kiln-os/kiln/build/verify"
	"github.com/kiln-os/kiln/sign"
)

func newVerifyCommand(g *globals) *cobra.Command {
	var key, manifestPath, partition string
	c := &cobra.Command{
		Use:   "verify IMAGE --key PUBKEY [--manifest FILE] [--partition LABEL]",
		Short: "Verify a disk image (or one partition image) offline against its signed manifest",
		Long: "Checks, and reports each as a line: the manifest's signature; the GPT against the manifest;\n" +
			"the SHA-256 of every partition; the verity superblock and whole hash tree of every verity partition.\n" +
			"With --partition, IMAGE is that partition alone (usr.img). The manifest defaults to manifest.json beside IMAGE.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if key == "" {
				return usageError(fmt.Errorf("verify: --key is required"))
			}
			if manifestPath == "" {
				manifestPath = filepath.Join(filepath.Dir(args[0]), build.ManifestFile)
			}
			v, err := sign.LoadVerifier(cmd.Context(), key)
			if err != nil {
				return keyError(fmt.Errorf("--key %s: %w", key, err))
			}
			o := verify.Options{Manifest: manifestPath, Verifier: v, KeyName: key}
			var rep *verify.Report
			if partition != "" {
				rep, err = verify.Partition(cmd.Context(), args[0], partition, o)
			} else {
				rep, err = verify.Disk(cmd.Context(), args[0], o)
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
	c.Flags().StringVar(&manifestPath, "manifest", "", "manifest (default: manifest.json beside IMAGE); its signature is MANIFEST.sig")
	c.Flags().StringVar(&partition, "partition", "", "IMAGE is this partition alone (e.g. USR-A for usr.img)")
	return c
}
