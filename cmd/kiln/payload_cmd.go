package main

import (
	"errors"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kiln-os/kiln/build/payload"
	"github.com/kiln-os/kiln/build/update"
	"github.com/kiln-os/kiln/layout"
	"github.com/kiln-os/kiln/sign"
)

func newPayloadCommand(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "payload",
		Short: "Generate, inspect and apply update payloads (update_engine CrAU format)",
	}
	c.AddCommand(newPayloadGenerateCommand(g), newPayloadInspectCommand(g), newPayloadApplyCommand(g))
	return c
}

func newPayloadGenerateCommand(g *globals) *cobra.Command {
	var to, from, out, key, compression string
	var allowDowngrade bool
	c := &cobra.Command{
		Use:   "generate --to OUTDIR_N1 [--from OUTDIR_N] -o FILE --key KEYREF",
		Short: "Make a signed full payload, or a delta from one build output to the next",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if to == "" || out == "" || key == "" {
				return usageError(errors.New("payload generate: --to, -o and --key are required"))
			}
			comp, err := payload.ParseCompression(compression)
			if err != nil {
				return usageError(fmt.Errorf("--compression: %w", err))
			}
			signer, err := sign.LoadSigner(cmd.Context(), key, keyPassphrase)
			if err != nil {
				return keyError(fmt.Errorf("--key %s: %w", key, err))
			}
			o := update.GenerateOptions{Out: out, Signer: signer, Compression: comp, AllowDowngrade: allowDowngrade, Log: g.logger()}
			if o.To, err = update.OpenRelease(to); err != nil {
				return usageError(err)
			}
			if from != "" {
				if o.From, err = update.OpenRelease(from); err != nil {
					return usageError(err)
				}
			}
			plan, err := update.Generate(cmd.Context(), o)
			if err != nil {
				return failed(fmt.Errorf("payload generate: %w", err))
			}
			st, err := os.Stat(out)
			if err != nil {
				return err
			}
			kind := "full"
			if plan.Old != nil {
				kind = "delta"
			}
			if g.json {
				return g.printJSON(map[string]any{"payload": out, "kind": kind,
					"version": plan.Version, "old_version": plan.OldVersion, "size": st.Size(), "operations": len(plan.Ops)})
			}
			from := ""
			if plan.Old != nil {
				from = " from " + plan.OldVersion
			}
			fmt.Fprintf(g.env.Stdout, "%s: %s payload of %s%s, %d operations, %s\n", out, kind, plan.Version, from, len(plan.Ops), layout.HumanSize(st.Size()))
			return nil
		},
	}
	c.Flags().StringVar(&to, "to", "", "build output of the release to install")
	c.Flags().StringVar(&from, "from", "", "build output of the installed release (a delta); none: a full payload")
	c.Flags().StringVarP(&out, "output", "o", "", "payload file to write")
	c.Flags().StringVar(&key, "key", "", "signing key: PEM file, env://VAR or KMS URI (RSA for update_engine clients)")
	c.Flags().StringVar(&compression, "compression", "auto", "auto (smaller of xz and zstd), xz, zstd or none")
	c.Flags().BoolVar(&allowDowngrade, "allow-downgrade", false, "allow --to to be older than --from")
	return c
}

func newPayloadInspectCommand(g *globals) *cobra.Command {
	var key string
	c := &cobra.Command{
		Use:   "inspect PAYLOAD [--key PUBKEY]",
		Short: "Show a payload's version, partition, sizes, hashes, operations and signature status",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return usageError(err)
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				return err
			}
			p, err := payload.Open(f, st.Size())
			if err != nil {
				return failed(fmt.Errorf("%s: %w", args[0], err))
			}
			var v payload.Verifier
			if key != "" {
				sv, err := sign.LoadVerifier(cmd.Context(), key)
				if err != nil {
					return keyError(fmt.Errorf("--key %s: %w", key, err))
				}
				v = update.Verifier{V: sv}
			}
			s := payload.Inspect(cmd.Context(), p, v)
			if g.json {
				if err := g.printJSON(s); err != nil {
					return err
				}
			} else {
				printSummary(g, args[0], s)
			}
			if key != "" && s.SignatureStatus != "valid" {
				return failed(fmt.Errorf("%s: signatures: %s", args[0], s.SignatureStatus))
			}
			return nil
		},
	}
	c.Flags().StringVar(&key, "key", "", "check the signatures with this public key")
	return c
}

func printSummary(g *globals, name string, s payload.Summary) {
	w := g.env.Stdout
	fmt.Fprintf(w, "%s: %s payload, CrAU major %d minor %d, block size %d, %s (metadata %d bytes)\n",
		name, s.Kind, s.MajorVersion, s.MinorVersion, s.BlockSize, layout.HumanSize(s.Size), s.MetadataSize)
	fmt.Fprintf(w, "signatures: %s\n", s.SignatureStatus)
	for _, p := range s.Partitions {
		fmt.Fprintf(w, "partition %s: version %s", p.Name, p.Version)
		if p.OldVersion != "" {
			fmt.Fprintf(w, " (from %s)", p.OldVersion)
		}
		fmt.Fprintln(w)
		if p.OldHash != "" {
			fmt.Fprintf(w, "  old: %d bytes, sha256 %s\n", p.OldSize, p.OldHash)
		}
		fmt.Fprintf(w, "  new: %d bytes, sha256 %s\n", p.NewSize, p.NewHash)
		if p.VerityRoot != "" {
			fmt.Fprintf(w, "  verity root: %s\n", p.VerityRoot)
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "  OPERATION\tCOUNT\tDATA BYTES\tWRITES BYTES\t")
		for _, o := range p.OpsByType {
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t\n", o.Type, o.Count, o.DataBytes, o.DstBytes)
		}
		tw.Flush()
	}
}
