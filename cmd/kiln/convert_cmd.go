package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/kiln-os/kiln/build/diskimage"
	"github.com/kiln-os/kiln/internal/hashing"
	"github.com/kiln-os/kiln/layout"
)

func newConvertCommand(g *globals) *cobra.Command {
	var format, out string
	var force, quiet bool
	var workers int
	c := &cobra.Command{
		Use:   "convert IMAGE --format FORMAT [-o OUT] [--force]",
		Short: "Convert a raw disk image to qcow2, VMDK, VHD, VHDX, compressed raw, GCE's tar.gz or OVA",
		Long: "Converts the sparse raw disk image IMAGE (kiln build's disk.img, or any raw disk) into FORMAT:\n" +
			"qcow2, qcow2-zstd, vmdk (streamOptimized), vmdk-sparse (monolithicSparse), vhd (fixed, Azure),\n" +
			"vhd-dynamic, vhdx, raw.zst, raw.xz, gce (disk.raw in a sparse GNU tar.gz, as GCE imports), ova\n" +
			"(OVF, streamOptimized VMDK, manifest) (see docs/formats.md). OUT defaults to the format's file name\n" +
			"beside IMAGE (disk.qcow2, disk.vmdk, disk.vhd, disk.img.zst, disk.tar.gz, disk.ova, ...); an existing\n" +
			"OUT is replaced only with --force. The holes of IMAGE are never read; the output depends only on\n" +
			"IMAGE's content and SOURCE_DATE_EPOCH (the VHD timestamp, the tar members' mtime). Prints the\n" +
			"output's digest (" + hashing.ChunkedAlgorithm + ", as manifests record). To list converted images in a signed manifest, build with --format.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			image := args[0]
			if format == "" {
				return usageError(fmt.Errorf("convert: --format is required (one of qcow2, qcow2-zstd, vmdk, vmdk-sparse, vhd, vhd-dynamic, vhdx, raw.zst, raw.xz, gce, ova)"))
			}
			f, err := diskimage.ParseFormat(format)
			if err != nil {
				return usageError(fmt.Errorf("convert: --format: %w", err))
			}
			if out == "" {
				out = filepath.Join(filepath.Dir(image), f.FileName())
			}
			epoch, err := sourceDateEpoch()
			if err != nil {
				return err
			}
			d, err := layout.OpenDisk(image)
			if err != nil {
				return usageError(fmt.Errorf("convert: %w", err))
			}
			defer d.Close()
			if in, err := diskimage.Detect(d.File, d.Size); err != nil {
				return usageError(fmt.Errorf("convert: reading %s: %w", image, err))
			} else if in != diskimage.Raw {
				return usageError(fmt.Errorf("convert: %s is a %s image: kiln convert reads raw disk images", image, in))
			}
			if same, err := sameFile(image, out); err != nil {
				return usageError(fmt.Errorf("convert: %w", err))
			} else if same {
				return usageError(fmt.Errorf("convert: -o %s is the input image", out))
			}
			if _, err := os.Lstat(out); err == nil && !force {
				return usageError(fmt.Errorf("convert: %s exists (--force replaces it)", out))
			}
			if st, err := os.Stat(filepath.Dir(out)); err != nil || !st.IsDir() {
				return usageError(fmt.Errorf("convert: -o %s: no directory %s", out, filepath.Dir(out)))
			}
			src, err := diskimage.NewSource(d.File, d.Size)
			if err != nil {
				return usageError(fmt.Errorf("convert: %s: %w", image, err))
			}
			p := newProgress(g.env.Stderr, quiet || g.json)
			p.Start("convert "+f.String(), d.Size)
			start := time.Now()
			res, err := diskimage.WriteFile(cmd.Context(), out, src, f, diskimage.Options{Workers: workers, Time: epoch, Progress: p.Add})
			p.End()
			if err != nil {
				err = fmt.Errorf("convert %s to %s: %w", image, out, err)
				if errors.Is(err, diskimage.ErrTooLarge) || errors.Is(err, fs.ErrPermission) {
					return usageError(err)
				}
				return failed(err)
			}
			elapsed := time.Since(start)
			if g.json {
				return g.printJSON(map[string]any{"image": image, "output": out, "format": f.String(), "virtual_size": res.VirtualSize,
					"size": res.Size, "digest": res.Digest, "digest_algorithm": hashing.ChunkedAlgorithm, "seconds": elapsed.Seconds()})
			}
			fmt.Fprintf(g.env.Stdout, "converted %s → %s (%s, virtual size %s): %d bytes in %v\n%s %s\n", image, out, f,
				layout.HumanSize(res.VirtualSize), res.Size, elapsed.Round(time.Millisecond), hashing.ChunkedAlgorithm, res.Digest)
			return nil
		},
	}
	c.Flags().StringVar(&format, "format", "", "output format: qcow2, qcow2-zstd, vmdk, vmdk-sparse, vhd, vhd-dynamic, vhdx, raw.zst, raw.xz, gce, ova")
	c.Flags().StringVarP(&out, "output", "o", "", "output file (default: the format's file name beside IMAGE)")
	c.Flags().BoolVar(&force, "force", false, "replace an existing output file")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress output")
	c.Flags().IntVar(&workers, "workers", 0, "goroutines that read and compress (default: every core); the output is the same for any number")
	return c
}

// sameFile reports whether a and b name the same file (b may not exist).
func sameFile(a, b string) (bool, error) {
	sa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	sb, err := os.Stat(b)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return os.SameFile(sa, sb), nil
}
