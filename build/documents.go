package build

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kiln-os/kiln/build/manifest"
	"github.com/kiln-os/kiln/build/provenance"
	"github.com/kiln-os/kiln/build/sbom"
	"github.com/kiln-os/kiln/build/tree"
)

// Media types of the documents a build writes.
const (
	MediaTypeSPDX       = "application/spdx+json"
	MediaTypeCycloneDX  = "application/vnd.cyclonedx+json"
	MediaTypeProvenance = "application/vnd.in-toto+json"
)

// sourceTree is a partition's source as the recipe names it, before its
// subdir narrowed it: what the SBOM reads the package databases from.
type sourceTree struct {
	tree   *tree.Tree
	subdir string
}

// sbomPartition returns the partition the SBOM describes: the verified
// USR (usrSpec), else USR-A, else none.
func (b *builder) sbomPartition() *PartitionSpec {
	if p := usrSpec(b.r); p != nil {
		return p
	}
	for _, p := range b.r.Partitions {
		if p.Label == "USR-A" {
			return p
		}
	}
	return nil
}

// writeSBOMs writes sbom.spdx.json and sbom.cdx.json of the USR
// partition's tree into the stage (stage "sbom") and lists them in m
// (format 4). The packages come from the source's databases (see
// sbom.Scan); a build with no USR partition gets SBOMs of an image with
// nothing in it.
func (b *builder) writeSBOMs(stage string, trees map[string]*tree.Tree, sources map[string]sourceTree, m *manifest.Manifest) ([]string, error) {
	b.start("sbom", 0)
	subject := sbom.Subject{Name: b.r.Name, Version: b.r.Version, Time: b.opts.SourceDateEpoch, Tool: b.opts.KilnVersion}
	var contents sbom.Contents
	if p := b.sbomPartition(); p != nil {
		subject.Partition = p.Label
		if mp := m.Partition(p.Label); mp != nil {
			subject.Digest = mp.Digest
			if mp.Verity != nil {
				subject.VerityRoot = mp.Verity.RootHash
			}
		}
		image := trees[p.Label]
		src, ok := sources[p.Label]
		if !ok {
			src = sourceTree{tree: image}
		}
		var err error
		if contents, err = sbom.Scan(src.tree, src.subdir, image); err != nil {
			return nil, fmt.Errorf("sbom of %s: %w", p.Label, err)
		}
	}
	var names []string
	for _, d := range []struct {
		name, mediaType string
		write           func(*bytes.Buffer) error
	}{
		{sbom.SPDXFile, MediaTypeSPDX, func(w *bytes.Buffer) error { return sbom.WriteSPDX(w, subject, contents) }},
		{sbom.CycloneDXFile, MediaTypeCycloneDX, func(w *bytes.Buffer) error { return sbom.WriteCycloneDX(w, subject, contents) }},
	} {
		var buf bytes.Buffer
		if err := d.write(&buf); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(stage, d.name), buf.Bytes(), 0o644); err != nil {
			return nil, err
		}
		sum := sha256.Sum256(buf.Bytes())
		m.Documents = append(m.Documents, manifest.Document{Name: d.name, MediaType: d.mediaType, Size: int64(buf.Len()), SHA256: hex.EncodeToString(sum[:])})
		names = append(names, d.name)
	}
	m.Format = manifest.DocumentsFormatVersion
	b.log.Info("sbom written", "partition", subject.Partition, "packages", len(contents.Packages), "files", len(contents.Files))
	return names, nil
}

// writeProvenance writes provenance.intoto.json into the stage (stage
// "provenance"): a SLSA provenance statement about manifest.json, which
// names every byte of the image and its documents by digest, signed by
// the build's key. It cannot be listed in manifest.json, which it is
// about; it is a signed envelope of its own.
func (b *builder) writeProvenance(stage string, m *manifest.Manifest) ([]string, error) {
	if b.opts.Signer == nil {
		return nil, nil
	}
	b.start("provenance", 0)
	data, err := os.ReadFile(filepath.Join(stage, ManifestFile))
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	st := &provenance.Statement{
		Type:          provenance.StatementType,
		Subject:       []provenance.ResourceDescriptor{{Name: ManifestFile, Digest: map[string]string{"sha256": hex.EncodeToString(sum[:])}}},
		PredicateType: provenance.PredicateType,
		Predicate: provenance.Provenance{
			BuildDefinition: provenance.BuildDefinition{
				BuildType:            provenance.BuildType,
				ExternalParameters:   provenance.ExternalParameters{Recipe: filepath.Base(b.r.Path), Set: b.r.Sets},
				InternalParameters:   provenance.InternalParameters{SourceDateEpoch: b.opts.SourceDateEpoch.Unix()},
				ResolvedDependencies: b.dependencies(m),
			},
			RunDetails: provenance.RunDetails{Builder: provenance.Builder{ID: provenance.BuilderID, Version: map[string]string{"kiln": b.opts.KilnVersion}}},
		},
	}
	env, err := provenance.Sign(st, b.opts.Signer)
	if err != nil {
		return nil, fmt.Errorf("signing the provenance: %w", err)
	}
	if err := os.WriteFile(filepath.Join(stage, provenance.File), env, 0o644); err != nil {
		return nil, err
	}
	return []string{provenance.File}, nil
}

// dependencies lists what the build read: the recipe (by SHA-256) and
// every source (an image by its manifest digest and layers).
func (b *builder) dependencies(m *manifest.Manifest) []provenance.ResourceDescriptor {
	deps := []provenance.ResourceDescriptor{{Name: filepath.Base(b.r.Path), Digest: map[string]string{"sha256": b.r.Digest}}}
	for _, s := range m.Sources {
		d := provenance.ResourceDescriptor{Name: s.Partition, URI: s.Ref}
		if alg, hexd, ok := strings.Cut(s.Digest, ":"); ok && alg != "" && hexd != "" {
			d.Digest = map[string]string{alg: hexd}
		}
		deps = append(deps, d)
		for _, l := range s.Layers {
			if alg, hexd, ok := strings.Cut(l, ":"); ok && alg != "" && hexd != "" {
				deps = append(deps, provenance.ResourceDescriptor{Name: s.Partition + " layer", Digest: map[string]string{alg: hexd}})
			}
		}
	}
	return deps
}
