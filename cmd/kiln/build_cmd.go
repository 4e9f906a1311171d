package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kiln-os/kiln/build"
	"github.com/kiln-os/kiln/build/diskimage"
	"github.com/kiln-os/kiln/layout"
	"github.com/kiln-os/kiln/sign"
	"github.com/kiln-os/kiln/sign/secureboot"
)

// sourceDateEpoch reads SOURCE_DATE_EPOCH; unset means 0, so that builds
// are reproducible by default.
func sourceDateEpoch() (time.Time, error) {
	v := os.Getenv("SOURCE_DATE_EPOCH")
	if v == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, usageError(fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970", v))
	}
	return time.Unix(n, 0).UTC(), nil
}

func newBuildCommand(g *globals) *cobra.Command {
	var out string
	var sets []string
	var quiet bool
	var key, sbKey, sbCert string
	var formats []string
	c := &cobra.Command{
		Use:   "build RECIPE -o OUTDIR [--set key=value]... [--format F,...]",
		Short: "Build a disk image, the USR image and the manifest from a recipe",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return usageError(fmt.Errorf("build: -o OUTDIR is required"))
			}
			if err := checkOutDir(out); err != nil {
				return usageError(fmt.Errorf("build: -o %s: %w", out, err))
			}
			epoch, err := sourceDateEpoch()
			if err != nil {
				return err
			}
			var fmts []diskimage.Format
			if len(formats) > 0 {
				if fmts, err = diskimage.ParseFormats(strings.Join(formats, ",")); err != nil {
					return usageError(fmt.Errorf("build: --format: %w", err))
				}
			}
			r, err := build.LoadRecipe(args[0], sets)
			if err != nil {
				return usageError(err)
			}
			opts := build.Options{
				OutDir: out, SourceDateEpoch: epoch, KilnVersion: version,
				Progress: newProgress(g.env.Stderr, quiet || g.json), Log: g.logger(), Formats: fmts,
			}
			if key != "" {
				// Load the key first: a build that cannot be signed fails
				// before it starts.
				signer, err := sign.LoadSigner(cmd.Context(), key, keyPassphrase)
				if err != nil {
					return keyError(fmt.Errorf("--sign %s: %w", key, err))
				}
				opts.Signer = signer
			}
			if sbKey == "" && sbCert == "" && r.Boot != nil {
				sbKey, sbCert = r.Boot.SBKey, r.Boot.SBCert
			}
			if (sbKey == "") != (sbCert == "") {
				return usageError(errors.New("build: --sb-key and --sb-cert go together"))
			}
			if sbKey != "" {
				if r.Boot == nil {
					return usageError(fmt.Errorf("build: --sb-key: recipe %s has no boot: section, so nothing is signed for Secure Boot", args[0]))
				}
				k, err := secureboot.LoadKey(cmd.Context(), sbKey, sbCert, keyPassphrase)
				if err != nil {
					err = fmt.Errorf("Secure Boot key %s: %w", sbKey, err)
					if errors.Is(err, fs.ErrNotExist) {
						return usageError(err)
					}
					return secureBootError(err)
				}
				opts.SecureBoot = k
			}
			res, err := build.Build(cmd.Context(), r, opts)
			if err != nil {
				if ff := (*build.ForeignFilesError)(nil); errors.As(err, &ff) {
					return usageError(fmt.Errorf("build %s: %w", args[0], err))
				}
				return failed(fmt.Errorf("build %s: %w", args[0], err))
			}
			if g.json {
				return g.printJSON(map[string]any{"disk": res.Disk, "usr": res.Usr, "manifest": res.ManifestPath,
					"block_map": res.BlockMap, "signature": res.Signature, "stages": res.Stages, "image": res.Manifest})
			}
			w := g.env.Stdout
			m := res.Manifest
			fmt.Fprintf(w, "built %s %s (%s) → %s\n", m.Name, m.Version, m.Channel, out)
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "#\tLABEL\tSIZE\tFILESYSTEM\tDIGEST\tVERITY ROOT")
			for _, p := range m.Partitions {
				root := ""
				if p.Verity != nil {
					root = p.Verity.RootHash
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%.16s…\t%s\n", p.Number, p.Label, layout.HumanSize(p.Size), p.Filesystem, p.Digest, root)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if len(m.Outputs) == 0 {
				return nil
			}
			fmt.Fprintln(w)
			tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "OUTPUT\tFORMAT\tSIZE\tVIRTUAL SIZE\tDIGEST")
			for _, o := range m.Outputs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.16s…\n", o.Name, o.Format, layout.HumanSize(o.Size), layout.HumanSize(o.VirtualSize), o.Digest)
			}
			return tw.Flush()
		},
	}
	c.Flags().StringVarP(&out, "output", "o", "", "output directory")
	c.Flags().StringArrayVar(&sets, "set", nil, "override a recipe key (version=1.2.3, partitions.USR-A.source=dir:x)")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress output")
	c.Flags().StringArrayVar(&formats, "format", nil, "also convert the disk image to these formats, comma-separated, each listed in the manifest: raw (disk.img, always written), qcow2, qcow2-zstd, vmdk, vmdk-sparse, vhd, vhd-dynamic, vhdx, raw.zst, raw.xz, gce (disk.tar.gz), ova (see docs/formats.md)")
	c.Flags().StringVar(&sbKey, "sb-key", "", "sign the EFI binaries of a bootable build for UEFI Secure Boot (Authenticode) with this RSA key (PEM file, env://VAR or KMS URI); overrides the recipe's boot.sb-key")
	c.Flags().StringVar(&sbCert, "sb-cert", "", "the X.509 certificate of --sb-key (PEM or DER), as enrolled in the firmware's db")
	c.Flags().StringVar(&key, "sign", "", "sign manifest.json and the USR slot's release record with this key (PEM file, env://VAR or KMS URI); payload apply installs only signed releases")
	return c
}

// checkOutDir raises before any work what would stop a build at its end:
// OUTDIR must be a directory kiln can create files in, or not exist yet
// in a directory it can.
func checkOutDir(out string) error {
	dir := out
	if st, err := os.Stat(out); err == nil {
		if !st.IsDir() {
			return errors.New("not a directory")
		}
	} else if errors.Is(err, fs.ErrNotExist) {
		dir = filepath.Dir(filepath.Clean(out))
		for {
			st, err := os.Stat(dir)
			if err == nil {
				if !st.IsDir() {
					return fmt.Errorf("%s is not a directory", dir)
				}
				break
			}
			if !errors.Is(err, fs.ErrNotExist) || dir == filepath.Dir(dir) {
				return err
			}
			dir = filepath.Dir(dir)
		}
	} else {
		return err
	}
	f, err := os.CreateTemp(dir, ".kiln-write-check-*")
	if err != nil {
		return fmt.Errorf("cannot write in %s: %w", dir, err)
	}
	f.Close()
	return os.Remove(f.Name())
}
