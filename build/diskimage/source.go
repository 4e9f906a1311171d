package diskimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"runtime"
	"sync"

	"github.com/kiln-os/kiln/internal/hashing"
)

// unitSize is the granularity at which every writer tells data from
// zeros: a qcow2 cluster, a VMDK grain, 128 disk sectors.
const unitSize = 64 << 10

// Source is a raw disk image read by extents: the ranges its file system
// reports as holes are never read.
type Source struct {
	r    io.ReaderAt
	size int64
	data []span // data extents, in order, inside [0, size)
}

type span struct{ off, end int64 }

// NewSource prepares the raw image r of size bytes. When r has a file
// descriptor (an *os.File), its holes are found with SEEK_DATA/SEEK_HOLE;
// any other reader is read whole.
func NewSource(r io.ReaderAt, size int64) (*Source, error) {
	if size <= 0 {
		return nil, fmt.Errorf("diskimage: the raw image is empty")
	}
	s := &Source{r: r, size: size}
	err := hashing.Extents(r, 0, size, func(off, n int64, hole bool) error {
		if hole || n == 0 {
			return nil
		}
		if k := len(s.data); k > 0 && s.data[k-1].end == off {
			s.data[k-1].end = off + n
		} else {
			s.data = append(s.data, span{off, off + n})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("diskimage: finding the raw image's data: %w", err)
	}
	return s, nil
}

// Size returns the raw image's size in bytes.
func (s *Source) Size() int64 { return s.size }

// DataBytes returns how many bytes of the raw image are not holes.
func (s *Source) DataBytes() int64 {
	var n int64
	for _, d := range s.data {
		n += d.end - d.off
	}
	return n
}

// block is bs bytes of the raw image at off (fewer at its end), read by a
// worker: its bytes (holes as zeros), which of its 64 KiB units hold
// anything but zeros, and what the writer's work made of it.
type block struct {
	off    int64
	buf    []byte
	spans  []span // the data extents inside the block
	zero   []bool // per unit: only zeros
	crc    []uint32
	out    [][]byte // the writer's work: one result per unit, or one for the block
	err    error
	done   chan struct{}
	worker int
}

// allZero reports whether the whole block is zeros.
func (b *block) allZero() bool {
	for _, z := range b.zero {
		if !z {
			return false
		}
	}
	return true
}

// unit returns the bytes of unit u of the block.
func (b *block) unit(u int) []byte {
	return b.buf[u*unitSize : min((u+1)*unitSize, len(b.buf))]
}

var zeroUnit = make([]byte, unitSize)

// pipeline is one pass over a Source in blocks of bs bytes.
type pipeline struct {
	src      *Source
	bs       int64
	workers  int
	work     func(b *block) error // on a worker, may be nil
	progress func(int64)          // may be nil
}

// run reads the blocks that hold data (blocks wholly inside holes are
// skipped: the writer knows them as zeros) on p.workers goroutines, calls
// p.work on each, and hands them to emit in order. It returns the content ID: the SHA-256 of
// the index and CRC-32C of every 64 KiB unit that is not all zeros, and
// of the size — the same for the same content, whatever is a hole.
func (p *pipeline) run(ctx context.Context, emit func(b *block) error) ([sha256.Size]byte, error) {
	workers := p.workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	if p.bs%unitSize != 0 || p.bs <= 0 {
		panic("diskimage: block size not a multiple of the unit")
	}
	inflight := workers + 2
	free := make(chan []byte, inflight)
	for range inflight {
		free <- make([]byte, p.bs)
	}
	jobs := make(chan *block)
	order := make(chan *block, inflight)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range jobs {
				b.worker = w
				b.err = p.read(b)
				if b.err == nil && p.work != nil {
					b.err = p.work(b)
				}
				close(b.done)
			}
		}()
	}
	// The producer: blocks in order, each with the data extents it holds.
	go func() {
		defer close(order)
		defer close(jobs)
		d := 0
		nblocks := (p.src.size + p.bs - 1) / p.bs
		for i := int64(0); i < nblocks; i++ {
			off := i * p.bs
			end := min(off+p.bs, p.src.size)
			for d < len(p.src.data) && p.src.data[d].end <= off {
				d++
			}
			if d == len(p.src.data) || p.src.data[d].off >= end {
				// A hole: skip to the block of the next extent.
				if d == len(p.src.data) {
					return
				}
				i = p.src.data[d].off/p.bs - 1
				continue
			}
			var spans []span
			for k := d; k < len(p.src.data) && p.src.data[k].off < end; k++ {
				spans = append(spans, span{max(off, p.src.data[k].off), min(end, p.src.data[k].end)})
			}
			var buf []byte
			select {
			case buf = <-free:
			case <-ctx.Done():
				return
			}
			b := &block{off: off, buf: buf[:end-off], spans: spans, done: make(chan struct{})}
			select {
			case order <- b:
			case <-ctx.Done():
				return
			}
			select {
			case jobs <- b:
			case <-ctx.Done():
				b.err = ctx.Err()
				close(b.done)
				return
			}
		}
	}()

	h := sha256.New()
	var rec [12]byte
	var err error
	done := int64(0) // bytes reported to progress, holes passed over included
	for b := range order {
		<-b.done
		if err == nil {
			err = b.err
			if err == nil {
				err = ctx.Err()
			}
			if err == nil {
				for u, z := range b.zero {
					if !z {
						binary.LittleEndian.PutUint64(rec[:8], uint64(b.off/unitSize)+uint64(u))
						binary.LittleEndian.PutUint32(rec[8:], b.crc[u])
						h.Write(rec[:])
					}
				}
				err = emit(b)
			}
			if err == nil && p.progress != nil {
				end := b.off + int64(len(b.buf))
				p.progress(end - done)
				done = end
			}
			if err != nil {
				cancel()
			}
		}
		free <- b.buf[:cap(b.buf)]
	}
	wg.Wait()
	if err != nil {
		return [sha256.Size]byte{}, err
	}
	if p.progress != nil && done < p.src.size {
		p.progress(p.src.size - done)
	}
	binary.LittleEndian.PutUint64(rec[:8], uint64(p.src.size))
	h.Write(rec[:8])
	var id [sha256.Size]byte
	h.Sum(id[:0])
	return id, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// read fills the block: its data extents from the source, zeros elsewhere;
// then which units are zeros, and the CRC of those that are not.
func (p *pipeline) read(b *block) error {
	pos := b.off
	for _, s := range b.spans {
		clear(b.buf[pos-b.off : s.off-b.off])
		if _, err := p.src.r.ReadAt(b.buf[s.off-b.off:s.end-b.off], s.off); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("diskimage: reading the raw image at %d: %w", s.off, err)
		}
		pos = s.end
	}
	clear(b.buf[pos-b.off:])
	n := (len(b.buf) + unitSize - 1) / unitSize
	b.zero = make([]bool, n)
	b.crc = make([]uint32, n)
	for u := range n {
		start, end := int64(u*unitSize)+b.off, min(int64((u+1)*unitSize), int64(len(b.buf)))+b.off
		if !overlaps(b.spans, start, end) {
			b.zero[u] = true
			continue
		}
		data := b.unit(u)
		if bytes.Equal(data, zeroUnit[:len(data)]) {
			b.zero[u] = true
			continue
		}
		b.crc[u] = crc32.Checksum(data, castagnoli)
	}
	return nil
}

func overlaps(spans []span, off, end int64) bool {
	for _, s := range spans {
		if s.off < end && off < s.end {
			return true
		}
	}
	return false
}
