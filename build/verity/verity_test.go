package verity

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

const bs = DefaultBlockSize

var testUUID = [16]byte{0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10}

func uuidString(u [16]byte) string {
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func saltArg(salt []byte) string {
	if len(salt) == 0 {
		return "-"
	}
	return hex.EncodeToString(salt)
}

// randomData returns n deterministic pseudo-random bytes.
func randomData(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16)})
	r.Read(b)
	return b
}

// writeImage writes data at dataOff of a new file of size total.
func writeImage(t testing.TB, path string, data []byte, dataOff, total int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, dataOff); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(total); err != nil {
		t.Fatal(err)
	}
}

// veritysetup runs the real tool; a missing tool fails the test.
func veritysetup(t testing.TB, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("veritysetup", args...).CombinedOutput()
	if errors.Is(err, exec.ErrNotFound) {
		t.Fatalf("veritysetup is not installed (cryptsetup-bin): %v", err)
	}
	return string(out), err
}

var rootRE = regexp.MustCompile(`(?m)^Root hash:\s+([0-9a-f]+)\s*$`)

// vsFormat runs `veritysetup format` on path (data at 0, hash area at
// hashOff of the same file) and returns the root hash it prints.
func vsFormat(t testing.TB, path string, hashOff int64, n uint64, salt []byte) []byte {
	t.Helper()
	out, err := veritysetup(t, "format", path, path,
		fmt.Sprintf("--hash-offset=%d", hashOff), fmt.Sprintf("--data-blocks=%d", n),
		"--salt="+saltArg(salt), "--uuid="+uuidString(testUUID))
	if err != nil {
		t.Fatalf("veritysetup format: %v\n%s", err, out)
	}
	m := rootRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no root hash in veritysetup output:\n%s", out)
	}
	root, err := hex.DecodeString(m[1])
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func vsVerify(t testing.TB, path string, hashOff int64, root []byte, extra ...string) error {
	t.Helper()
	args := append([]string{"verify", path, path, hex.EncodeToString(root), fmt.Sprintf("--hash-offset=%d", hashOff)}, extra...)
	out, err := veritysetup(t, args...)
	if err != nil {
		return fmt.Errorf("veritysetup verify: %v: %s", err, strings.TrimSpace(out))
	}
	return nil
}

func formatFile(t testing.TB, path string, dataOff, hashOff int64, p Params) []byte {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	root, err := Format(f, dataOff, hashOff, p)
	if err != nil {
		t.Fatalf("Format: %v", err)
	}
	return root
}

func verifyFile(t testing.TB, path string, dataOff, hashOff int64, root []byte) (*Superblock, error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return Verify(f, dataOff, hashOff, root)
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// firstDiff returns the first offset where a and b differ, or -1.
func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// TestFormatMatchesVeritysetup formats the same data with Format and with
// `veritysetup format` and requires the same root hash and identical
// files, then has each side verify the other's output.
func TestFormatMatchesVeritysetup(t *testing.T) {
	sizes := []uint64{1, 2, 127, 128, 129, 128*128 - 1, 128 * 128, 128*128 + 1, 64<<20/bs + 3}
	for i, n := range sizes {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			data := randomData(uint64(i), int(n)*bs)
			salt := SaltFromSeed([]byte(fmt.Sprint("seed", i)))
			hashOff := int64(n) * bs
			total := hashOff + HashTreeSize(n)
			ours, theirs := filepath.Join(dir, "ours.img"), filepath.Join(dir, "theirs.img")
			writeImage(t, ours, data, 0, total)
			writeImage(t, theirs, data, 0, total)

			root := formatFile(t, ours, 0, hashOff, Params{DataBlocks: n, Salt: salt, UUID: testUUID})
			want := vsFormat(t, theirs, hashOff, n, salt)
			if !bytes.Equal(root, want) {
				t.Fatalf("root hash %x, veritysetup %x", root, want)
			}
			a, b := readFile(t, ours), readFile(t, theirs)
			if d := firstDiff(a, b); d >= 0 {
				t.Fatalf("files differ at byte 0x%x (hash area starts at 0x%x; sizes %d, %d)", d, hashOff, len(a), len(b))
			}
			if err := vsVerify(t, ours, hashOff, root); err != nil {
				t.Fatal(err)
			}
			// The tree alone, as `--no-superblock` sees it.
			if err := vsVerify(t, ours, hashOff+bs, root, "--no-superblock",
				fmt.Sprintf("--data-blocks=%d", n), "--salt="+saltArg(salt), "--hash=sha256"); err != nil {
				t.Fatal(err)
			}
			sb, err := verifyFile(t, theirs, 0, hashOff, want)
			if err != nil {
				t.Fatalf("Verify of veritysetup's output: %v", err)
			}
			if sb.DataBlocks != n || !bytes.Equal(sb.Salt, salt) || sb.UUID != testUUID || sb.Algorithm != "sha256" {
				t.Fatalf("superblock %+v", sb)
			}
		})
	}
}

// TestFormatVariants covers salts of every length class, a hash offset
// that is not a multiple of the block size, other block sizes, and a data
// area that does not start at byte 0.
func TestFormatVariants(t *testing.T) {
	type variant struct {
		name     string
		n        uint64
		salt     []byte
		hashOff  int64 // relative to the end of the data
		dbs, hbs uint32
	}
	variants := []variant{
		{"no-salt", 300, nil, 0, bs, bs},
		{"salt-1", 300, []byte{0xa5}, 0, bs, bs},
		{"salt-256", 300, randomData(9, 256), 0, bs, bs},
		{"hash-offset-512", 300, SaltFromSeed(nil), 512, bs, bs},
		{"hash-offset-3584", 300, SaltFromSeed(nil), 3584, bs, bs},
		{"hash-offset-8192", 300, SaltFromSeed(nil), 8192, bs, bs},
		{"blocks-512-1024", 5000, SaltFromSeed(nil), 0, 512, 1024},
		{"blocks-1024-512", 5000, SaltFromSeed(nil), 0, 1024, 512},
	}
	for i, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			data := randomData(uint64(100+i), int(v.n)*int(v.dbs))
			hashOff := int64(len(data)) + v.hashOff
			total := hashOff + 2<<20
			ours, theirs := filepath.Join(dir, "ours.img"), filepath.Join(dir, "theirs.img")
			writeImage(t, ours, data, 0, total)
			writeImage(t, theirs, data, 0, total)
			p := Params{DataBlocks: v.n, Salt: v.salt, UUID: testUUID, DataBlockSize: v.dbs, HashBlockSize: v.hbs}
			root := formatFile(t, ours, 0, hashOff, p)
			out, err := veritysetup(t, "format", theirs, theirs,
				fmt.Sprintf("--hash-offset=%d", hashOff), fmt.Sprintf("--data-blocks=%d", v.n),
				fmt.Sprintf("--data-block-size=%d", v.dbs), fmt.Sprintf("--hash-block-size=%d", v.hbs),
				"--salt="+saltArg(v.salt), "--uuid="+uuidString(testUUID))
			if err != nil {
				t.Fatalf("veritysetup format: %v\n%s", err, out)
			}
			m := rootRE.FindStringSubmatch(out)
			if m == nil || m[1] != hex.EncodeToString(root) {
				t.Fatalf("root hash %x, veritysetup printed:\n%s", root, out)
			}
			a, b := readFile(t, ours), readFile(t, theirs)
			// veritysetup writes only the 512-byte superblock; both files
			// start zeroed, so the padding compares equal too.
			if d := firstDiff(a, b); d >= 0 {
				t.Fatalf("files differ at byte 0x%x (hash area at 0x%x)", d, hashOff)
			}
			if err := vsVerify(t, ours, hashOff, root); err != nil {
				t.Fatal(err)
			}
			if _, err := verifyFile(t, theirs, 0, hashOff, root); err != nil {
				t.Fatalf("Verify: %v", err)
			}
		})
	}

	// Data not at byte 0: the hash area must equal veritysetup's for the
	// same data at byte 0.
	t.Run("data-offset", func(t *testing.T) {
		dir := t.TempDir()
		const n, dataOff = 1000, 3 * bs
		data := randomData(77, n*bs)
		salt := SaltFromSeed([]byte("x"))
		ours, theirs := filepath.Join(dir, "ours.img"), filepath.Join(dir, "theirs.img")
		writeImage(t, ours, data, dataOff, dataOff+n*bs+HashTreeSize(n))
		writeImage(t, theirs, data, 0, n*bs+HashTreeSize(n))
		root := formatFile(t, ours, dataOff, dataOff+n*bs, Params{DataBlocks: n, Salt: salt, UUID: testUUID})
		if want := vsFormat(t, theirs, n*bs, n, salt); !bytes.Equal(root, want) {
			t.Fatalf("root hash %x, veritysetup %x", root, want)
		}
		if !bytes.Equal(readFile(t, ours)[dataOff:], readFile(t, theirs)) {
			t.Fatal("data + hash area differ from veritysetup's")
		}
		if _, err := verifyFile(t, ours, dataOff, dataOff+n*bs, root); err != nil {
			t.Fatal(err)
		}
	})
}

// TestHashTreeSize checks the size against what Format writes into a file
// that starts with the data only.
func TestHashTreeSize(t *testing.T) {
	for _, n := range []uint64{1, 2, 127, 128, 129, 128 * 128, 128*128 + 1, 260094} {
		f, err := os.Create(filepath.Join(t.TempDir(), "img"))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(int64(n) * bs); err != nil {
			t.Fatal(err)
		}
		if _, err := Format(f, 0, int64(n)*bs, Params{DataBlocks: n}); err != nil {
			t.Fatal(err)
		}
		st, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		// Format writes the superblock and the tree, not the rest of the
		// superblock's block: with one data block (no tree levels) the
		// file ends after the 512-byte superblock.
		want := HashTreeSize(n)
		if n == 1 {
			want = SuperblockSize
		}
		if got := st.Size() - int64(n)*bs; got != want {
			t.Errorf("%d blocks: Format wrote %d bytes, want %d", n, got, want)
		}
		// The superblock's block past the superblock is left alone.
		pad := make([]byte, bs-SuperblockSize)
		for i := range pad {
			pad[i] = 0xa5
		}
		if _, err := f.WriteAt(pad, int64(n)*bs+SuperblockSize); err != nil {
			t.Fatal(err)
		}
		if _, err := Format(f, 0, int64(n)*bs, Params{DataBlocks: n}); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(pad))
		f.ReadAt(got, int64(n)*bs+SuperblockSize)
		if !bytes.Equal(got, pad) {
			t.Errorf("%d blocks: Format overwrote the rest of the superblock's block", n)
		}
		f.Close()
	}
	// The USR-A layout: 260094 data blocks, 2 levels.
	if got, want := HashTreeSize(260094), int64(bs+(2032+16+1)*bs); got != want {
		t.Errorf("HashTreeSize(260094) = %d, want %d", got, want)
	}
	if HashTreeSize(0) != bs {
		t.Errorf("HashTreeSize(0) = %d", HashTreeSize(0))
	}
}

// TestMemoryBounded checks that Format and Verify allocate the tree and
// one read buffer per worker, never the data.
func TestMemoryBounded(t *testing.T) {
	const n = 256 << 20 / bs
	path := filepath.Join(t.TempDir(), "sparse.img")
	writeImage(t, path, nil, 0, n*bs+HashTreeSize(n)) // sparse: reads are cheap
	limit := uint64(HashTreeSize(n)) + uint64(runtime.GOMAXPROCS(0))*chunkBytes + 1<<20
	allocated := func(fn func()) uint64 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		fn()
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	var root []byte
	if a := allocated(func() { root = formatFile(t, path, 0, n*bs, Params{DataBlocks: n}) }); a > limit {
		t.Errorf("Format of %d MiB allocated %d bytes, limit %d", n*bs>>20, a, limit)
	}
	if a := allocated(func() {
		if _, err := verifyFile(t, path, 0, n*bs, root); err != nil {
			t.Fatal(err)
		}
	}); a > limit {
		t.Errorf("Verify of %d MiB allocated %d bytes, limit %d", n*bs>>20, a, limit)
	}
}

func TestDeterministic(t *testing.T) {
	dir := t.TempDir()
	const n = 5000
	data := randomData(5, n*bs)
	var images [2][]byte
	var roots [2][]byte
	for i := range images {
		path := filepath.Join(dir, fmt.Sprint(i))
		writeImage(t, path, data, 0, n*bs)
		roots[i] = formatFile(t, path, 0, n*bs, Params{DataBlocks: n, Salt: SaltFromSeed([]byte("release-1")), UUID: testUUID})
		images[i] = readFile(t, path)
	}
	if !bytes.Equal(roots[0], roots[1]) || !bytes.Equal(images[0], images[1]) {
		t.Fatal("two runs differ")
	}
	if !bytes.Equal(SaltFromSeed([]byte("a")), SaltFromSeed([]byte("a"))) || len(SaltFromSeed(nil)) != 32 ||
		bytes.Equal(SaltFromSeed([]byte("a")), SaltFromSeed([]byte("b"))) {
		t.Fatal("SaltFromSeed is not a deterministic 32-byte function of the seed")
	}
}

// corruptImage is a veritysetup-formatted file with 3 tree levels.
type corruptImage struct {
	path     string
	n        uint64
	hashOff  int64
	root     []byte
	pristine []byte
}

func newCorruptImage(t *testing.T) *corruptImage {
	t.Helper()
	const n = 128*128 + 1 // levels of 129, 2 and 1 blocks
	c := &corruptImage{path: filepath.Join(t.TempDir(), "img"), n: n, hashOff: n * bs}
	writeImage(t, c.path, randomData(42, n*bs), 0, n*bs+HashTreeSize(n))
	c.root = vsFormat(t, c.path, c.hashOff, n, SaltFromSeed([]byte("corrupt")))
	c.pristine = readFile(t, c.path)
	return c
}

// flip writes the pristine image with the bytes at offs inverted.
func (c *corruptImage) flip(t *testing.T, offs ...int64) {
	t.Helper()
	b := bytes.Clone(c.pristine)
	for _, o := range offs {
		b[o] ^= 0xff
	}
	if err := os.WriteFile(c.path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyDetectsCorruption(t *testing.T) {
	c := newCorruptImage(t)
	// Layout after the superblock block: level 3 (1 block), level 2 (2),
	// level 1 (129).
	top := c.hashOff + bs
	level2 := top + bs
	level1 := level2 + 2*bs
	tests := []struct {
		name  string
		offs  []int64
		want  *BlockError // nil: compare err with wantErr
		wantE error
	}{
		{"data-block-1234", []int64{1234*bs + 17}, &BlockError{Level: 0, Block: 1234, Offset: 1234 * bs}, nil},
		{"first-of-three", []int64{16000*bs + 1, 300*bs + 4095, 9000 * bs}, &BlockError{Level: 0, Block: 300, Offset: 300 * bs}, nil},
		{"last-data-block", []int64{int64(c.n)*bs - 1}, &BlockError{Level: 0, Block: c.n - 1, Offset: int64(c.n-1) * bs}, nil},
		{"level1-block-5", []int64{level1 + 5*bs + 100}, &BlockError{Level: 1, Block: 5, Offset: level1 + 5*bs}, nil},
		{"level2-block-1", []int64{level2 + bs + 31}, &BlockError{Level: 2, Block: 1, Offset: level2 + bs}, nil},
		{"level1-padding", []int64{level1 + 128*bs + 64}, &BlockError{Level: 1, Block: 128, Offset: level1 + 128*bs, Padding: true}, nil},
		{"top-block", []int64{top + 7}, nil, ErrRootHashMismatch},
		{"superblock-signature", []int64{c.hashOff}, nil, ErrBadSignature},
		{"superblock-salt", []int64{c.hashOff + sbSalt}, nil, ErrRootHashMismatch},
		{"superblock-version", []int64{c.hashOff + sbVersion}, nil, ErrUnsupportedVersion},
		{"superblock-algorithm", []int64{c.hashOff + sbAlgorithm + 1}, nil, ErrUnsupportedAlgorithm},
		{"superblock-data-blocks", []int64{c.hashOff + sbDataBlocks + 7}, nil, ErrBadDataBlocks},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.flip(t, tt.offs...)
			_, err := verifyFile(t, c.path, 0, c.hashOff, c.root)
			if tt.want != nil {
				var be *BlockError
				if !errors.As(err, &be) || *be != *tt.want {
					t.Fatalf("Verify: %v, want %v", err, tt.want)
				}
				if !errors.Is(err, ErrMismatch) {
					t.Fatalf("%v does not wrap ErrMismatch", err)
				}
			} else if !errors.Is(err, tt.wantE) {
				t.Fatalf("Verify: %v, want %v", err, tt.wantE)
			}
			t.Logf("%v", err)
			// The real tool must agree that the image is bad.
			if err := vsVerify(t, c.path, c.hashOff, c.root); err == nil {
				t.Fatal("veritysetup verify accepted the corrupted image")
			}
		})
	}
	t.Run("wrong-root-hash", func(t *testing.T) {
		c.flip(t)
		bad := bytes.Clone(c.root)
		bad[0] ^= 1
		if _, err := verifyFile(t, c.path, 0, c.hashOff, bad); !errors.Is(err, ErrRootHashMismatch) {
			t.Fatalf("Verify: %v", err)
		}
		if _, err := verifyFile(t, c.path, 0, c.hashOff, c.root[:31]); !errors.Is(err, ErrBadRootHash) {
			t.Fatalf("Verify: %v", err)
		}
		if _, err := verifyFile(t, c.path, 0, c.hashOff, c.root); err != nil {
			t.Fatalf("pristine image: %v", err)
		}
	})
	t.Run("error-text", func(t *testing.T) {
		e := &BlockError{Level: 0, Block: 1234, Offset: 1234 * bs}
		if got := e.Error(); got != "verity: data block 1234 (byte offset 0x4d2000) does not match its hash" {
			t.Fatal(got)
		}
		e = &BlockError{Level: 2, Block: 1, Offset: 0x1000}
		if got := e.Error(); got != "verity: hash block 1 of level 2 (byte offset 0x1000) does not match its hash" {
			t.Fatal(got)
		}
	})
}

// TestSingleBlockCorruption covers the tree without levels, where the
// root hash is the data block's own hash.
func TestSingleBlockCorruption(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	writeImage(t, path, randomData(3, bs), 0, 2*bs)
	root := formatFile(t, path, 0, bs, Params{DataBlocks: 1, Salt: []byte("s")})
	b := readFile(t, path)
	b[10] ^= 1
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	var be *BlockError
	if _, err := verifyFile(t, path, 0, bs, root); !errors.As(err, &be) || be.Level != 0 || be.Block != 0 {
		t.Fatalf("Verify: %v", err)
	}
}

// validSuperblock returns the superblock of a small formatted image and
// the image.
func validSuperblock(t testing.TB) ([]byte, []byte) {
	t.Helper()
	const n = 200
	img := make([]byte, n*bs+HashTreeSize(n))
	copy(img, randomData(1, n*bs))
	root, err := Format(&memDev{img}, 0, n*bs, Params{DataBlocks: n, Salt: SaltFromSeed(nil), UUID: testUUID})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(bytes.NewReader(img), 0, n*bs, root); err != nil {
		t.Fatal(err)
	}
	return img, root
}

// memDev is an in-memory ReadWriterAt of fixed size.
type memDev struct{ b []byte }

func (m *memDev) ReadAt(p []byte, off int64) (int, error) {
	return bytes.NewReader(m.b).ReadAt(p, off)
}

func (m *memDev) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		return 0, io.ErrShortWrite
	}
	return copy(m.b[off:], p), nil
}

func TestHostileSuperblock(t *testing.T) {
	img, root := validSuperblock(t)
	const hashOff = 200 * bs
	le := func(b []byte, off int, v uint64, size int) {
		for i := range size {
			b[off+i] = byte(v >> (8 * i))
		}
	}
	tests := []struct {
		name   string
		mutate func(sb []byte)
		want   error
	}{
		{"signature", func(sb []byte) { copy(sb, "VERITY\x00\x00") }, ErrBadSignature},
		{"zero-superblock", func(sb []byte) { clear(sb[:SuperblockSize]) }, ErrBadSignature},
		{"version-0", func(sb []byte) { le(sb, sbVersion, 0, 4) }, ErrUnsupportedVersion},
		{"version-huge", func(sb []byte) { le(sb, sbVersion, 1<<32-1, 4) }, ErrUnsupportedVersion},
		{"hash-type-0", func(sb []byte) { le(sb, sbHashType, 0, 4) }, ErrUnsupportedHashType},
		{"hash-type-9", func(sb []byte) { le(sb, sbHashType, 9, 4) }, ErrUnsupportedHashType},
		{"algorithm-sha1", func(sb []byte) { copy(sb[sbAlgorithm:], "sha1\x00\x00") }, ErrUnsupportedAlgorithm},
		{"algorithm-unterminated", func(sb []byte) { copy(sb[sbAlgorithm:sbAlgorithm+32], bytes.Repeat([]byte("a"), 32)) }, ErrUnsupportedAlgorithm},
		{"algorithm-empty", func(sb []byte) { clear(sb[sbAlgorithm : sbAlgorithm+32]) }, ErrUnsupportedAlgorithm},
		{"data-block-size-0", func(sb []byte) { le(sb, sbDataBlockSize, 0, 4) }, ErrBadBlockSize},
		{"data-block-size-4097", func(sb []byte) { le(sb, sbDataBlockSize, 4097, 4) }, ErrBadBlockSize},
		{"data-block-size-256", func(sb []byte) { le(sb, sbDataBlockSize, 256, 4) }, ErrBadBlockSize},
		{"data-block-size-1G", func(sb []byte) { le(sb, sbDataBlockSize, 1<<30, 4) }, ErrBadBlockSize},
		{"hash-block-size-32", func(sb []byte) { le(sb, sbHashBlockSize, 32, 4) }, ErrBadBlockSize},
		{"hash-block-size-max", func(sb []byte) { le(sb, sbHashBlockSize, 1<<32-1, 4) }, ErrBadBlockSize},
		{"data-blocks-0", func(sb []byte) { le(sb, sbDataBlocks, 0, 8) }, ErrBadDataBlocks},
		{"data-blocks-2^63", func(sb []byte) { le(sb, sbDataBlocks, 1<<63, 8) }, ErrBadDataBlocks},
		{"data-blocks-max", func(sb []byte) { le(sb, sbDataBlocks, 1<<64-1, 8) }, ErrBadDataBlocks},
		{"data-blocks-2^50", func(sb []byte) { le(sb, sbDataBlocks, 1<<50, 8) }, ErrBadOffset}, // runs into the hash area
		{"data-blocks-201", func(sb []byte) { le(sb, sbDataBlocks, 201, 8) }, ErrBadOffset},
		{"salt-257", func(sb []byte) { le(sb, sbSaltSize, 257, 2) }, ErrBadSalt},
		{"salt-65535", func(sb []byte) { le(sb, sbSaltSize, 65535, 2) }, ErrBadSalt},
		{"salt-0", func(sb []byte) { le(sb, sbSaltSize, 0, 2) }, ErrRootHashMismatch},
		{"block-size-512", func(sb []byte) { le(sb, sbHashBlockSize, 512, 4) }, ErrRootHashMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := bytes.Clone(img)
			tt.mutate(b[hashOff:])
			_, err := Verify(bytes.NewReader(b), 0, hashOff, root)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Verify: %v, want %v", err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "verity: ") {
				t.Fatalf("error %q has no package prefix", err)
			}
			var se *SuperblockError
			if errors.As(err, &se) != (tt.want != ErrBadOffset && tt.want != ErrRootHashMismatch) || (se != nil && se.Offset != hashOff) {
				t.Fatalf("error %#v: want a *SuperblockError at 0x%x for field errors only", err, hashOff)
			}
			t.Log(err)
		})
	}

	// Hash area after the data: a data_blocks count beyond the device.
	t.Run("data-beyond-device", func(t *testing.T) {
		// Superblock at 0, data after the hash area, device cut short.
		b := make([]byte, HashTreeSize(200)+200*bs)
		copy(b, img[hashOff:hashOff+HashTreeSize(200)])
		_, err := Verify(bytes.NewReader(b[:len(b)-1]), HashTreeSize(200), 0, root)
		if !errors.Is(err, ErrDeviceTooSmall) {
			t.Fatalf("Verify: %v", err)
		}
		le(b, sbDataBlocks, 1<<40, 8)
		_, err = Verify(bytes.NewReader(b), 1<<50, 0, root)
		if !errors.Is(err, ErrDeviceTooSmall) {
			t.Fatalf("Verify: %v", err)
		}
	})
	t.Run("truncated-superblock", func(t *testing.T) {
		_, err := ReadSuperblock(bytes.NewReader(img[:hashOff+100]), hashOff)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("ReadSuperblock: %v", err)
		}
		if _, err := ReadSuperblock(bytes.NewReader(img), -1); !errors.Is(err, ErrBadOffset) {
			t.Fatalf("ReadSuperblock: %v", err)
		}
	})
	t.Run("hash-area-beyond-device", func(t *testing.T) {
		_, err := Verify(bytes.NewReader(img[:len(img)-1]), 0, hashOff, root)
		if !errors.Is(err, ErrDeviceTooSmall) {
			t.Fatalf("Verify: %v", err)
		}
	})
}

func TestParamsErrors(t *testing.T) {
	dev := &memDev{make([]byte, 1<<20)}
	tests := []struct {
		name          string
		p             Params
		dataOff, hOff int64
		want          error
	}{
		{"no-data", Params{}, 0, 4096, ErrBadDataBlocks},
		{"salt-257", Params{DataBlocks: 1, Salt: make([]byte, 257)}, 0, 4096, ErrBadSalt},
		{"sha512", Params{DataBlocks: 1, HashAlgorithm: "sha512"}, 0, 4096, ErrUnsupportedAlgorithm},
		{"block-size-3000", Params{DataBlocks: 1, DataBlockSize: 3000}, 0, 4096, ErrBadBlockSize},
		{"block-size-128k", Params{DataBlocks: 1, HashBlockSize: 128 << 10}, 0, 4096, ErrBadBlockSize},
		{"overlap", Params{DataBlocks: 2}, 0, 4096, ErrBadOffset},
		{"overlap-hash-first", Params{DataBlocks: 2}, 4096, 0, ErrBadOffset},
		{"hash-offset-unaligned", Params{DataBlocks: 1}, 0, 4097, ErrBadOffset},
		{"hash-offset-negative", Params{DataBlocks: 1}, 0, -4096, ErrBadOffset},
		{"data-offset-negative", Params{DataBlocks: 1}, -1, 8192, ErrBadOffset},
		{"data-blocks-overflow", Params{DataBlocks: 1 << 62}, 0, 0, ErrBadDataBlocks},
		{"short-device", Params{DataBlocks: 300}, 0, 300 * 4096, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		if _, err := Format(dev, tt.dataOff, tt.hOff, tt.p); !errors.Is(err, tt.want) {
			t.Errorf("%s: Format: %v, want %v", tt.name, err, tt.want)
		}
	}
	if err := (Params{DataBlocks: 1}).Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	if err := (Params{}).Validate(); !errors.Is(err, ErrBadDataBlocks) {
		t.Errorf("Validate: %v", err)
	}
}

func TestSuperblockRoundTrip(t *testing.T) {
	img, _ := validSuperblock(t)
	sb, err := ReadSuperblock(bytes.NewReader(img), 200*bs)
	if err != nil {
		t.Fatal(err)
	}
	want := &Superblock{Version: 1, HashType: 1, UUID: testUUID, Algorithm: "sha256",
		DataBlockSize: bs, HashBlockSize: bs, DataBlocks: 200, Salt: SaltFromSeed(nil)}
	if fmt.Sprint(sb) != fmt.Sprint(want) {
		t.Fatalf("got %+v, want %+v", sb, want)
	}
	b, err := sb.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, img[200*bs:200*bs+SuperblockSize]) {
		t.Fatal("MarshalBinary differs from the bytes read")
	}
}

func FuzzReadSuperblock(f *testing.F) {
	img, _ := validSuperblock(f)
	f.Add(img[200*bs : 200*bs+SuperblockSize])
	f.Add(img[200*bs:])
	f.Add([]byte("verity\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		sb, err := ReadSuperblock(bytes.NewReader(b), 0)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "verity: ") {
				t.Fatalf("error without package prefix: %v", err)
			}
			return
		}
		out, err := sb.MarshalBinary()
		if err != nil {
			t.Fatalf("MarshalBinary of a parsed superblock: %v", err)
		}
		again := new(Superblock)
		if err := again.UnmarshalBinary(out); err != nil || fmt.Sprint(again) != fmt.Sprint(sb) {
			t.Fatalf("round trip: %v: %+v != %+v", err, again, sb)
		}
		// Verify must fail cleanly (or succeed) on whatever follows.
		_, _ = Verify(bytes.NewReader(b), 1<<20, 0, make([]byte, DigestSize))
	})
}

func ExampleFormat() {
	const dataBlocks = 16
	dev := &memDev{make([]byte, dataBlocks*DefaultBlockSize+HashTreeSize(dataBlocks))}
	// ... the filesystem is written to the first dataBlocks blocks ...
	root, err := Format(dev, 0, dataBlocks*DefaultBlockSize, Params{
		DataBlocks: dataBlocks,
		Salt:       SaltFromSeed([]byte("build 42")),
	})
	if err != nil {
		panic(err)
	}
	_, err = Verify(dev, 0, dataBlocks*DefaultBlockSize, root)
	fmt.Println(len(root), err)
	// Output: 32 <nil>
}
