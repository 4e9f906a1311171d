package registry

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kiln-os/kiln/internal/progress"
)

// KubeVirt's containerDisk convention: the disk under /disk/, readable by
// the qemu user (uid and gid 107) that virt-launcher runs as.
const (
	containerDiskDir = "disk/"
	containerDiskUID = 107
)

// PushContainerDisk publishes the build directory dir's disk image as a
// KubeVirt containerDisk ref (which must name a tag): an ordinary OCI
// image of one gzip tar layer holding /disk/disk.qcow2 (or disk.img, …:
// the one format o.Formats names, else qcow2 when the build has it, else
// raw), owned by uid and gid 107, mode 0440. The image carries the build's
// annotations; it holds no signature.
func PushContainerDisk(ctx context.Context, dir, ref string, o PushOptions) (*Pushed, error) {
	r, err := pushReference(ref)
	if err != nil {
		return nil, err
	}
	if len(o.Formats) > 1 {
		return nil, inputErrorf("a containerDisk holds one disk image: name one format, not %v", o.Formats)
	}
	b, err := readBuild(dir, o.Formats)
	if err != nil {
		return nil, err
	}
	disk := b.disks[0]
	for _, f := range b.disks {
		if f.Name == "qcow2" && len(o.Formats) == 0 {
			disk = f
		}
	}
	epoch := time.Unix(b.manifest.SourceDateEpoch, 0).UTC()
	l, err := tarLayer(filepath.Join(dir, disk.File), containerDiskDir+disk.File, epoch)
	if err != nil {
		return nil, err
	}
	if err := b.verifySignature(o.Verifier, o.KeyName); err != nil {
		return nil, err
	}
	if err := b.vouch(ctx, []*layer{l}, o.Progress); err != nil {
		return nil, done(ctx, err)
	}
	if err := describe(ctx, []*layer{l}, progress.Or(o.Progress)); err != nil {
		return nil, err
	}
	defer l.closeSpool()
	arch := o.Arch
	if arch == "" {
		arch = "amd64"
	}
	img := ocispec.Image{
		Created:  &epoch,
		Platform: ocispec.Platform{Architecture: arch, OS: "linux"},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{l.diff}},
	}
	cfg, err := json.Marshal(img)
	if err != nil {
		return nil, err
	}
	c, err := o.connect(r)
	if err != nil {
		return nil, err
	}
	m := ocispec.Manifest{
		Versioned:   specs.Versioned{SchemaVersion: 2},
		MediaType:   ocispec.MediaTypeImageManifest,
		Annotations: b.annotations(),
	}
	res, _, err := c.pushManifest(ctx, m, bytesLayer("config", ocispec.MediaTypeImageConfig, cfg), []*layer{l})
	return res, err
}

// tarLayer is a gzip tar layer of one file, the file at path stored as
// name (with its directory), owned by the containerDisk user. Its title
// is the file's name + ".tar.gz" (what the blob is: `oras pull` writes
// disk.qcow2.tar.gz, which `tar -xzf` unpacks to disk/disk.qcow2).
func tarLayer(path, name string, mtime time.Time) (*layer, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, classify(ErrInput, err)
	}
	base := filepath.Base(path)
	l := &layer{name: base, title: base + ".tar.gz", mediaType: ocispec.MediaTypeImageLayerGzip, size: st.Size(), spoolDir: filepath.Dir(path)}
	l.write = func(ctx context.Context, w io.Writer, read func(int64)) (digest.Digest, int64, error) {
		f, err := os.Open(path)
		if err != nil {
			return "", 0, err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return "", 0, err
		}
		zw, err := gzip.NewWriterLevel(w, gzip.DefaultCompression)
		if err != nil {
			return "", 0, err
		}
		d := digest.SHA256.Digester()
		cw := &countWriter{w: io.MultiWriter(zw, d.Hash())}
		tw := tar.NewWriter(cw)
		hdrs := []*tar.Header{
			{Typeflag: tar.TypeDir, Name: filepath.Dir(name) + "/", Mode: 0o555, Uid: containerDiskUID, Gid: containerDiskUID, ModTime: mtime, Format: tar.FormatPAX},
			{Typeflag: tar.TypeReg, Name: name, Size: st.Size(), Mode: 0o440, Uid: containerDiskUID, Gid: containerDiskUID, ModTime: mtime, Format: tar.FormatPAX},
		}
		for i, h := range hdrs {
			if err := tw.WriteHeader(h); err != nil {
				return "", 0, fmt.Errorf("tar: %w", err)
			}
			if i == 1 {
				var src io.Reader = &ctxReader{ctx, &sparseReader{f: f, size: st.Size()}}
				if read != nil {
					src = &countReader{r: src, add: read}
				}
				if _, err := io.CopyBuffer(tw, src, make([]byte, 1<<20)); err != nil {
					return "", 0, err
				}
			}
		}
		if err := tw.Close(); err != nil {
			return "", 0, err
		}
		if err := zw.Close(); err != nil {
			return "", 0, err
		}
		return d.Digest(), cw.n, nil
	}
	return l, nil
}
