package registry

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// layer is one blob a push publishes.
type layer struct {
	name string // the file it comes from, which a pull restores
	// title is the blob's org.opencontainers.image.title, the name a
	// generic OCI client (oras pull) writes it under: name, or name+".zst"
	// when the blob is the file compressed (set by titles).
	title       string
	mediaType   string // the full media type (with any +zstd)
	compressed  bool   // the blob is a compressed form of the file
	size        int64  // the file's size, for progress; 0 for small blobs
	annotations map[string]string
	// write writes the blob's bytes to w — the same bytes every call —
	// and returns the digest and size of the uncompressed content. read,
	// when not nil, is told of the file's bytes as they are read.
	write func(ctx context.Context, w io.Writer, read func(int64)) (digest.Digest, int64, error)

	// spoolDir, when set, makes describe keep the blob's bytes in an
	// unlinked temporary file there (else in the system's temporary
	// directory), from which open streams them: a compressed blob is
	// compressed once, not again for the upload.
	spoolDir string
	spool    *os.File

	desc ocispec.Descriptor // set by describe
	diff digest.Digest      // the uncompressed content's digest, set by describe
}

// fileLayer is the file at path as a layer named name, compressed with
// zstd when compress is set (media type + "+zstd", title name + ".zst").
// Its holes are never read.
func fileLayer(name, path, mediaType string, compress bool) (*layer, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, classify(ErrInput, err)
	}
	l := &layer{name: name, title: name, mediaType: mediaType, compressed: compress, size: st.Size()}
	if compress {
		l.mediaType += ZstdSuffix
		l.title = name + ZstdExt
		l.spoolDir = filepath.Dir(path)
	}
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
		d := digest.SHA256.Digester()
		var src io.Reader = &ctxReader{ctx, &sparseReader{f: f, size: st.Size()}}
		if read != nil {
			src = &countReader{r: src, add: read}
		}
		src = io.TeeReader(src, d.Hash())
		buf := make([]byte, 1<<20)
		if !compress {
			n, err := io.CopyBuffer(w, src, buf)
			return d.Digest(), n, err
		}
		enc, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedDefault))
		if err != nil {
			return "", 0, err
		}
		n, err := io.CopyBuffer(struct{ io.Writer }{enc}, src, buf)
		if cerr := enc.Close(); err == nil {
			err = cerr
		}
		return d.Digest(), n, err
	}
	return l, nil
}

// describe runs the layer's bytes through a digester: its descriptor.
// read, when not nil, is told of the file's bytes as they are read.
func (l *layer) describe(ctx context.Context, read func(int64)) error {
	d := digest.SHA256.Digester()
	cw := &countWriter{w: d.Hash()}
	var w io.Writer = cw
	if l.spoolDir != "" {
		f, err := createSpool(l.spoolDir)
		if err != nil {
			return fmt.Errorf("a temporary file for %s: %w", l.name, err)
		}
		l.closeSpool()
		l.spool = f
		w = io.MultiWriter(cw, f)
	}
	diff, size, err := l.write(ctx, w, read)
	if err != nil {
		l.closeSpool()
		return fmt.Errorf("reading %s: %w", l.name, err)
	}
	l.diff = diff
	title := l.title
	if title == "" {
		title = l.name
	}
	l.desc = ocispec.Descriptor{
		MediaType:   l.mediaType,
		Digest:      d.Digest(),
		Size:        cw.n,
		Annotations: map[string]string{ocispec.AnnotationTitle: title},
	}
	if l.compressed {
		l.desc.Annotations[AnnotationFile] = l.name
		l.desc.Annotations[AnnotationUncompressedDigest] = diff.String()
		l.desc.Annotations[AnnotationUncompressedSize] = strconv.FormatInt(size, 10)
	}
	for k, v := range l.annotations {
		l.desc.Annotations[k] = v
	}
	return nil
}

// createSpool creates an unlinked temporary file in dir, or in the
// system's temporary directory when dir takes none (read-only): nothing
// is left behind, however the push ends.
func createSpool(dir string) (*os.File, error) {
	f, err := os.CreateTemp(dir, ".kiln-push-*")
	if err != nil {
		if f, err = os.CreateTemp("", "kiln-push-*"); err != nil {
			return nil, err
		}
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// closeSpool releases the spooled blob, if any.
func (l *layer) closeSpool() {
	if l.spool != nil {
		l.spool.Close()
		l.spool = nil
	}
}

// open streams the layer's bytes again, for an upload: the spooled blob,
// or the file read again. The reader fails if they differ from what
// describe saw (the file changed meanwhile). sent, when not nil, is told
// of the blob's bytes as they are read.
func (l *layer) open(ctx context.Context, sent func(int64)) io.ReadCloser {
	if l.spool != nil {
		r := io.NopCloser(&ctxReader{ctx, io.NewSectionReader(l.spool, 0, l.desc.Size+1)})
		return &checkedReader{r: r, d: digest.SHA256.Digester(), want: l.desc, name: l.name, sent: sent}
	}
	pr, pw := io.Pipe()
	go func() {
		_, _, err := l.write(ctx, pw, nil)
		pw.CloseWithError(err)
	}()
	return &checkedReader{r: pr, d: digest.SHA256.Digester(), want: l.desc, name: l.name, sent: sent}
}

// checkedReader reads a blob being uploaded and fails at its end if its
// digest or size is not the descriptor's.
type checkedReader struct {
	r    io.ReadCloser
	d    digest.Digester
	n    int64
	want ocispec.Descriptor
	name string
	sent func(int64)
}

func (c *checkedReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.d.Hash().Write(p[:n])
	c.n += int64(n)
	if c.sent != nil && n > 0 {
		c.sent(int64(n))
	}
	if err == io.EOF && (c.n != c.want.Size || c.d.Digest() != c.want.Digest) {
		return n, fmt.Errorf("%s changed while it was pushed (%d bytes %s, then %d bytes %s)", c.name, c.want.Size, c.want.Digest, c.n, c.d.Digest())
	}
	return n, err
}

func (c *checkedReader) Close() error { return c.r.Close() }

// bytesLayer is a small blob held in memory.
func bytesLayer(name, mediaType string, data []byte) *layer {
	return &layer{name: name, title: name, mediaType: mediaType, write: func(_ context.Context, w io.Writer, _ func(int64)) (digest.Digest, int64, error) {
		n, err := w.Write(data)
		return digest.FromBytes(data), int64(n), err
	}}
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// countReader tells add of the bytes read through it.
type countReader struct {
	r   io.Reader
	add func(int64)
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.add(int64(n))
	}
	return n, err
}

// ctxReader stops reading once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, context.Cause(c.ctx)
	}
	return c.r.Read(p)
}
