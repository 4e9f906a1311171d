package registry

import (
	"fmt"
	"slices"
	"strings"
)

// Artifact types: the artifactType of the OCI manifests kiln pushes.
const (
	ArtifactBuild     = "application/vnd.kiln.build.v1"
	ArtifactPayload   = "application/vnd.kiln.payload.v1"
	ArtifactSignature = "application/vnd.kiln.signature.v1"
)

// Layer media types.
const (
	MediaTypeManifest  = "application/vnd.kiln.manifest.v1+json"    // manifest.json
	MediaTypeSignature = "application/vnd.kiln.signature.v1+base64" // manifest.json.sig
	MediaTypeBlockMap  = "application/vnd.kiln.blockmap.v1+json"    // usr.blockmap.json
	MediaTypePartition = "application/vnd.kiln.partition.raw"       // usr.img
	MediaTypePayload   = "application/vnd.kiln.payload"             // a CrAU update payload
	// MediaTypeDisk prefixes a disk image's media type; the format's name
	// follows: application/vnd.kiln.disk.raw, ….qcow2.
	MediaTypeDisk = "application/vnd.kiln.disk."
	// ZstdSuffix ends the media type of a blob compressed with zstd.
	ZstdSuffix = "+zstd"
	// ZstdExt ends the title of a blob compressed with zstd: the name a
	// generic OCI client (oras pull) writes it under, which `zstd -d`
	// turns into the file.
	ZstdExt = ".zst"
)

// Annotations kiln sets, beside the standard org.opencontainers.image.*
// ones (title, version, created).
const (
	AnnotationName        = "vnd.kiln.name"
	AnnotationChannel     = "vnd.kiln.channel"
	AnnotationLayout      = "vnd.kiln.layout"
	AnnotationKilnVersion = "vnd.kiln.kiln-version"
	// AnnotationUncompressedDigest and AnnotationUncompressedSize describe
	// a compressed layer's content once decompressed.
	AnnotationUncompressedDigest = "vnd.kiln.uncompressed.digest"
	AnnotationUncompressedSize   = "vnd.kiln.uncompressed.size"
	// AnnotationFile is, on a layer whose title is not the file it
	// restores (a compressed one: title disk.img.zst), the file's name:
	// the name kiln pull writes it under, decompressed.
	AnnotationFile = "vnd.kiln.file"
	// AnnotationPayloadKind is "full" or "delta"; AnnotationPayloadFrom a
	// delta's source version.
	AnnotationPayloadKind = "vnd.kiln.payload.kind"
	AnnotationPayloadFrom = "vnd.kiln.payload.from-version"
	// AnnotationSigned is, on a signature artifact, the digest of the
	// manifest.json blob the signature covers.
	AnnotationSigned = "vnd.kiln.signed"
)

// DiskFormat is a disk image format a build directory may hold.
type DiskFormat struct {
	Name string // "raw", "qcow2", …: the media type's last part
	File string // its file name in a build directory
	// Compressed says the file is compressed already (raw.zst, raw.xz,
	// gce, ova), which push sends as it is; every other image is
	// compressed with zstd for transport (unless Compression is None).
	Compressed bool
}

// DiskFormats are the disk image formats push knows, raw first: the
// names and files of `kiln convert` (build/diskimage). The "+zstd" suffix
// of a media type means a compression for transport, undone by pull; a
// converted image that is a compressed stream itself (raw.zst, raw.xz) is
// pushed as the file it is.
var DiskFormats = []DiskFormat{
	{"raw", "disk.img", false},
	{"qcow2", "disk.qcow2", false},
	{"qcow2-zstd", "disk-zstd.qcow2", false},
	{"vmdk", "disk.vmdk", false},
	{"vmdk-sparse", "disk-sparse.vmdk", false},
	{"vhd", "disk.vhd", false},
	{"vhd-dynamic", "disk-dynamic.vhd", false},
	{"vhdx", "disk.vhdx", false},
	{"raw.zst", "disk.img.zst", true},
	{"raw.xz", "disk.img.xz", true},
	// GCE's archive is a gzip stream; an OVA holds a streamOptimized
	// VMDK, whose grains are deflate-compressed: both go up as they are.
	{"gce", "disk.tar.gz", true},
	{"ova", "disk.ova", true},
}

// diskFormat returns the format with the given name.
func diskFormat(name string) (DiskFormat, bool) {
	i := slices.IndexFunc(DiskFormats, func(f DiskFormat) bool { return f.Name == name })
	if i < 0 {
		return DiskFormat{}, false
	}
	return DiskFormats[i], true
}

// diskFormatOf returns the name of the format whose file is name, or "".
func diskFormatOf(name string) string {
	for _, f := range DiskFormats {
		if f.File == name {
			return f.Name
		}
	}
	return ""
}

// DiskFormatNames lists the names of DiskFormats.
func DiskFormatNames() []string {
	var n []string
	for _, f := range DiskFormats {
		n = append(n, f.Name)
	}
	return n
}

// knownLayer says whether a pull writes a layer of this media type.
func knownLayer(mediaType string) bool {
	base := strings.TrimSuffix(mediaType, ZstdSuffix)
	switch base {
	case MediaTypeManifest, MediaTypeBlockMap, MediaTypePartition, MediaTypePayload:
		return true
	}
	if f, ok := strings.CutPrefix(base, MediaTypeDisk); ok {
		_, known := diskFormat(f)
		return known
	}
	return false
}

// Compression is how push stores the images (disk.img and every
// converted image but raw.zst and raw.xz, usr.img).
type Compression uint8

// Compressions.
const (
	Zstd Compression = iota // zstd, media type + "+zstd", title + ".zst" (the default)
	None                    // the bytes as they are
)

var compressionNames = [...]string{Zstd: "zstd", None: "none"}

func (c Compression) String() string {
	if int(c) < len(compressionNames) {
		return compressionNames[c]
	}
	return fmt.Sprintf("compression(%d)", uint8(c))
}

// ParseCompression parses "zstd" or "none".
func ParseCompression(s string) (Compression, error) {
	for c, n := range compressionNames {
		if n == s {
			return Compression(c), nil
		}
	}
	return 0, inputErrorf("unknown compression %q (want zstd or none)", s)
}
