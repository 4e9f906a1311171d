package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kiln-os/kiln/build/registry"
	"github.com/kiln-os/kiln/sign"
)

// remoteFlags are the flags that say how to reach a registry.
type remoteFlags struct {
	caFile   string
	insecure bool
}

func (f *remoteFlags) add(c *cobra.Command) {
	c.Flags().StringVar(&f.caFile, "ca-file", "", "trust the CA certificates in this PEM file besides the system's")
	c.Flags().BoolVar(&f.insecure, "insecure", false, "talk plain HTTP to the registry (no TLS: for a registry on a trusted network only)")
}

func (f *remoteFlags) remote(g *globals) registry.Remote {
	return registry.Remote{CAFile: f.caFile, PlainHTTP: f.insecure, UserAgent: "kiln/" + version, Log: g.logger()}
}

// registryError classifies a registry error: bad input or output
// directory is a usage error (2), anything else a failure (1).
func registryError(err error) error {
	if errors.Is(err, registry.ErrInput) || errors.Is(err, registry.ErrOutput) {
		return usageError(err)
	}
	// The message says it all; its chain must not make a failed download
	// or verification look like bad input.
	return failed(errors.New(err.Error()))
}

const registryHelp = `Credentials come from the files docker, podman and skopeo use, the first
that has the registry: $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
~/.config/containers/auth.json, $DOCKER_CONFIG/config.json or ~/.docker/config.json
(credential helpers included). TLS is always on unless --insecure; --ca-file
trusts a private CA. REF is HOST[:PORT]/REPOSITORY:TAG (no default registry).`

func newPushCommand(g *globals) *cobra.Command {
	var rf remoteFlags
	var formats []string
	var compression, arch, key string
	var containerDisk, quiet bool
	c := &cobra.Command{
		Use:   "push OUTDIR|PAYLOAD REF [--format raw,qcow2] [--containerdisk] [--key PUBKEY] [-q]",
		Short: "Publish a build or an update payload to an OCI registry",
		Long: "Publish a build directory (its disk images, usr.img, usr.blockmap.json, manifest.json, and\n" +
			"manifest.json.sig as a referrer) or an update payload as an OCI artifact, or with\n" +
			"--containerdisk the build's disk as a KubeVirt containerDisk image (/disk/, uid 107).\n" +
			"Every disk image but raw.zst and raw.xz, and usr.img, is stored zstd-compressed (titled\n" +
			"FILE.zst) unless --compression none. The disk images and usr.img must be what OUTDIR's\n" +
			"manifest.json (which the signature covers) vouches for, byte for byte: otherwise nothing\n" +
			"is pushed (exit 2); with --key, manifest.json.sig must verify too. Blobs the registry\n" +
			"already holds are not uploaded again. Progress (per blob: checking, hashing, uploading)\n" +
			"goes to stderr unless -q or --json.\n\n" + registryHelp,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, ref := args[0], args[1]
			comp, err := registry.ParseCompression(compression)
			if err != nil {
				return usageError(err)
			}
			st, err := os.Stat(src)
			if err != nil {
				return usageError(err)
			}
			o := registry.PushOptions{Remote: rf.remote(g), Formats: formats, Compression: comp, Arch: arch}
			o.Progress = newProgress(g.env.Stderr, quiet || g.json)
			if key != "" {
				if !st.IsDir() {
					return usageError(errors.New("--key applies to a build directory (a payload carries its own signatures)"))
				}
				v, err := sign.LoadVerifier(cmd.Context(), key)
				if err != nil {
					return keyError(fmt.Errorf("--key %s: %w", key, err))
				}
				o.Verifier, o.KeyName = v, key
			}
			var res *registry.Pushed
			switch {
			case containerDisk && !st.IsDir():
				return usageError(fmt.Errorf("--containerdisk takes a build directory; %s is a file", src))
			case containerDisk:
				res, err = registry.PushContainerDisk(cmd.Context(), src, ref, o)
			case st.IsDir():
				res, err = registry.PushBuild(cmd.Context(), src, ref, o)
			default:
				if len(formats) > 0 {
					return usageError(errors.New("--format applies to a build directory, not a payload"))
				}
				res, err = registry.PushPayload(cmd.Context(), src, ref, o)
			}
			if err != nil {
				return registryError(err)
			}
			if g.json {
				return g.printJSON(res)
			}
			w := g.env.Stdout
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			for _, b := range res.Blobs {
				what := "exists"
				if b.Uploaded {
					what = "uploaded"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", b.Name, b.Digest, sizeString(b.Size), what)
			}
			tw.Flush()
			fmt.Fprintf(w, "pushed %s@%s (%s uploaded)\n", res.Reference, res.Digest, sizeString(res.Uploaded))
			if res.Signature != "" {
				fmt.Fprintf(w, "signature %s, a referrer of %s\n", res.Signature, res.Digest)
			}
			return nil
		},
	}
	rf.add(c)
	c.Flags().StringSliceVar(&formats, "format", nil, "disk formats to publish: "+strings.Join(registry.DiskFormatNames(), ", ")+" (default: every disk image OUTDIR holds)")
	c.Flags().StringVar(&compression, "compression", "zstd", "how the images (all but raw.zst, raw.xz, gce and ova, compressed already) are stored: zstd or none")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress on stderr")
	c.Flags().StringVar(&key, "key", "", "refuse a build whose manifest.json.sig does not verify with this public key (PEM file, env://VAR or KMS URI)")
	c.Flags().BoolVar(&containerDisk, "containerdisk", false, "push the disk as a KubeVirt containerDisk image (qcow2 when OUTDIR has it, else --format's)")
	c.Flags().StringVar(&arch, "arch", "amd64", "the containerDisk image's architecture")
	return c
}

// sizeString is a byte count for people.
func sizeString(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
