package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"

	"github.com/kiln-os/kiln/build/manifest"
	"github.com/kiln-os/kiln/build/payload"
	"github.com/kiln-os/kiln/internal/progress"
	"github.com/kiln-os/kiln/layout"
	"github.com/kiln-os/kiln/sign"
)

// Files of a build directory that a push publishes besides the disk
// images (the names `kiln build` gives them).
const (
	ManifestFile  = "manifest.json"
	SignatureFile = "manifest.json.sig"
	UsrFile       = "usr.img"
	BlockMapFile  = "usr.blockmap.json"
)

// PushOptions say what a push publishes, and where.
type PushOptions struct {
	Remote
	// Formats are the disk formats to publish (names from DiskFormats);
	// empty publishes every disk image the build directory holds.
	Formats []string
	// Compression is how the images are stored: with Zstd (the default),
	// disk.img, usr.img and every converted image but the compressed
	// streams (raw.zst, raw.xz) are compressed for transport.
	Compression Compression
	// Arch is a containerDisk's architecture (GOARCH names); "" is amd64.
	Arch string
	// Verifier, when set, must verify the build's manifest.json.sig over
	// its manifest.json before anything is pushed: a build without a
	// signature, or whose signature does not verify, is refused (ErrInput).
	Verifier sign.Verifier
	// KeyName names the Verifier's key in messages.
	KeyName string
}

// Pushed is what a push published.
type Pushed struct {
	Reference    string       `json:"reference"`
	Digest       string       `json:"digest"` // the manifest's
	MediaType    string       `json:"media_type"`
	ArtifactType string       `json:"artifact_type,omitempty"`
	Blobs        []PushedBlob `json:"blobs"`
	// Signature is the digest of the signature artifact, the manifest's
	// referrer, when the build was signed.
	Signature string `json:"signature,omitempty"`
	// Uploaded counts the bytes uploaded: 0 when the registry held every
	// blob already.
	Uploaded int64 `json:"uploaded_bytes"`
}

// PushedBlob is one blob of a push.
type PushedBlob struct {
	Name string `json:"name"` // the file, which kiln pull restores
	// Title is the blob's org.opencontainers.image.title: the name a
	// generic OCI client writes it under (disk.img.zst when compressed).
	Title     string `json:"title"`
	MediaType string `json:"media_type"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	Uploaded  bool   `json:"uploaded"` // false: the registry had it
}

// buildDir is what a push reads from a build directory.
type buildDir struct {
	dir      string
	manifest *manifest.Manifest
	raw      []byte // manifest.json
	disks    []DiskFormat
}

// readBuild reads the build directory dir: manifest.json, and the disk
// images of the chosen formats (all present ones when formats is empty).
func readBuild(dir string, formats []string) (*buildDir, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, classify(ErrInput, err)
	}
	if !st.IsDir() {
		return nil, inputErrorf("%s is not a build directory", dir)
	}
	raw, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, inputErrorf("%s is not a build directory: %w", dir, err)
	}
	m, err := manifest.Parse(bytes.NewReader(raw))
	if err != nil {
		return nil, inputErrorf("%s: %w", filepath.Join(dir, ManifestFile), err)
	}
	b := &buildDir{dir: dir, manifest: m, raw: raw}
	for _, name := range formats {
		f, ok := diskFormat(name)
		if !ok {
			return nil, inputErrorf("unknown disk format %q (want one of %v)", name, DiskFormatNames())
		}
		if _, err := os.Stat(filepath.Join(dir, f.File)); err != nil {
			return nil, inputErrorf("format %s: %w", name, err)
		}
		if !slices.Contains(b.disks, f) {
			b.disks = append(b.disks, f)
		}
	}
	if len(formats) == 0 {
		for _, f := range DiskFormats {
			if st, err := os.Stat(filepath.Join(dir, f.File)); err == nil && st.Mode().IsRegular() {
				b.disks = append(b.disks, f)
			}
		}
		if len(b.disks) == 0 {
			return nil, inputErrorf("%s holds no disk image (%s)", dir, DiskFormats[0].File)
		}
	}
	return b, nil
}

// annotations are the manifest annotations that describe a build.
func (b *buildDir) annotations() map[string]string {
	m := b.manifest
	a := map[string]string{
		ocispec.AnnotationTitle:   m.Name,
		ocispec.AnnotationVersion: m.Version,
		ocispec.AnnotationCreated: time.Unix(m.SourceDateEpoch, 0).UTC().Format(time.RFC3339),
		AnnotationName:            m.Name,
		AnnotationLayout:          m.Layout,
		AnnotationKilnVersion:     m.KilnVersion,
	}
	if m.Channel != "" {
		a[AnnotationChannel] = m.Channel
	}
	return a
}

// exists reports whether path is a regular file; an error other than its
// absence is returned.
func exists(path string) (bool, error) {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return st.Mode().IsRegular(), nil
}

// PushBuild publishes the build directory dir as ref (which must name a
// tag): the disk images of the chosen formats, usr.img, the block map and
// manifest.json as one artifact, and manifest.json.sig, when there is
// one, as its referrer. Every disk image and usr.img must be what
// manifest.json vouches for (see vouch); nothing is pushed otherwise.
// Blobs the registry holds are not uploaded again.
func PushBuild(ctx context.Context, dir, ref string, o PushOptions) (*Pushed, error) {
	r, err := pushReference(ref)
	if err != nil {
		return nil, err
	}
	b, err := readBuild(dir, o.Formats)
	if err != nil {
		return nil, err
	}
	var layers []*layer
	for _, f := range b.disks {
		l, err := fileLayer(f.File, filepath.Join(dir, f.File), MediaTypeDisk+f.Name, !f.Compressed && o.Compression == Zstd)
		if err != nil {
			return nil, err
		}
		layers = append(layers, l)
	}
	for _, x := range []struct {
		name, mediaType string
		compress        bool
	}{{UsrFile, MediaTypePartition, o.Compression == Zstd}, {BlockMapFile, MediaTypeBlockMap, false}} {
		ok, err := exists(filepath.Join(dir, x.name))
		if err != nil {
			return nil, classify(ErrInput, err)
		}
		if ok {
			l, err := fileLayer(x.name, filepath.Join(dir, x.name), x.mediaType, x.compress)
			if err != nil {
				return nil, err
			}
			layers = append(layers, l)
		}
	}
	layers = append(layers, bytesLayer(ManifestFile, MediaTypeManifest, b.raw))
	uniqueTitles(layers)
	sig, err := os.ReadFile(filepath.Join(dir, SignatureFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, classify(ErrInput, err)
	}
	if err := b.verifySignature(o.Verifier, o.KeyName); err != nil {
		return nil, err
	}
	if err := b.vouch(ctx, layers, o.Progress); err != nil {
		return nil, done(ctx, err)
	}
	docs, err := b.documents(o)
	if err != nil {
		return nil, err
	}
	c, err := o.connect(r)
	if err != nil {
		return nil, err
	}
	res, desc, err := c.pushArtifact(ctx, ArtifactBuild, layers, b.annotations(), nil)
	if err != nil {
		return nil, err
	}
	if sig != nil {
		sl := bytesLayer(SignatureFile, MediaTypeSignature, sig)
		sl.annotations = map[string]string{AnnotationSigned: layers[len(layers)-1].desc.Digest.String()}
		ann := map[string]string{ocispec.AnnotationCreated: b.annotations()[ocispec.AnnotationCreated]}
		sres, _, err := c.pushArtifact(ctx, ArtifactSignature, []*layer{sl}, ann, &desc)
		if err != nil {
			return nil, fmt.Errorf("%s: attaching the signature: %w", res.Reference, err)
		}
		res.Signature = sres.Digest
		res.Blobs = append(res.Blobs, sres.Blobs...)
		res.Uploaded += sres.Uploaded
	}
	if err := c.pushDocuments(ctx, docs, desc, b.annotations()[ocispec.AnnotationCreated], res); err != nil {
		return nil, err
	}
	return res, nil
}

// uniqueTitles makes the layers' titles unique: a compressed layer whose
// title (disk.img.zst) is another layer's file (the raw.zst image,
// disk.img.zst) is titled name + ".kiln.zst" instead, so that a generic
// client writes both.
func uniqueTitles(layers []*layer) {
	names := map[string]bool{}
	for _, l := range layers {
		names[l.name] = true
	}
	for _, l := range layers {
		if l.compressed && names[l.title] {
			l.title = l.name + ".kiln" + ZstdExt
		}
	}
}

// PushPayload publishes the update payload at path as ref (which must
// name a tag): one artifact of one layer, annotated with the payload's
// version and kind.
func PushPayload(ctx context.Context, path, ref string, o PushOptions) (*Pushed, error) {
	r, err := pushReference(ref)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, classify(ErrInput, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, classify(ErrInput, err)
	}
	p, err := payload.Open(f, st.Size())
	if err != nil {
		return nil, inputErrorf("%s is not an update payload: %w", path, err)
	}
	s := payload.Inspect(ctx, p, nil)
	ann := map[string]string{ocispec.AnnotationTitle: filepath.Base(path), AnnotationPayloadKind: s.Kind}
	for _, part := range s.Partitions {
		if part.Version != "" {
			ann[ocispec.AnnotationVersion] = part.Version
		}
		if part.OldVersion != "" {
			ann[AnnotationPayloadFrom] = part.OldVersion
		}
	}
	c, err := o.connect(r)
	if err != nil {
		return nil, err
	}
	l, err := fileLayer(filepath.Base(path), path, MediaTypePayload, false)
	if err != nil {
		return nil, err
	}
	res, _, err := c.pushArtifact(ctx, ArtifactPayload, []*layer{l}, ann, nil)
	return res, err
}

// pushReference parses ref and requires a tag.
func pushReference(ref string) (registry.Reference, error) {
	r, err := ParseReference(ref)
	if err != nil {
		return r, err
	}
	if r.Reference == "" {
		return r, inputErrorf("reference %q names no tag (want HOST/REPOSITORY:TAG)", ref)
	}
	if _, err := r.Digest(); err == nil {
		return r, inputErrorf("reference %q: push to a tag, not a digest", ref)
	}
	return r, nil
}

// pushArtifact describes and uploads the layers (those the registry lacks),
// then pushes an OCI 1.1 manifest of artifactType over them (an image
// manifest with the empty config), tagged with the client's tag, or by
// digest when it has a subject (a referrer).
func (c *client) pushArtifact(ctx context.Context, artifactType string, layers []*layer, ann map[string]string, subject *ocispec.Descriptor) (*Pushed, ocispec.Descriptor, error) {
	config := bytesLayer("config", ocispec.MediaTypeEmptyJSON, ocispec.DescriptorEmptyJSON.Data)
	m := ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: artifactType,
		Subject:      subject,
		Annotations:  ann,
	}
	return c.pushManifest(ctx, m, config, layers)
}

// pushManifest uploads the config and layers the registry lacks, fills in
// m's descriptors and pushes m.
func (c *client) pushManifest(ctx context.Context, m ocispec.Manifest, config *layer, layers []*layer) (*Pushed, ocispec.Descriptor, error) {
	name := c.ref.String()
	res := &Pushed{Reference: name, MediaType: m.MediaType, ArtifactType: m.ArtifactType}
	// Before hashing and compressing the layers (seconds to minutes): the
	// registry answers, in the scheme and with the trust asked for.
	if err := c.ping(ctx); err != nil {
		return nil, ocispec.Descriptor{}, done(ctx, fmt.Errorf("%s: %w", name, err))
	}
	pr := progress.Or(c.remote.Progress)
	defer func() {
		for _, l := range layers {
			l.closeSpool()
		}
	}()
	if err := describe(ctx, append([]*layer{config}, layers...), pr); err != nil {
		return nil, ocispec.Descriptor{}, err
	}
	for _, l := range append([]*layer{config}, layers...) {
		var up bool
		var err error
		if l == config {
			up, err = c.pushBlob(ctx, l, nil)
		} else {
			up, err = c.pushBlob(ctx, l, pr)
		}
		if err != nil {
			return nil, ocispec.Descriptor{}, done(ctx, fmt.Errorf("%s: blob %s (%s): %w", name, l.name, l.desc.Digest, c.explain(err)))
		}
		if l != config {
			res.Blobs = append(res.Blobs, PushedBlob{Name: l.name, Title: l.desc.Annotations[ocispec.AnnotationTitle], MediaType: l.desc.MediaType, Digest: l.desc.Digest.String(), Size: l.desc.Size, Uploaded: up})
		}
		if up {
			res.Uploaded += l.desc.Size
		}
	}
	m.Config = ocispec.Descriptor{MediaType: config.desc.MediaType, Digest: config.desc.Digest, Size: config.desc.Size}
	for _, l := range layers {
		m.Layers = append(m.Layers, l.desc)
	}
	data, err := json.Marshal(m)
	if err != nil {
		return nil, ocispec.Descriptor{}, err
	}
	desc := ocispec.Descriptor{MediaType: m.MediaType, Digest: digest.FromBytes(data), Size: int64(len(data)), ArtifactType: m.ArtifactType}
	if m.Subject != nil {
		err = c.repo.Manifests().Push(ctx, desc, bytes.NewReader(data))
		var re *remote.ReferrersError
		if errors.As(err, &re) && re.IsReferrersIndexDelete() {
			// The new index is pushed; the registry would not delete the
			// old one, which stays, untagged.
			c.remote.log().Warn("the registry did not delete the previous referrers index", "error", err)
			err = nil
		}
	} else {
		err = c.repo.Manifests().PushReference(ctx, desc, bytes.NewReader(data), c.ref.Reference)
	}
	if err != nil {
		return nil, ocispec.Descriptor{}, done(ctx, fmt.Errorf("%s: pushing the manifest: %w", name, c.explain(err)))
	}
	res.Digest = desc.Digest.String()
	return res, desc, nil
}

// describe describes the layers not described yet, reporting the files'
// to pr.
func describe(ctx context.Context, layers []*layer, pr progress.Reporter) error {
	for _, l := range layers {
		if l.desc.Digest != "" {
			continue
		}
		if l.size == 0 { // in memory, or empty
			if err := l.describe(ctx, nil); err != nil {
				return done(ctx, classify(ErrInput, err))
			}
			continue
		}
		verb := "hashing"
		if l.compressed || l.mediaType == ocispec.MediaTypeImageLayerGzip {
			verb = "compressing and hashing"
		}
		pr.Start(fmt.Sprintf("%s %s (%s)", verb, l.name, layout.HumanSize(l.size)), l.size)
		if err := l.describe(ctx, pr.Add); err != nil {
			progress.Fail(pr)
			return done(ctx, classify(ErrInput, err))
		}
		pr.End()
	}
	return nil
}

// pushBlob uploads l unless the registry has it; it reports whether it
// uploaded, and its progress to pr when not nil.
func (c *client) pushBlob(ctx context.Context, l *layer, pr progress.Reporter) (bool, error) {
	have, err := c.repo.Blobs().Exists(ctx, l.desc)
	if err != nil {
		return false, err
	}
	title := l.desc.Annotations[ocispec.AnnotationTitle]
	log := c.remote.log().With("blob", l.name, "digest", l.desc.Digest, "size", l.desc.Size)
	if have {
		log.Info("the registry has it")
		if pr != nil {
			pr.Start(fmt.Sprintf("%s (%s): the registry has it", title, layout.HumanSize(l.desc.Size)), 0)
			pr.End()
		}
		return false, nil
	}
	var sent func(int64)
	if pr != nil {
		pr.Start(fmt.Sprintf("uploading %s (%s)", title, layout.HumanSize(l.desc.Size)), l.desc.Size)
		sent = pr.Add
	}
	rc := l.open(ctx, sent)
	defer rc.Close()
	start := time.Now()
	if err := c.repo.Blobs().Push(ctx, l.desc, rc); err != nil {
		if pr != nil {
			progress.Fail(pr)
		}
		return false, err
	}
	if pr != nil {
		pr.End()
	}
	log.Info("uploaded", "seconds", time.Since(start).Seconds())
	return true, nil
}
