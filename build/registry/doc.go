// Package registry publishes kiln builds and update payloads to OCI
// registries as artifacts, and fetches them back, verified.
//
// A build (an output directory of `kiln build`) becomes one OCI 1.1 image
// manifest whose artifactType is ArtifactBuild: an empty config and one
// layer per file — the disk image in each chosen format, usr.img, the
// block map and manifest.json — each titled (org.opencontainers.image.title)
// with what the blob is, the name a generic OCI client writes it under
// (disk.img.zst for the compressed disk.img, whose vnd.kiln.file names the
// file pull restores), and annotated with the build's name, version,
// channel and layout. Push publishes only disk images and usr.img that the
// build's manifest.json vouches for, byte for byte. The signature,
// manifest.json.sig, is a second artifact (ArtifactSignature) whose
// subject is the first: a referrer, listed by the registry's referrers API
// or, on registries without it, through the fallback tag sha256-<digest>
// that the pusher keeps up to date. A payload is one manifest (ArtifactPayload) with one
// layer. A KubeVirt containerDisk is an ordinary image instead: one tar
// layer holding the disk at /disk/, owned by uid 107.
//
// Images (disk.img, usr.img, a fixed VHD) are mostly holes or zeros. They
// are compressed with zstd by default (media type + "+zstd"; every disk
// format but the compressed streams raw.zst and raw.xz): pushing them
// whole would upload every zero. Either way their holes are never read
// from the disk, only the data extents are; and the annotations
// vnd.kiln.uncompressed.digest and .size let a pull check the
// decompressed bytes too.
//
// Push hashes every blob first, then uploads only those the registry does
// not hold, streaming from the files (memory stays bounded whatever the
// size): pushing an unchanged build again uploads nothing. The same build
// gives the same manifest digest wherever it is pushed from.
//
// Pull writes into a staging directory inside the output directory and
// moves the files into place only when every blob's digest (and
// decompressed digest) matched and, given a key, the signature verified
// and the disk images matched the signed manifest byte for byte. A
// connection that drops in the middle of a blob is resumed with a range
// request; if it cannot be, the pull fails and leaves nothing behind.
package registry
