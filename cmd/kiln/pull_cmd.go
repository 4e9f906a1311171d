package main

import (
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kiln-os/kiln/build/registry"
	"github.com/kiln-os/kiln/sign"
)

func newPullCommand(g *globals) *cobra.Command {
	var rf remoteFlags
	var out, key string
	var quiet bool
	c := &cobra.Command{
		Use:   "pull REF -o DIR [--key PUBKEY] [-q]",
		Short: "Fetch a build or an update payload from an OCI registry, verified",
		Long: "Fetch a build (with its signature, a referrer) or an update payload that kiln push\n" +
			"published into DIR, which must be new or empty. Every blob's digest is checked, and\n" +
			"with --key the signature, and a build's disk.img and usr.img against the signed\n" +
			"manifest, byte for byte (a payload's own signatures and hashes), before any file\n" +
			"appears in DIR; on failure DIR is left as it was. A dropped connection is resumed.\n" +
			"Progress (per blob: downloading, decompressing, verifying) goes to stderr unless -q or --json.\n\n" + registryHelp,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return usageError(errors.New("pull: -o DIR is required"))
			}
			o := registry.PullOptions{Remote: rf.remote(g)}
			o.Progress = newProgress(g.env.Stderr, quiet || g.json)
			if key != "" {
				v, err := sign.LoadVerifier(cmd.Context(), key)
				if err != nil {
					return keyError(fmt.Errorf("--key %s: %w", key, err))
				}
				o.Verifier, o.KeyName = v, key
			}
			res, err := registry.Pull(cmd.Context(), args[0], out, o)
			if err != nil {
				return registryError(err)
			}
			if g.json {
				return g.printJSON(res)
			}
			w := g.env.Stdout
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			for _, f := range res.Files {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", f.Name, f.Digest, sizeString(f.Size))
			}
			tw.Flush()
			how := "not verified (no --key): digests only"
			if res.Verified {
				how = "verified with " + key
			}
			fmt.Fprintf(w, "pulled %s@%s into %s, %s\n", res.Reference, res.Digest, res.Dir, how)
			return nil
		},
	}
	rf.add(c)
	c.Flags().StringVarP(&out, "output", "o", "", "write the files into this new or empty directory")
	c.Flags().StringVar(&key, "key", "", "verify with this public key (PEM file, env://VAR or KMS URI)")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress on stderr")
	return c
}
