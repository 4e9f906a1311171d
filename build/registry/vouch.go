package registry

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/kiln-os/kiln/build/manifest"
	"github.com/kiln-os/kiln/build/verify"
	"github.com/kiln-os/kiln/internal/hashing"
	"github.com/kiln-os/kiln/internal/progress"
	"github.com/kiln-os/kiln/layout"
	"github.com/kiln-os/kiln/sign"
)

// vouch checks, before anything is pushed, that manifest.json (what the
// build's signature covers) vouches for every image among the layers,
// byte for byte:
//
//   - disk.img: its size, and the chunked digests of every partition and
//     of the bytes outside them (MBR, both GPTs, the gaps);
//   - usr.img: the USR partition's size and digest;
//   - a converted image (disk.qcow2, disk.vhd, …): listed among the
//     manifest's outputs under its file name and format, with its size
//     and digest.
//
// The first image that fails is named with what differs, as bad input.
// usr.blockmap.json is not covered by the manifest and is not checked.
func (b *buildDir) vouch(ctx context.Context, layers []*layer, pr progress.Reporter) error {
	pr = progress.Or(pr)
	for _, l := range layers {
		format := diskFormatOf(l.name)
		if format == "" && l.name != UsrFile {
			continue
		}
		path := filepath.Join(b.dir, l.name)
		pr.Start(fmt.Sprintf("checking %s against %s (%s)", l.name, ManifestFile, layout.HumanSize(l.size)), l.size)
		var err error
		switch {
		case l.name == UsrFile:
			err = b.vouchUsr(path, pr.Add)
		case format == DiskFormats[0].Name:
			err = b.vouchDisk(path, pr.Add)
		default:
			err = b.vouchOutput(path, format, pr.Add)
		}
		if err == nil {
			err = ctx.Err()
		}
		if err != nil {
			progress.Fail(pr)
			return inputErrorf("%s is not what %s vouches for: %w; nothing was pushed", path, ManifestFile, err)
		}
		pr.End()
	}
	return nil
}

// verifySignature checks, when v is set, that the build's
// manifest.json.sig verifies over the manifest.json read (the bytes that
// are pushed) with v, the key keyName names.
func (b *buildDir) verifySignature(v sign.Verifier, keyName string) error {
	if v == nil {
		return nil
	}
	mpath, spath := filepath.Join(b.dir, ManifestFile), filepath.Join(b.dir, SignatureFile)
	data, err := os.ReadFile(spath)
	if err != nil {
		return inputErrorf("%s: --key %s asks for a signed build: %w; nothing was pushed", b.dir, keyName, err)
	}
	sig, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data)))
	if err == nil {
		err = v.Verify(bytes.NewReader(b.raw), sig)
	}
	if err != nil {
		return inputErrorf("%s does not verify with %s (%s): %w; nothing was pushed", mpath, keyName, spath, err)
	}
	return nil
}

// openSized opens path and returns it with its size.
func openSized(path string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, st.Size(), nil
}

// vouchDisk checks disk.img against the manifest: every byte, through the
// partitions' digests and the hashes of what lies outside them.
func (b *buildDir) vouchDisk(path string, add func(int64)) error {
	m := b.manifest
	f, size, err := openSized(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if size != m.DiskSize {
		return fmt.Errorf("%d bytes, the manifest's disk is %d bytes", size, m.DiskSize)
	}
	t, err := layout.ReadTableAt(f, size, filepath.Base(path))
	if err != nil {
		return err
	}
	got, err := manifest.HashOutside(f, t)
	if err != nil {
		return err
	}
	var diffs []string
	for _, c := range []struct{ what, got, want string }{
		{"MBR (sector 0)", got.MBR, m.Outside.MBR},
		{"primary GPT", got.PrimaryGPT, m.Outside.PrimaryGPT},
		{"backup GPT", got.BackupGPT, m.Outside.BackupGPT},
		{"bytes between the partitions", got.Gaps, m.Outside.Gaps},
	} {
		if c.got != c.want {
			diffs = append(diffs, fmt.Sprintf("%s: sha256 %.16s…, the manifest says %.16s…", c.what, c.got, c.want))
		}
	}
	jobs := make([]*hashing.Job, len(m.Partitions))
	outside := size
	for i, p := range m.Partitions {
		jobs[i] = &hashing.Job{R: f, Off: p.Offset, Size: p.Size}
		outside -= p.Size
	}
	add(outside) // hashed above
	hashing.Chunked(jobs, runtime.GOMAXPROCS(0), add)
	for i, p := range m.Partitions {
		switch j := jobs[i]; {
		case j.Err != nil:
			return fmt.Errorf("reading partition %s: %w", p.Label, j.Err)
		case j.Sum != p.Digest:
			diffs = append(diffs, fmt.Sprintf("partition %s: digest %.16s…, the manifest says %.16s…", p.Label, j.Sum, p.Digest))
		}
	}
	if len(diffs) > 0 {
		return fmt.Errorf("%s", strings.Join(diffs, "; "))
	}
	return nil
}

// vouchUsr checks usr.img against the manifest's USR partition.
func (b *buildDir) vouchUsr(path string, add func(int64)) error {
	usr := verify.UsrPartition(b.manifest)
	if usr == nil {
		return fmt.Errorf("the manifest has no USR partition")
	}
	f, size, err := openSized(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if size != usr.Size {
		return fmt.Errorf("%d bytes, partition %s is %d bytes", size, usr.Label, usr.Size)
	}
	j := &hashing.Job{R: f, Size: size}
	hashing.Chunked([]*hashing.Job{j}, runtime.GOMAXPROCS(0), add)
	if j.Err != nil {
		return j.Err
	}
	if j.Sum != usr.Digest {
		return fmt.Errorf("digest %s, the manifest says %s (partition %s)", j.Sum, usr.Digest, usr.Label)
	}
	return nil
}

// vouchOutput checks a converted image against the manifest's outputs.
func (b *buildDir) vouchOutput(path, format string, add func(int64)) error {
	name := filepath.Base(path)
	out := b.manifest.Output(name)
	if out == nil {
		return fmt.Errorf("the manifest lists no output %s (converted after the build? kiln build --format %s lists and signs it)", name, format)
	}
	if out.Format != format {
		return fmt.Errorf("the manifest lists %s as a %s image, not %s", name, out.Format, format)
	}
	f, size, err := openSized(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if size != out.Size {
		return fmt.Errorf("%d bytes, the manifest says %d", size, out.Size)
	}
	j := &hashing.Job{R: f, Size: size}
	hashing.Chunked([]*hashing.Job{j}, runtime.GOMAXPROCS(0), add)
	if j.Err != nil {
		return j.Err
	}
	if j.Sum != out.Digest {
		return fmt.Errorf("digest %s, the manifest says %s", j.Sum, out.Digest)
	}
	return nil
}
