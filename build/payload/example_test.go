package payload_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"fmt"

	"github.com/kiln-os/kiln/build/payload"
)

// Plan a delta between two partition images, write it signed, then open
// and apply it to the old partition.
func Example() {
	oldImg := make([]byte, 64<<10)
	newImg := make([]byte, 64<<10)
	copy(oldImg, "release 1: some filesystem bytes")
	copy(newImg, "release 2: some filesystem bytes")
	copy(newImg[32<<10:], "a file added in release 2")

	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	ctx := context.Background()
	plan, err := payload.NewPlan(ctx, payload.Config{
		Old:        &payload.Image{R: bytes.NewReader(oldImg), Size: int64(len(oldImg))},
		New:        payload.Image{R: bytes.NewReader(newImg), Size: int64(len(newImg))},
		NewVersion: "2.0.0",
	})
	if err != nil {
		panic(err)
	}
	defer plan.Close()
	var buf bytes.Buffer
	if _, err := payload.Write(&buf, plan, payload.RSASigner{Key: key}); err != nil {
		panic(err)
	}

	p, err := payload.Open(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		panic(err)
	}
	slot := &partition{}
	res, err := payload.Apply(ctx, p, bytes.NewReader(oldImg), slot, payload.ApplyOptions{Verifier: payload.RSAVerifier{Key: &key.PublicKey}})
	if err != nil {
		panic(err)
	}
	fmt.Println(res.Version, bytes.Equal(slot.b, newImg))
	// Output: 2.0.0 true
}

type partition struct{ b []byte }

func (m *partition) WriteAt(p []byte, off int64) (int, error) {
	if end := off + int64(len(p)); end > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, end-int64(len(m.b)))...)
	}
	return copy(m.b[off:], p), nil
}

func (m *partition) ReadAt(p []byte, off int64) (int, error) {
	return bytes.NewReader(m.b).ReadAt(p, off)
}
