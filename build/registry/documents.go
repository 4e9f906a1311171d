package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"

	"github.com/kiln-os/kiln/build/manifest"
	"github.com/kiln-os/kiln/build/provenance"
)

// Artifact types of a build's documents, each pushed as a referrer of the
// build (one layer of the same media type, titled with its file name):
// what `oras discover` lists and scanners look for.
const (
	ArtifactSPDX       = "application/spdx+json"
	ArtifactCycloneDX  = "application/vnd.cyclonedx+json"
	ArtifactProvenance = "application/vnd.in-toto+json"
)

// maxDocumentBlob bounds a document pull takes.
const maxDocumentBlob = 256 << 20

// document is one file about a build that goes up as a referrer.
type document struct {
	name, artifactType string
	data               []byte
}

// documents reads the build's documents: those manifest.json lists (each
// checked against its size and SHA-256: push publishes nothing the
// manifest does not vouch for) and the provenance envelope, when there is
// one (checked against the key when push has one).
func (b *buildDir) documents(o PushOptions) ([]document, error) {
	var docs []document
	for _, d := range b.manifest.Documents {
		data, err := os.ReadFile(filepath.Join(b.dir, d.Name))
		if err != nil {
			return nil, classify(ErrInput, err)
		}
		sum := sha256.Sum256(data)
		if int64(len(data)) != d.Size || hex.EncodeToString(sum[:]) != d.SHA256 {
			return nil, inputErrorf("%s: %d bytes, sha256 %x; %s vouches for %d bytes, sha256 %s", filepath.Join(b.dir, d.Name), len(data), sum, ManifestFile, d.Size, d.SHA256)
		}
		at := d.MediaType
		if at != ArtifactSPDX && at != ArtifactCycloneDX {
			return nil, inputErrorf("%s: document %s of media type %q, not an SBOM kiln pushes", ManifestFile, d.Name, d.MediaType)
		}
		docs = append(docs, document{name: d.Name, artifactType: at, data: data})
	}
	env, err := os.ReadFile(filepath.Join(b.dir, provenance.File))
	if errors.Is(err, fs.ErrNotExist) {
		return docs, nil
	}
	if err != nil {
		return nil, classify(ErrInput, err)
	}
	if o.Verifier != nil {
		if err := checkProvenance(env, b.raw, o); err != nil {
			return nil, inputErrorf("%s: %w", filepath.Join(b.dir, provenance.File), err)
		}
	}
	return append(docs, document{name: provenance.File, artifactType: ArtifactProvenance, data: env}), nil
}

// checkProvenance checks that env verifies with the key and is about the
// manifest.json whose bytes are raw.
func checkProvenance(env, raw []byte, o PushOptions) error {
	_, err := provenance.VerifyAbout(env, o.Verifier, ManifestFile, raw)
	return err
}

// pushDocuments attaches the documents to the build (subject) as
// referrers.
func (c *client) pushDocuments(ctx context.Context, docs []document, subject ocispec.Descriptor, created string, res *Pushed) error {
	for _, d := range docs {
		l := bytesLayer(d.name, d.artifactType, d.data)
		dres, _, err := c.pushArtifact(ctx, d.artifactType, []*layer{l}, map[string]string{ocispec.AnnotationCreated: created}, &subject)
		if err != nil {
			return fmt.Errorf("%s: attaching %s: %w", res.Reference, d.name, err)
		}
		res.Blobs = append(res.Blobs, dres.Blobs...)
		res.Uploaded += dres.Uploaded
	}
	return nil
}

// documents fetches the build's documents from its referrers into the
// stage, once manifest.json is there: the SBOMs it lists (checked against
// their SHA-256; a missing one is an error), and a provenance envelope
// when there is one (checked against the key when pull has one).
func (p *puller) documents(ctx context.Context, subject ocispec.Descriptor) error {
	raw, err := os.ReadFile(p.st.file(ManifestFile))
	if err != nil {
		return err
	}
	m, err := manifest.Parse(bytes.NewReader(raw))
	if err != nil {
		return verifyErrorf("%s: %w", ManifestFile, err)
	}
	for _, d := range m.Documents {
		data, dg, err := p.fetchDocument(ctx, subject, d.MediaType, d.Name)
		if err != nil {
			return err
		}
		if data == nil {
			return verifyErrorf("%s: %s lists %s, which no referrer of type %s holds", p.name, ManifestFile, d.Name, d.MediaType)
		}
		sum := sha256.Sum256(data)
		if int64(len(data)) != d.Size || hex.EncodeToString(sum[:]) != d.SHA256 {
			return verifyErrorf("%s: %s: %d bytes, sha256 %x; %s says %d bytes, sha256 %s", p.name, d.Name, len(data), sum, ManifestFile, d.Size, d.SHA256)
		}
		if err := p.stageDocument(d.Name, data, dg); err != nil {
			return err
		}
	}
	env, dg, err := p.fetchDocument(ctx, subject, ArtifactProvenance, provenance.File)
	if err != nil || env == nil {
		return err
	}
	if p.o.Verifier != nil {
		if err := checkProvenance(env, raw, PushOptions{Verifier: p.o.Verifier}); err != nil {
			return verifyErrorf("%s: %s: %w", p.name, provenance.File, err)
		}
	}
	return p.stageDocument(provenance.File, env, dg)
}

func (p *puller) stageDocument(name string, data []byte, dg string) error {
	if err := os.WriteFile(p.st.file(name), data, 0o644); err != nil {
		return err
	}
	p.res.Files = append(p.res.Files, PulledFile{Name: name, Digest: dg, Size: int64(len(data))})
	return nil
}

// fetchDocument returns the bytes of the first referrer of the given
// artifact type whose one layer is titled name (nil when there is none),
// and the layer's digest.
func (p *puller) fetchDocument(ctx context.Context, subject ocispec.Descriptor, artifactType, name string) ([]byte, string, error) {
	var refs []ocispec.Descriptor
	err := p.c.repo.Referrers(ctx, subject, artifactType, func(rs []ocispec.Descriptor) error {
		refs = append(refs, rs...)
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("%s: listing the %s referrers: %w", p.name, artifactType, p.c.explain(err))
	}
	for _, rd := range refs {
		_, m, err := p.c.fetchManifest(ctx, rd.Digest.String())
		if err != nil {
			return nil, "", err
		}
		if len(m.Layers) != 1 || m.Layers[0].Annotations[ocispec.AnnotationTitle] != name {
			continue
		}
		l := m.Layers[0]
		if l.MediaType != artifactType || l.Size > maxDocumentBlob {
			return nil, "", verifyErrorf("%s: referrer %s: a %s layer of %d bytes (want %s, at most %d)", p.name, rd.Digest, l.MediaType, l.Size, artifactType, maxDocumentBlob)
		}
		rc, err := p.c.repo.Blobs().Fetch(ctx, l)
		if err != nil {
			return nil, "", p.c.explain(err)
		}
		data, err := content.ReadAll(rc, l)
		rc.Close()
		if err != nil {
			return nil, "", verifyErrorf("%s: %s: %w", p.name, name, err)
		}
		return data, l.Digest.String(), nil
	}
	return nil, "", nil
}
