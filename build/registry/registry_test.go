package registry

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// sparseFile writes a file of size bytes with data at the given offsets
// (random runs of n bytes) and holes elsewhere, and returns its bytes.
func sparseFile(t *testing.T, path string, size int64, runs map[int64]int) []byte {
	t.Helper()
	want := make([]byte, size)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for off, n := range runs {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.IntN(255) + 1)
		}
		copy(want[off:], b)
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	return want
}

func TestSparseReaderReadsHolesAsZeros(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk")
	size := int64(64 << 20)
	want := sparseFile(t, path, size, map[int64]int{0: 5000, 8 << 20: 1 << 20, 30<<20 + 17: 333, size - 4096: 4096})
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Odd read sizes cross extent boundaries.
	var got bytes.Buffer
	buf := make([]byte, 100003)
	r := &sparseReader{f: f, size: size}
	for {
		n, err := r.Read(buf)
		got.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("sparse reader: %d bytes, differ from the file's %d", got.Len(), len(want))
	}
	// A file shorter than the size given fails rather than inventing bytes.
	r = &sparseReader{f: f, size: size + 10}
	if _, err := io.Copy(io.Discard, r); err == nil {
		t.Fatal("reading past the end of the file: no error")
	}
}

func TestSparseWriterLeavesHoles(t *testing.T) {
	dir := t.TempDir()
	size := int64(32 << 20)
	want := sparseFile(t, filepath.Join(dir, "src"), size, map[int64]int{100: 10, 4 << 20: 70000, 20<<20 + 4095: 2})
	f, err := os.Create(filepath.Join(dir, "dst"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := &sparseWriter{f: f}
	// Writes of random, unaligned sizes.
	rng := rand.New(rand.NewPCG(3, 4))
	for rest := want; len(rest) > 0; {
		n := min(len(rest), rng.IntN(300000)+1)
		if m, err := w.Write(rest[:n]); err != nil || m != n {
			t.Fatalf("write %d: %d, %v", n, m, err)
		}
		rest = rest[n:]
	}
	if err := w.finish(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the written file differs")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(f.Name(), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > 1<<20 {
		t.Errorf("%d bytes allocated for %d bytes with under 80 KiB of data", st.Blocks*512, size)
	}
}

func TestFileLayerIsDeterministic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "disk.img")
	want := sparseFile(t, path, 16<<20, map[int64]int{0: 4096, 5 << 20: 300000})
	ctx := context.Background()
	for _, compress := range []bool{false, true} {
		a, err := fileLayer("disk.img", path, MediaTypeDisk+"raw", compress)
		if err != nil {
			t.Fatal(err)
		}
		b, err := fileLayer("disk.img", path, MediaTypeDisk+"raw", compress)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.describe(ctx, nil); err != nil {
			t.Fatal(err)
		}
		if err := b.describe(ctx, nil); err != nil {
			t.Fatal(err)
		}
		if a.desc.Digest != b.desc.Digest || a.desc.Size != b.desc.Size {
			t.Fatalf("compress %v: %s then %s", compress, a.desc.Digest, b.desc.Digest)
		}
		if a.diff != digest.FromBytes(want) {
			t.Errorf("compress %v: uncompressed digest %s, the file's %s", compress, a.diff, digest.FromBytes(want))
		}
		if compress == (a.desc.Size == int64(len(want))) || strings.HasSuffix(a.desc.MediaType, ZstdSuffix) != compress {
			t.Errorf("compress %v: %d bytes, media type %s", compress, a.desc.Size, a.desc.MediaType)
		}
		// The upload stream is the described blob.
		rc := a.open(ctx, nil)
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || digest.FromBytes(got) != a.desc.Digest {
			t.Fatalf("compress %v: upload stream %s (%v), described %s", compress, digest.FromBytes(got), err, a.desc.Digest)
		}
	}
}

// TestUploadFailsWhenTheFileChanged: a file read again for its upload
// (an uncompressed layer) fails the upload when it changed since it was
// hashed; a compressed layer is uploaded from the blob describe spooled,
// the bytes hashed, into an unlinked file that leaves nothing behind.
func TestUploadFailsWhenTheFileChanged(t *testing.T) {
	for _, compress := range []bool{false, true} {
		dir := t.TempDir()
		path := filepath.Join(dir, "usr.img")
		sparseFile(t, path, 1<<20, map[int64]int{0: 1000})
		l, err := fileLayer("usr.img", path, MediaTypePartition, compress)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.describe(context.Background(), nil); err != nil {
			t.Fatal(err)
		}
		if es, _ := os.ReadDir(dir); len(es) != 1 {
			t.Errorf("compress %v: %d files in the directory after describe", compress, len(es))
		}
		f, _ := os.OpenFile(path, os.O_RDWR, 0)
		f.WriteAt([]byte("changed"), 500000)
		f.Close()
		rc := l.open(context.Background(), nil)
		got, err := io.ReadAll(rc)
		rc.Close()
		if !compress && (err == nil || !strings.Contains(err.Error(), "changed while it was pushed")) {
			t.Fatalf("upload of a changed file: %v", err)
		}
		if compress && (err != nil || digest.FromBytes(got) != l.desc.Digest) {
			t.Fatalf("upload of a spooled blob: %s (%v), described %s", digest.FromBytes(got), err, l.desc.Digest)
		}
		l.closeSpool()
	}
}

func TestLayerNamesRefuseUnsafeNames(t *testing.T) {
	layer := func(title, mediaType string) ocispec.Descriptor {
		return ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromString(title), Annotations: map[string]string{ocispec.AnnotationTitle: title}}
	}
	ok := layer("disk.img", MediaTypeDisk+"raw"+ZstdSuffix)
	for name, layers := range map[string][]ocispec.Descriptor{
		"dot dot":        {layer("..", MediaTypeManifest)},
		"slash":          {layer("a/manifest.json", MediaTypeManifest)},
		"absolute":       {layer("/etc/passwd", MediaTypeManifest)},
		"empty":          {layer("", MediaTypeManifest)},
		"stage":          {layer(stagePrefix+"x", MediaTypeManifest)},
		"signature":      {layer(SignatureFile, MediaTypeManifest)},
		"duplicate":      {ok, ok},
		"unknown type":   {layer("x", "application/octet-stream")},
		"unknown format": {layer("disk.floppy", MediaTypeDisk+"floppy")},
		"none":           {},
	} {
		if _, err := layerNames(&ocispec.Manifest{Layers: layers}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	names, err := layerNames(&ocispec.Manifest{Layers: []ocispec.Descriptor{ok, layer("manifest.json", MediaTypeManifest)}})
	if err != nil || strings.Join(names, " ") != "disk.img manifest.json" {
		t.Errorf("a good manifest: %v %v", names, err)
	}
}

func TestCompressionNames(t *testing.T) {
	for c := range Compression(len(compressionNames)) {
		got, err := ParseCompression(c.String())
		if err != nil || got != c {
			t.Errorf("%d: %q parses as %v, %v", c, c.String(), got, err)
		}
	}
	if _, err := ParseCompression("gzip"); err == nil {
		t.Error("gzip accepted")
	}
}

func TestParseReferenceNeedsAHost(t *testing.T) {
	for ref, ok := range map[string]bool{
		"registry.example.com/kiln/os:1.0": true, "127.0.0.1:5000/os:1": true, "localhost/os@sha256:" + strings.Repeat("a", 64): true,
		"kiln/os:1.0": false, "os:1.0": false, "": false, "Registry.example.com/UPPER:1": false,
	} {
		if _, err := ParseReference(ref); (err == nil) != ok {
			t.Errorf("%q: %v", ref, err)
		}
	}
}

// TestTitles: a compressed layer is titled FILE.zst and names its file
// in vnd.kiln.file; when FILE.zst is another layer's file (disk.img
// beside the raw.zst image disk.img.zst) it is titled FILE.kiln.zst, so
// that no two layers share a title.
func TestTitles(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"disk.img", "disk.img.zst", "disk.vhd"} {
		os.WriteFile(filepath.Join(dir, n), []byte(n), 0o644)
	}
	var layers []*layer
	for _, x := range []struct {
		name     string
		compress bool
	}{{"disk.img", true}, {"disk.img.zst", false}, {"disk.vhd", true}} {
		l, err := fileLayer(x.name, filepath.Join(dir, x.name), MediaTypeDisk+diskFormatOf(x.name), x.compress)
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, l)
	}
	uniqueTitles(layers)
	want := []struct{ title, file, mediaType string }{
		{"disk.img.kiln.zst", "disk.img", "application/vnd.kiln.disk.raw+zstd"},
		{"disk.img.zst", "", "application/vnd.kiln.disk.raw.zst"},
		{"disk.vhd.zst", "disk.vhd", "application/vnd.kiln.disk.vhd+zstd"},
	}
	for i, l := range layers {
		if err := l.describe(context.Background(), nil); err != nil {
			t.Fatal(err)
		}
		a := l.desc.Annotations
		if a[ocispec.AnnotationTitle] != want[i].title || a[AnnotationFile] != want[i].file || l.desc.MediaType != want[i].mediaType || fileName(l.desc) != l.name {
			t.Errorf("%s: title %q, file %q, media type %s; want %+v", l.name, a[ocispec.AnnotationTitle], a[AnnotationFile], l.desc.MediaType, want[i])
		}
	}
	// A compressed layer an older kiln pushed is titled with its file.
	old := ocispec.Descriptor{MediaType: MediaTypeDisk + "raw" + ZstdSuffix, Annotations: map[string]string{ocispec.AnnotationTitle: "disk.img"}}
	if n := fileName(old); n != "disk.img" {
		t.Errorf("an older kiln's layer: file %q", n)
	}
}
