package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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
	var to, from, out, key, compression, clientName, tree string
	var allowDowngrade, quiet bool
	clientNames := make([]string, len(payload.Clients))
	for i, c := range payload.Clients {
		clientNames[i] = c.String()
	}
	c := &cobra.Command{
		Use:   "generate --to OUTDIR_N1 [--from OUTDIR_N] -o FILE --key KEYREF [--client " + strings.Join(clientNames, "|") + "]",
		Short: "Make a signed full payload, or a delta from one build output to the next",
		Long: "Make a signed full payload, or a delta from one build output to the next, that the chosen\n" +
			"client family applies (see kiln payload inspect for which families apply a payload):\n" +
			clientHelp() +
			"The default, android-12, is what update_engine's reference checker (paycheck.py, android-12.1)\n" +
			"accepts: REPLACE_XZ, SOURCE_COPY, SOURCE_BSDIFF and ZERO operations, the verity tree in the\n" +
			"payload, minor version 0 (full) or 4 (delta), and a 256-byte RSA-2048 signature (kiln keygen\n" +
			"--type rsa-2048). ZSTD operations (--compression zstd or auto) need android-zstd or kiln.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if to == "" || out == "" || key == "" {
				return usageError(errors.New("payload generate: --to, -o and --key are required"))
			}
			// Before minutes of hashing: the payload's directory must be
			// there and writable.
			if st, err := os.Stat(out); err == nil && st.IsDir() {
				return usageError(fmt.Errorf("payload generate: -o %s is a directory; name the payload file", out))
			}
			dir := filepath.Dir(out)
			if st, err := os.Stat(dir); err != nil || !st.IsDir() {
				if err == nil {
					err = errors.New("not a directory")
				}
				return usageError(fmt.Errorf("payload generate: -o %s: %s: %w", out, dir, err))
			}
			if f, err := os.CreateTemp(dir, ".kiln-write-check-*"); err != nil {
				return usageError(fmt.Errorf("payload generate: -o %s: cannot write in %s: %w", out, dir, err))
			} else {
				f.Close()
				os.Remove(f.Name())
			}
			client, err := payload.ParseClient(clientName)
			if err != nil {
				return usageError(fmt.Errorf("--client: %w", err))
			}
			if compression == "" {
				compression = payload.CompressionXZ.String()
				if client.CheckConfig(&payload.Config{Compression: payload.CompressionZstd}) == nil {
					compression = payload.CompressionZstd.String() // as small, several times faster
				}
			}
			comp, err := payload.ParseCompression(compression)
			if err != nil {
				return usageError(fmt.Errorf("--compression: %w", err))
			}
			if err := client.CheckConfig(&payload.Config{Compression: comp}); err != nil {
				return usageError(fmt.Errorf("--compression %s for --client %s: %w", comp, client, err))
			}
			signer, err := sign.LoadSigner(cmd.Context(), key, keyPassphrase)
			if err != nil {
				return keyError(fmt.Errorf("--key %s: %w", key, err))
			}
			pub, err := signer.PublicKey()
			if err != nil {
				return keyError(fmt.Errorf("--key %s: %w", key, err))
			}
			if err := client.CheckKey(pub); err != nil {
				return usageError(fmt.Errorf("--key %s for --client %s: %w: make one with `kiln keygen --type rsa-2048`, or choose --client kiln", key, client, err))
			}
			vt, err := payload.ParseVerityTree(tree)
			if err != nil {
				return usageError(fmt.Errorf("--verity-tree: %w", err))
			}
			if err := client.CheckConfig(&payload.Config{Compression: comp, VerityTree: vt}); err != nil {
				return usageError(fmt.Errorf("--verity-tree %s for --client %s: %w", vt, client, err))
			}
			o := update.GenerateOptions{Out: out, Signer: signer, Compression: comp, VerityTree: vt, Client: client, AllowDowngrade: allowDowngrade, Log: g.logger(),
				Progress: newProgress(g.env.Stderr, quiet || g.json)}
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
			// What was written is checked as a client would see it.
			sum, err := checkWritten(cmd.Context(), out, client)
			if err != nil {
				os.Remove(out)
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
			var clients []string
			for _, c := range sum.Clients {
				if c.Applies {
					clients = append(clients, c.Client)
				}
			}
			if g.json {
				return g.printJSON(map[string]any{"payload": out, "kind": kind, "minor_version": plan.MinorVersion,
					"version": plan.Version, "old_version": plan.OldVersion, "size": st.Size(), "operations": len(plan.Ops),
					"compression": comp.String(), "clients": clients})
			}
			from := ""
			if plan.Old != nil {
				from = " from " + plan.OldVersion
			}
			fmt.Fprintf(g.env.Stdout, "%s: %s payload of %s%s, minor version %d, %d operations (%s), %s; applies with %s\n",
				out, kind, plan.Version, from, plan.MinorVersion, len(plan.Ops), comp, layout.HumanSize(st.Size()), strings.Join(clients, ", "))
			return nil
		},
	}
	c.Flags().StringVar(&to, "to", "", "build output of the release to install")
	c.Flags().StringVar(&from, "from", "", "build output of the installed release (a delta); none: a full payload")
	c.Flags().StringVarP(&out, "output", "o", "", "payload file to write")
	c.Flags().StringVar(&key, "key", "", "signing key: PEM file, env://VAR or KMS URI (RSA-2048 for update_engine clients)")
	c.Flags().StringVar(&clientName, "client", payload.ClientAndroid12.String(), "client family that must apply the payload: "+strings.Join(clientNames, ", "))
	c.Flags().StringVar(&compression, "compression", "", "xz, xz-max (about 13 % smaller, 5× the time, up to 450 MiB), bz2, zstd, auto (smaller of xz and zstd) or none (default: zstd when the client reads it, else xz)")
	c.Flags().StringVar(&tree, "verity-tree", payload.VerityTreeInPayload.String(), "payload: the dm-verity tree travels as data; client: the client computes it (hash_tree_* fields, minor version 6, deltas)")
	c.Flags().BoolVar(&allowDowngrade, "allow-downgrade", false, "allow --to to be older than --from")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress output")
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

// clientHelp lists the client families, one a line.
func clientHelp() string {
	var b strings.Builder
	for _, c := range payload.Clients {
		fmt.Fprintf(&b, "  %-13s %s\n", c, c.Description())
	}
	return b.String()
}

// checkWritten opens a payload just written and makes sure the chosen
// client family applies it.
func checkWritten(ctx context.Context, path string, client payload.Client) (payload.Summary, error) {
	f, err := os.Open(path)
	if err != nil {
		return payload.Summary{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return payload.Summary{}, err
	}
	p, err := payload.Open(f, st.Size())
	if err != nil {
		return payload.Summary{}, fmt.Errorf("%s: %w", path, err)
	}
	if err := client.Check(payload.FeaturesOf(p)); err != nil {
		return payload.Summary{}, fmt.Errorf("%s: %s clients cannot apply it: %w", path, client, err)
	}
	return payload.Inspect(ctx, p, nil), nil
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
			how := "written by the payload"
			if p.VerityTree == payload.VerityTreeByClient.String() {
				how = "computed by the client (hash_tree_* fields)"
			}
			fmt.Fprintf(w, "  verity root: %s, tree %s\n", p.VerityRoot, how)
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "  OPERATION\tCOUNT\tDATA BYTES\tWRITES BYTES\t")
		for _, o := range p.OpsByType {
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t\n", o.Type, o.Count, o.DataBytes, o.DstBytes)
		}
		tw.Flush()
	}
	fmt.Fprintln(w, "clients:")
	for _, c := range s.Clients {
		if c.Applies {
			fmt.Fprintf(w, "  %-13s applies it  (%s)\n", c.Client, c.Description)
		} else {
			fmt.Fprintf(w, "  %-13s cannot: %s  (%s)\n", c.Client, c.Why, c.Description)
		}
	}
}
