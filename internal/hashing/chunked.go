package hashing

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"sync"
)

// ChunkSize is the chunk size of the chunked digest: 1 MiB.
const ChunkSize = 1 << 20

// ChunkedAlgorithm names the chunked digest in manifests.
const ChunkedAlgorithm = "sha256-chunked-1MiB"

// zeroChunkDigest is the SHA-256 of a whole chunk of zeros.
var zeroChunkDigest = sha256.Sum256(make([]byte, ChunkSize))

// Chunked sets each job's Sum to the chunked SHA-256 of its range: the
// SHA-256 of the concatenated (binary) SHA-256 digests of its 1 MiB chunks,
// the last one possibly shorter. Every byte counts, but a chunk that is a
// hole of a sparse file is not read, and a whole chunk of zeros is not
// hashed: its digest is a constant. The chunks of all jobs are hashed on up
// to workers goroutines. Standard tools compute the same digest:
//
//	split -b 1M --filter=sha256sum FILE | cut -c1-64 | xxd -r -p | sha256sum
//
// progress, when not nil, is called with byte counts as chunks finish.
func Chunked(jobs []*Job, workers int, progress func(int64)) {
	type chunk struct {
		j    *Job
		i    int   // chunk index in the job
		off  int64 // absolute offset
		n    int64
		hole bool
	}
	digests := make([][]byte, len(jobs))
	var chunks []chunk
	for k, j := range jobs {
		n := (j.Size + ChunkSize - 1) / ChunkSize
		digests[k] = make([]byte, n*sha256.Size)
		// Chunks wholly inside holes need no reading.
		var data [][2]int64
		j.Err = Extents(j.R, j.Off, j.Size, func(off, n int64, hole bool) error {
			if !hole {
				data = append(data, [2]int64{off, off + n})
			}
			return nil
		})
		if j.Err != nil {
			continue
		}
		d := 0
		for i := int64(0); i < n; i++ {
			off := j.Off + i*ChunkSize
			end := min(off+ChunkSize, j.Off+j.Size)
			for d < len(data) && data[d][1] <= off {
				d++
			}
			hole := d == len(data) || data[d][0] >= end
			chunks = append(chunks, chunk{j: j, i: int(i), off: off, n: end - off, hole: hole})
		}
	}
	index := map[*Job]int{}
	for k, j := range jobs {
		index[j] = k
	}
	var mu sync.Mutex
	ch := make(chan chunk)
	var wg sync.WaitGroup
	zeros := make([]byte, ChunkSize)
	for range max(workers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, ChunkSize)
			for c := range ch {
				dst := digests[index[c.j]][c.i*sha256.Size : (c.i+1)*sha256.Size]
				var sum [sha256.Size]byte
				switch {
				case c.hole && c.n == ChunkSize:
					sum = zeroChunkDigest
				case c.hole:
					sum = sha256.Sum256(zeros[:c.n])
				default:
					if _, err := c.j.R.ReadAt(buf[:c.n], c.off); err != nil && !(err == io.EOF && c.n == 0) {
						mu.Lock()
						if c.j.Err == nil {
							c.j.Err = err
						}
						mu.Unlock()
						continue
					}
					if c.n == ChunkSize && bytes.Equal(buf, zeros) {
						sum = zeroChunkDigest
					} else {
						sum = sha256.Sum256(buf[:c.n])
					}
				}
				copy(dst, sum[:])
				if progress != nil {
					progress(c.n)
				}
			}
		}()
	}
	for _, c := range chunks {
		if c.j.Err == nil {
			ch <- c
		}
	}
	close(ch)
	wg.Wait()
	for k, j := range jobs {
		if j.Err == nil {
			sum := sha256.Sum256(digests[k])
			j.Sum = hex.EncodeToString(sum[:])
		}
	}
}
