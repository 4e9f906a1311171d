package sbom

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	cdx "github.com/CycloneDX/cyclonedx-go"
	spdxjson "github.com/spdx/tools-golang/json"
	"github.com/spdx/tools-golang/spdx/v2/common"
	spdx "github.com/spdx/tools-golang/spdx/v2/v2_3"
)

// File names of the SBOMs in a build's output directory.
const (
	SPDXFile      = "sbom.spdx.json"
	CycloneDXFile = "sbom.cdx.json"
)

// Subject is the image an SBOM describes.
type Subject struct {
	Name    string // the recipe's name
	Version string // the release version
	// Partition is the partition whose tree the SBOM lists ("USR-A").
	Partition string
	// VerityRoot is the partition's dm-verity root hash (hex), when it
	// has one: what the release record signs and the kernel enforces.
	VerityRoot string
	// Digest is the partition's digest (hex) in the manifest's chunked
	// SHA-256 (see manifest.DigestAlgorithm), which names no standard
	// checksum and is written as a property, not a checksum.
	Digest string
	// Time is the build's SOURCE_DATE_EPOCH.
	Time time.Time
	// Tool is the kiln version that wrote it.
	Tool string
}

// FileEntry is one regular file of a tree with no package database.
type FileEntry struct {
	Path   string // absolute
	SHA1   string // hex
	SHA256 string // hex
}

// Contents is what an SBOM lists: the packages, or, for a tree with no
// package database, its files.
type Contents struct {
	Distro   Distro
	Packages []*Package
	Files    []FileEntry
}

// id returns a stable identifier of the subject: what the document
// namespace and serial number derive from.
func (s Subject) id() string {
	h := sha256.Sum256([]byte(strings.Join([]string{s.Name, s.Version, s.Partition, s.VerityRoot, s.Digest}, "\x00")))
	return hex.EncodeToString(h[:])
}

// sorted returns the packages ordered by name, architecture, version.
func sorted(pkgs []*Package) []*Package {
	out := append([]*Package(nil), pkgs...)
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		if a.Arch != b.Arch {
			return a.Arch < b.Arch
		}
		return a.Version < b.Version
	})
	return out
}

// spdxID makes an SPDX element id ("Package-deb-libc6-amd64") from
// parts: letters, digits, '.' and '-' only.
func spdxID(parts ...string) common.ElementID {
	var b strings.Builder
	for i, p := range parts {
		if i > 0 {
			b.WriteByte('-')
		}
		for _, c := range p {
			if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' {
				b.WriteRune(c)
			} else {
				fmt.Fprintf(&b, ".%X.", c)
			}
		}
	}
	return common.ElementID(b.String())
}

// supplier turns a Maintainer field ("Name <mail>") into an SPDX
// supplier: an Organization, the mail in parentheses.
func supplier(m string) *common.Supplier {
	if m == "" {
		return nil
	}
	name, mail, _ := strings.Cut(m, "<")
	name = strings.TrimSpace(name)
	mail = strings.TrimSuffix(strings.TrimSpace(mail), ">")
	if name == "" {
		name = mail
	}
	s := name
	if mail != "" {
		s += " (" + mail + ")"
	}
	return &common.Supplier{SupplierType: "Organization", Supplier: s}
}

// WriteSPDX writes c as an SPDX 2.3 JSON document describing s. The
// output is a function of its inputs: the namespace derives from the
// subject, the creation time is s.Time, packages are sorted.
func WriteSPDX(w io.Writer, s Subject, c Contents) error {
	doc := &spdx.Document{
		SPDXVersion:       spdx.Version,
		DataLicense:       spdx.DataLicense,
		SPDXIdentifier:    "DOCUMENT",
		DocumentName:      s.Name + "-" + s.Version,
		DocumentNamespace: "https://github.com/kiln-os/kiln/spdx/" + s.Name + "-" + s.Version + "-" + s.id(),
		CreationInfo: &spdx.CreationInfo{
			Creators: []common.Creator{{CreatorType: "Tool", Creator: "kiln-" + s.Tool}},
			Created:  s.Time.UTC().Format(time.RFC3339),
		},
	}
	img := &spdx.Package{
		PackageName:             s.Name,
		PackageSPDXIdentifier:   "Image",
		PackageVersion:          s.Version,
		PackageDownloadLocation: "NOASSERTION",
		PackageLicenseConcluded: "NOASSERTION",
		PackageLicenseDeclared:  "NOASSERTION",
		PackageCopyrightText:    "NOASSERTION",
		PrimaryPackagePurpose:   "OPERATING_SYSTEM",
		PackageComment:          imageComment(s, c.Distro),
	}
	doc.Packages = append(doc.Packages, img)
	doc.Relationships = append(doc.Relationships, &spdx.Relationship{
		RefA: common.MakeDocElementID("", "DOCUMENT"), RefB: common.MakeDocElementID("", "Image"), Relationship: common.TypeRelationshipDescribe})
	for _, p := range sorted(c.Packages) {
		id := spdxID("Package", p.Type, p.Name, p.Arch)
		sp := &spdx.Package{
			PackageName:             p.Name,
			PackageSPDXIdentifier:   id,
			PackageVersion:          p.Version,
			PackageSupplier:         supplier(p.Maintainer),
			PackageDownloadLocation: "NOASSERTION",
			PackageLicenseConcluded: "NOASSERTION",
			PackageLicenseDeclared:  "NOASSERTION",
			PackageCopyrightText:    "NOASSERTION",
			PackageSourceInfo:       fmt.Sprintf("built package from: %s %s", p.Source, p.SourceVersion),
			PackageExternalReferences: []*spdx.PackageExternalReference{
				{Category: "PACKAGE-MANAGER", RefType: "purl", Locator: p.PURL(c.Distro)},
			},
		}
		if len(p.Licenses) > 0 {
			// Debian's names (GPL-2+) are not SPDX identifiers: they
			// are told, not declared.
			sp.PackageLicenseComments = "copyright file (DEP-5) License fields: " + strings.Join(p.Licenses, ", ")
		}
		doc.Packages = append(doc.Packages, sp)
		doc.Relationships = append(doc.Relationships, &spdx.Relationship{
			RefA: common.MakeDocElementID("", "Image"), RefB: common.MakeDocElementID("", string(id)), Relationship: common.TypeRelationshipContains})
	}
	for i, f := range c.Files {
		id := spdxID("File", fmt.Sprint(i+1))
		doc.Files = append(doc.Files, &spdx.File{
			FileName:           "." + f.Path,
			FileSPDXIdentifier: id,
			Checksums: []common.Checksum{
				{Algorithm: common.SHA1, Value: f.SHA1},
				{Algorithm: common.SHA256, Value: f.SHA256},
			},
			LicenseConcluded:  "NOASSERTION",
			FileCopyrightText: "NOASSERTION",
		})
		doc.Relationships = append(doc.Relationships, &spdx.Relationship{
			RefA: common.MakeDocElementID("", "Image"), RefB: common.MakeDocElementID("", string(id)), Relationship: common.TypeRelationshipContains})
	}
	if err := spdxjson.Write(doc, w, spdxjson.Indent("  "), spdxjson.EscapeHTML(false)); err != nil {
		return fmt.Errorf("sbom: writing SPDX: %w", err)
	}
	return nil
}

// imageComment says what identifies the image, in words.
func imageComment(s Subject, d Distro) string {
	var parts []string
	if d.Name != "" {
		parts = append(parts, "from "+d.Name)
	}
	parts = append(parts, "the tree of partition "+s.Partition)
	if s.VerityRoot != "" {
		parts = append(parts, "dm-verity root hash "+s.VerityRoot)
	}
	if s.Digest != "" {
		parts = append(parts, "kiln chunked SHA-256 digest "+s.Digest)
	}
	return strings.Join(parts, "; ")
}

// WriteCycloneDX writes c as a CycloneDX 1.6 JSON BOM describing s, as
// deterministic as WriteSPDX: the serial number derives from the subject.
func WriteCycloneDX(w io.Writer, s Subject, c Contents) error {
	bom := cdx.NewBOM()
	id := s.id()
	bom.SerialNumber = fmt.Sprintf("urn:uuid:%s-%s-5%s-8%s-%s", id[0:8], id[8:12], id[13:16], id[17:20], id[20:32])
	props := []cdx.Property{{Name: "kiln:partition", Value: s.Partition}}
	if s.VerityRoot != "" {
		props = append(props, cdx.Property{Name: "kiln:verity-root-hash", Value: s.VerityRoot})
	}
	if s.Digest != "" {
		props = append(props, cdx.Property{Name: "kiln:chunked-sha256", Value: s.Digest})
	}
	if c.Distro.ID != "" {
		props = append(props, cdx.Property{Name: "kiln:distro", Value: c.Distro.String()})
	}
	bom.Metadata = &cdx.Metadata{
		Timestamp: s.Time.UTC().Format(time.RFC3339),
		Tools:     &cdx.ToolsChoice{Components: &[]cdx.Component{{Type: cdx.ComponentTypeApplication, Name: "kiln", Version: s.Tool}}},
		Component: &cdx.Component{
			BOMRef: "image", Type: cdx.ComponentTypeOS, Name: s.Name, Version: s.Version,
			Properties: &props,
		},
	}
	var comps []cdx.Component
	var deps []string
	for _, p := range sorted(c.Packages) {
		purl := p.PURL(c.Distro)
		comp := cdx.Component{BOMRef: purl, Type: cdx.ComponentTypeLibrary, Name: p.Name, Version: p.Version, PackageURL: purl}
		if p.Maintainer != "" {
			comp.Supplier = &cdx.OrganizationalEntity{Name: p.Maintainer}
		}
		if len(p.Licenses) > 0 {
			var ls cdx.Licenses
			for _, l := range p.Licenses {
				ls = append(ls, cdx.LicenseChoice{License: &cdx.License{Name: l}})
			}
			comp.Licenses = &ls
		}
		if p.Source != p.Name || p.SourceVersion != p.Version {
			comp.Properties = &[]cdx.Property{{Name: "kiln:source-package", Value: p.Source + " " + p.SourceVersion}}
		}
		comps = append(comps, comp)
		deps = append(deps, purl)
	}
	for i, f := range c.Files {
		ref := fmt.Sprintf("file-%d", i+1)
		comps = append(comps, cdx.Component{BOMRef: ref, Type: cdx.ComponentTypeFile, Name: f.Path,
			Hashes: &[]cdx.Hash{{Algorithm: cdx.HashAlgoSHA1, Value: f.SHA1}, {Algorithm: cdx.HashAlgoSHA256, Value: f.SHA256}}})
		deps = append(deps, ref)
	}
	if comps != nil {
		bom.Components = &comps
		bom.Dependencies = &[]cdx.Dependency{{Ref: "image", Dependencies: &deps}}
	}
	enc := cdx.NewBOMEncoder(w, cdx.BOMFileFormatJSON).SetPretty(true).SetEscapeHTML(false)
	if err := enc.EncodeVersion(bom, cdx.SpecVersion1_6); err != nil {
		return fmt.Errorf("sbom: writing CycloneDX: %w", err)
	}
	return nil
}
