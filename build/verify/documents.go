package verify

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/kiln-os/kiln/build/manifest"
	"github.com/kiln-os/kiln/build/provenance"
)

// maxDocument bounds the size of a document verify reads.
const maxDocument = 256 << 20

// checkDocuments checks the documents the manifest lists (the SBOMs),
// beside manifest.json: each must have the listed size and SHA-256; one
// that is missing is a warning (the manifest vouches for it, the image
// does not need it). A provenance envelope beside the manifest must be
// signed by the key and be about this manifest.json.
func checkDocuments(r *Report, o Options, m *manifest.Manifest) {
	dir := filepath.Dir(o.Manifest)
	for _, d := range m.Documents {
		name := "document " + d.Name
		data, err := readBounded(filepath.Join(dir, d.Name), maxDocument)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			r.Checks = append(r.Checks, Check{Name: name, OK: true, Warn: true, Detail: fmt.Sprintf("%s is not beside %s (the manifest lists it: %d bytes, sha256 %.16s…)", d.Name, filepath.Base(o.Manifest), d.Size, d.SHA256)})
			continue
		case err != nil:
		case int64(len(data)) != d.Size:
			err = fmt.Errorf("%s is %d bytes, the manifest says %d", d.Name, len(data), d.Size)
		default:
			if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != d.SHA256 {
				err = fmt.Errorf("%s: sha256 %x, the manifest says %s", d.Name, sum, d.SHA256)
			}
		}
		r.add(name, err, fmt.Sprintf("%s (%s): %d bytes, sha256 %.16s…", d.Name, d.MediaType, d.Size, d.SHA256))
	}
	env, err := readBounded(filepath.Join(dir, provenance.File), maxDocument)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err == nil {
		err = checkProvenance(env, o)
	}
	r.add("provenance", err, fmt.Sprintf("%s: signed by %s, about this %s", provenance.File, o.KeyName, filepath.Base(o.Manifest)))
}

// checkProvenance checks that the envelope verifies with the key and that
// its subject is this manifest.json.
func checkProvenance(env []byte, o Options) error {
	data, err := readBounded(o.Manifest, maxDocument)
	if err != nil {
		return err
	}
	_, err = provenance.VerifyAbout(env, o.Verifier, "manifest.json", data)
	return err
}

// readBounded reads a file of at most limit bytes.
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is over %d bytes", path, limit)
	}
	return data, nil
}
