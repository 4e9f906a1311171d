package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"

	"github.com/kiln-os/kiln/build/manifest"
	"github.com/kiln-os/kiln/build/payload"
	"github.com/kiln-os/kiln/build/update"
	"github.com/kiln-os/kiln/build/verify"
	"github.com/kiln-os/kiln/internal/progress"
	"github.com/kiln-os/kiln/layout"
	"github.com/kiln-os/kiln/sign"
)

// PullOptions say where to pull from and what to check.
type PullOptions struct {
	Remote
	// Verifier, when set, must verify the artifact before anything is
	// moved into place: a build's manifest.json signature (a referrer)
	// and its disk.img and usr.img against the signed manifest, byte for
	// byte; a payload's own signatures and data hashes.
	Verifier sign.Verifier
	// KeyName names the key in messages.
	KeyName string
	// Retries bounds how often one blob's download is resumed after the
	// connection dropped; 0 means 5.
	Retries int
}

// Pulled is what a pull wrote.
type Pulled struct {
	Reference    string       `json:"reference"`
	Digest       string       `json:"digest"` // the manifest's
	ArtifactType string       `json:"artifact_type"`
	Dir          string       `json:"dir"`
	Files        []PulledFile `json:"files"`
	// Signature is the digest of the signature artifact whose
	// manifest.json.sig was written, if any.
	Signature string `json:"signature,omitempty"`
	// Verified says the signature (and, for a build, the disk images
	// against the signed manifest) verified with PullOptions.Verifier.
	Verified bool `json:"verified"`
}

// PulledFile is one file a pull wrote.
type PulledFile struct {
	Name   string `json:"name"`
	Digest string `json:"digest"` // the blob's
	Size   int64  `json:"size"`   // the file's
}

// maxSignatureBlob bounds a signature layer.
const maxSignatureBlob = 64 << 10

// Pull fetches the kiln build or payload ref (a tag or a digest) into dir,
// which must be new or empty. Every blob is checked against its digest
// (and a compressed one against its uncompressed digest) and, with
// o.Verifier, the signature and content are verified, before the files
// are moved from a staging directory into dir: on any failure dir is left
// as it was (removed, when the pull created it).
func Pull(ctx context.Context, ref, dir string, o PullOptions) (*Pulled, error) {
	r, err := ParseReference(ref)
	if err != nil {
		return nil, err
	}
	if r.Reference == "" {
		return nil, inputErrorf("reference %q names no tag or digest", ref)
	}
	if o.Retries == 0 {
		o.Retries = 5
	}
	c, err := o.connect(r)
	if err != nil {
		return nil, err
	}
	name := r.String()
	desc, m, err := c.fetchManifest(ctx, r.Reference)
	if err != nil {
		return nil, done(ctx, fmt.Errorf("%s: %w", name, err))
	}
	if m.ArtifactType != ArtifactBuild && m.ArtifactType != ArtifactPayload {
		what := m.ArtifactType
		if what == "" {
			what = "an image with config " + m.Config.MediaType
		}
		return nil, inputErrorf("%s is not a kiln build or payload (artifact type %s, want %s or %s)", name, what, ArtifactBuild, ArtifactPayload)
	}
	names, err := layerNames(m)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	build := m.ArtifactType == ArtifactBuild
	if build && !slices.Contains(names, ManifestFile) {
		return nil, inputErrorf("%s: a build without %s", name, ManifestFile)
	}
	st, err := openStage(dir)
	if err != nil {
		return nil, err
	}
	p := &puller{c: c, o: &o, st: st, name: name, res: &Pulled{Reference: name, Digest: desc.Digest.String(), ArtifactType: m.ArtifactType, Dir: dir}}
	if err := p.pull(ctx, desc, m, build); err != nil {
		st.abort()
		return nil, done(ctx, err)
	}
	var written []string
	for _, f := range p.res.Files {
		written = append(written, f.Name)
	}
	if err := st.commit(written); err != nil {
		return nil, err
	}
	return p.res, nil
}

// puller is one pull under way.
type puller struct {
	c    *client
	o    *PullOptions
	st   *stage
	name string // the reference, for messages
	res  *Pulled
}

// pull stages the files: a build's manifest.json and signature first, so
// a bad signature fails before the large blobs are fetched.
func (p *puller) pull(ctx context.Context, desc ocispec.Descriptor, m *ocispec.Manifest, build bool) error {
	layers := slices.Clone(m.Layers)
	slices.SortStableFunc(layers, func(a, b ocispec.Descriptor) int {
		return boolInt(a.MediaType != MediaTypeManifest) - boolInt(b.MediaType != MediaTypeManifest)
	})
	for i, l := range layers {
		if err := p.fetchFile(ctx, l); err != nil {
			return err
		}
		if i == 0 && build {
			if err := p.signature(ctx, desc); err != nil {
				return err
			}
			if err := p.documents(ctx, desc); err != nil {
				return err
			}
		}
	}
	if p.o.Verifier == nil {
		return nil
	}
	if build {
		return p.verifyBuild(ctx)
	}
	return p.verifyPayload(ctx, layers[0])
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// layerNames checks that every layer is a file kiln writes, with a plain,
// unique name, and returns the names.
func layerNames(m *ocispec.Manifest) ([]string, error) {
	var names []string
	for _, l := range m.Layers {
		n := fileName(l)
		switch {
		case !knownLayer(l.MediaType):
			return nil, inputErrorf("layer %s (%s): media type %q is not one kiln writes", n, l.Digest, l.MediaType)
		case n == "" || n == "." || n == ".." || strings.ContainsAny(n, "/\x00") || strings.HasPrefix(n, stagePrefix) || n == SignatureFile:
			return nil, inputErrorf("layer %s: bad file name %q", l.Digest, n)
		case slices.Contains(names, n):
			return nil, inputErrorf("two layers named %s", n)
		}
		if err := l.Digest.Validate(); err != nil {
			return nil, inputErrorf("layer %s: %w", n, err)
		}
		names = append(names, n)
	}
	if len(names) == 0 {
		return nil, inputErrorf("no layers")
	}
	return names, nil
}

// fileName is the file a layer restores: its vnd.kiln.file annotation
// when it has one (a compressed layer, titled disk.img.zst), else its
// title (a layer that is the file, or one pushed by an older kiln).
func fileName(l ocispec.Descriptor) string {
	if n, ok := l.Annotations[AnnotationFile]; ok {
		return n
	}
	return l.Annotations[ocispec.AnnotationTitle]
}

// fetchManifest fetches and parses the image manifest reference names,
// its digest checked.
func (c *client) fetchManifest(ctx context.Context, reference string) (ocispec.Descriptor, *ocispec.Manifest, error) {
	desc, rc, err := c.repo.FetchReference(ctx, reference)
	if err != nil {
		if notExist(err) {
			return desc, nil, errors.New("not found on the registry")
		}
		return desc, nil, c.explain(err)
	}
	defer rc.Close()
	if desc.MediaType != ocispec.MediaTypeImageManifest {
		return desc, nil, inputErrorf("media type %s, not an OCI image manifest", desc.MediaType)
	}
	data, err := content.ReadAll(rc, desc)
	if err != nil {
		return desc, nil, verifyErrorf("manifest %s: %w", desc.Digest, err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return desc, nil, inputErrorf("manifest %s: %w", desc.Digest, err)
	}
	return desc, &m, nil
}

// fetchFile stages layer l as its file: fetched (resumed when the
// connection drops), digest-checked, decompressed and checked again when
// compressed; holes left where the content is zero.
func (p *puller) fetchFile(ctx context.Context, l ocispec.Descriptor) error {
	name := fileName(l)
	title := l.Annotations[ocispec.AnnotationTitle]
	compressed := strings.HasSuffix(l.MediaType, ZstdSuffix)
	dst := p.st.file(name)
	if compressed {
		// Not under its title: that may be another layer's file (the
		// raw.zst image, disk.img.zst).
		dst = p.st.file(".blob-" + l.Digest.Encoded())
	}
	pr := progress.Or(p.c.remote.Progress)
	pr.Start(fmt.Sprintf("downloading %s (%s)", title, layout.HumanSize(l.Size)), l.Size)
	if err := p.fetchBlob(ctx, l, dst, pr.Add); err != nil {
		progress.Fail(pr)
		return fmt.Errorf("%s: blob %s (%s): %w", p.name, name, l.Digest, err)
	}
	pr.End()
	size := l.Size
	if compressed {
		var err error
		if size, err = decompress(ctx, l, dst, p.st.file(name), pr); err != nil {
			return fmt.Errorf("%s: blob %s (%s): %w", p.name, name, l.Digest, err)
		}
		os.Remove(dst)
	}
	p.res.Files = append(p.res.Files, PulledFile{Name: name, Digest: l.Digest.String(), Size: size})
	return nil
}

// fetchBlob downloads the blob to path, resuming with range requests
// after a dropped connection, and checks its size and digest.
// got, when not nil, is told of the bytes as they arrive.
func (p *puller) fetchBlob(ctx context.Context, l ocispec.Descriptor, path string, got func(int64)) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := l.Digest.Validate(); err != nil {
		return verifyErrorf("%w", err)
	}
	d := l.Digest.Algorithm().Digester()
	w := &sparseWriter{f: f}
	buf := make([]byte, 1<<20)
	var rc io.ReadCloser
	defer func() {
		if rc != nil {
			rc.Close()
		}
	}()
	var lastErr error
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if attempt > p.o.Retries {
				return fmt.Errorf("gave up after the download failed %d times (%d of %d bytes fetched): %w", attempt, w.off, l.Size, lastErr)
			}
			p.c.remote.log().Warn("resuming", "blob", l.Annotations[ocispec.AnnotationTitle], "at", w.off, "of", l.Size, "error", lastErr)
			select {
			case <-ctx.Done():
				return context.Cause(ctx)
			case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
			}
		}
		if rc == nil {
			if w.off > 0 {
				return fmt.Errorf("connection lost after %d of %d bytes, and the registry cannot resume (no range requests): %w", w.off, l.Size, lastErr)
			}
			if rc, err = p.c.repo.Blobs().Fetch(ctx, l); err != nil {
				if ctx.Err() != nil || notExist(err) || errors.Is(err, ErrAuth) {
					return p.c.explain(err)
				}
				lastErr = p.c.explain(err)
				continue
			}
		} else if s, ok := rc.(io.Seeker); ok {
			// A range request from where the connection dropped. (Seeking
			// to the end first: the reader reconnects only on a move.)
			if _, err := s.Seek(0, io.SeekEnd); err == nil {
				_, err = s.Seek(w.off, io.SeekStart)
			}
			if err != nil {
				lastErr = err
				continue
			}
		} else {
			rc.Close()
			rc = nil
			continue
		}
		var src io.Reader = io.LimitReader(rc, l.Size-w.off+1)
		if got != nil {
			src = &countReader{r: src, add: got}
		}
		_, err := io.CopyBuffer(io.MultiWriter(w, d.Hash()), src, buf)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		lastErr = err
	}
	if w.off != l.Size {
		return verifyErrorf("%d bytes, the manifest says %d", w.off, l.Size)
	}
	if got := d.Digest(); got != l.Digest {
		return verifyErrorf("digest %s, the manifest says %s", got, l.Digest)
	}
	if err := w.finish(); err != nil {
		return err
	}
	return f.Close()
}

// decompress writes the zstd blob at src, decompressed, to dst and checks
// the uncompressed digest and size its annotations give, reporting to pr.
// It returns the size.
func decompress(ctx context.Context, l ocispec.Descriptor, src, dst string, pr progress.Reporter) (n int64, err error) {
	want, err := digest.Parse(l.Annotations[AnnotationUncompressedDigest])
	if err != nil {
		return 0, inputErrorf("compressed, but annotation %s: %w", AnnotationUncompressedDigest, err)
	}
	size, err := strconv.ParseInt(l.Annotations[AnnotationUncompressedSize], 10, 64)
	if err != nil || size < 0 {
		return 0, inputErrorf("compressed, but annotation %s is %q", AnnotationUncompressedSize, l.Annotations[AnnotationUncompressedSize])
	}
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	dec, err := zstd.NewReader(in, zstd.WithDecoderMaxWindow(64<<20), zstd.WithDecoderConcurrency(1))
	if err != nil {
		return 0, err
	}
	defer dec.Close()
	pr.Start(fmt.Sprintf("decompressing %s (%s)", filepath.Base(dst), layout.HumanSize(size)), size)
	defer func() {
		if err != nil {
			progress.Fail(pr)
		} else {
			pr.End()
		}
	}()
	d := want.Algorithm().Digester()
	w := &sparseWriter{f: out}
	n, err = io.CopyBuffer(io.MultiWriter(w, d.Hash()), &countReader{r: &ctxReader{ctx, io.LimitReader(dec, size+1)}, add: pr.Add}, make([]byte, 1<<20))
	if err != nil {
		return 0, verifyErrorf("decompressing: %w", err)
	}
	if n != size {
		return 0, verifyErrorf("%d bytes decompressed, the annotation says %d", n, size)
	}
	if got := d.Digest(); got != want {
		return 0, verifyErrorf("decompressed digest %s, the annotation says %s", got, want)
	}
	if err := w.finish(); err != nil {
		return 0, err
	}
	return n, out.Close()
}

// signature finds the build's signature referrers and stages one as
// manifest.json.sig: with a Verifier, the first that verifies the staged
// manifest.json (none is an error); without, the first.
func (p *puller) signature(ctx context.Context, subject ocispec.Descriptor) error {
	var refs []ocispec.Descriptor
	err := p.c.repo.Referrers(ctx, subject, ArtifactSignature, func(rs []ocispec.Descriptor) error {
		refs = append(refs, rs...)
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: listing the signature referrers: %w", p.name, p.c.explain(err))
	}
	v := p.o.Verifier
	if len(refs) == 0 {
		if v != nil {
			return verifyErrorf("%s has no signature (no referrer of type %s), and --key asks for one", p.name, ArtifactSignature)
		}
		return nil
	}
	var errs []error
	path := p.st.file(SignatureFile)
	for _, rd := range refs {
		sig, sigDigest, err := p.fetchSignature(ctx, rd)
		if err != nil {
			errs = append(errs, fmt.Errorf("signature %s: %w", rd.Digest, err))
			continue
		}
		if err := os.WriteFile(path, sig, 0o644); err != nil {
			return err
		}
		if v != nil {
			if err := sign.VerifyFile(ctx, v, p.st.file(ManifestFile), path); err != nil {
				errs = append(errs, fmt.Errorf("signature %s: %s", rd.Digest, p.unstaged(err.Error())))
				os.Remove(path)
				continue
			}
		}
		p.res.Files = append(p.res.Files, PulledFile{Name: SignatureFile, Digest: sigDigest.String(), Size: int64(len(sig))})
		p.res.Signature = rd.Digest.String()
		return nil
	}
	if v != nil {
		return verifyErrorf("%s: %s does not verify with %s: %w", p.name, ManifestFile, p.o.KeyName, errors.Join(errs...))
	}
	return fmt.Errorf("%s: %w", p.name, errors.Join(errs...))
}

// fetchSignature fetches a signature artifact's signature bytes, and
// their blob's digest.
func (p *puller) fetchSignature(ctx context.Context, rd ocispec.Descriptor) ([]byte, digest.Digest, error) {
	_, m, err := p.c.fetchManifest(ctx, rd.Digest.String())
	if err != nil {
		return nil, "", err
	}
	if len(m.Layers) != 1 || m.Layers[0].MediaType != MediaTypeSignature || m.Layers[0].Size > maxSignatureBlob {
		return nil, "", inputErrorf("not one %s layer of at most %d bytes", MediaTypeSignature, maxSignatureBlob)
	}
	l := m.Layers[0]
	rc, err := p.c.repo.Blobs().Fetch(ctx, l)
	if err != nil {
		return nil, "", p.c.explain(err)
	}
	defer rc.Close()
	data, err := content.ReadAll(rc, l)
	if err != nil {
		return nil, "", verifyErrorf("%w", err)
	}
	return data, l.Digest, nil
}

// unstaged strips the staging directory from a message about a staged
// file.
func (p *puller) unstaged(msg string) string {
	return strings.ReplaceAll(msg, p.st.path+"/", "")
}

// verifyBuild checks the staged disk.img, usr.img and converted images
// against the signed manifest.json, byte for byte; a converted image the
// manifest does not list is refused.
func (p *puller) verifyBuild(ctx context.Context) error {
	opts := verify.Options{Manifest: p.st.file(ManifestFile), Verifier: p.o.Verifier, KeyName: p.o.KeyName}
	f, err := os.Open(opts.Manifest)
	if err != nil {
		return err
	}
	m, err := manifest.Parse(f)
	f.Close()
	if err != nil {
		return verifyErrorf("%s: %s: %w", p.name, ManifestFile, err)
	}
	pr := progress.Or(p.c.remote.Progress)
	for _, file := range p.res.Files {
		var rep *verify.Report
		var err error
		if file.Name == DiskFormats[0].File || m.Output(file.Name) != nil || file.Name == UsrFile {
			pr.Start(fmt.Sprintf("verifying %s against the signed %s (%s)", file.Name, ManifestFile, layout.HumanSize(file.Size)), file.Size)
		}
		switch {
		case file.Name == DiskFormats[0].File || m.Output(file.Name) != nil:
			// disk.img, or a converted image the signed manifest lists
			// (kiln build --format): its digest, and the disk it holds
			// read through its format.
			rep, err = verify.Image(ctx, p.st.file(file.Name), opts)
		case diskFormatOf(file.Name) != "":
			return verifyErrorf("%s: %s is not listed in the signed %s, so --key cannot check it (build with --format %s to list and sign it, or pull without --key)",
				p.name, file.Name, ManifestFile, diskFormatOf(file.Name))
		case file.Name == UsrFile:
			usr := verify.UsrPartition(m)
			if usr == nil {
				return verifyErrorf("%s: %s has no USR partition for %s", p.name, ManifestFile, UsrFile)
			}
			rep, err = verify.Partition(ctx, p.st.file(file.Name), usr.Label, opts)
		default:
			continue
		}
		// The check ran through (its verdict follows).
		pr.Add(file.Size)
		pr.End()
		if err != nil {
			return fmt.Errorf("%s: verifying %s: %w", p.name, file.Name, err)
		}
		if !rep.OK {
			var bad []string
			for _, c := range rep.Checks {
				if !c.OK {
					bad = append(bad, c.Name+": "+p.unstaged(c.Detail))
				}
			}
			return verifyErrorf("%s: %s does not match the signed %s: %s", p.name, file.Name, ManifestFile, strings.Join(bad, "; "))
		}
	}
	p.res.Verified = true
	return nil
}

// verifyPayload checks a staged payload's signatures and data hashes.
func (p *puller) verifyPayload(ctx context.Context, l ocispec.Descriptor) error {
	name := l.Annotations[ocispec.AnnotationTitle]
	f, err := os.Open(p.st.file(name))
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	pl, err := payload.Open(f, st.Size())
	if err != nil {
		return verifyErrorf("%s: %s: %w", p.name, name, err)
	}
	if err := pl.Verify(ctx, update.Verifier{V: p.o.Verifier}); err != nil {
		return verifyErrorf("%s: %s does not verify with %s: %w", p.name, name, p.o.KeyName, err)
	}
	p.res.Verified = true
	return nil
}
