package xzstream

import "encoding/binary"

// treeFinder is a binary-tree match finder (the "bt4" of LZMA's
// encoders) for the optimal parser. Every position is a node of a binary
// search tree of the positions before it in the dictionary, ordered by
// the bytes that follow them, so a walk from the newest position with the
// same 4-byte hash finds the longest matches among all of them, not only
// among the most recent ones as a hash chain does: on make bench's new
// files it made the optimal parser's output 2–4 % smaller than a hash
// chain of the same depth. Positions with the same 2- and 3-byte prefixes
// are kept for short matches.
type treeFinder struct {
	buf   []byte
	head2 []int32
	head3 []int32
	head4 []int32
	bits4 uint
	// son holds each position's two children (smaller, larger) by
	// position modulo window; positions more than window-1 back are
	// forgotten.
	son    []int32
	window int
	dict   int
	depth  int
	nice   int
	next   int // the next position to add to the tree
}

const (
	tree2Bits = 10
	tree3Bits = 16
)

// newTreeFinder indexes buf for matches at most dict bytes back, walking
// at most depth tree nodes a position and stopping at nice bytes.
func newTreeFinder(buf []byte, dict, depth, nice int) *treeFinder {
	window := max(min(dict+1, len(buf)), 2)
	bits4 := uint(16)
	for bits4 < 22 && 1<<(bits4+1) <= window {
		bits4++
	}
	f := &treeFinder{buf: buf, head2: make([]int32, 1<<tree2Bits), head3: make([]int32, 1<<tree3Bits),
		head4: make([]int32, 1<<bits4), bits4: bits4, son: make([]int32, 2*window), window: window,
		dict: min(dict, window-1), depth: depth, nice: nice}
	for _, h := range [][]int32{f.head2, f.head3, f.head4} {
		for i := range h {
			h[i] = -1
		}
	}
	return f
}

// heads returns the newest earlier positions with the same 2-, 3- and
// 4-byte prefixes as pos and makes pos the newest of each.
func (f *treeFinder) heads(pos int) (c2, c3, c4 int) {
	v := binary.LittleEndian.Uint32(f.buf[pos:])
	h2 := (v & 0xffff) * 2654435761 >> (32 - tree2Bits)
	h3 := (v & 0xffffff) * 506832829 >> (32 - tree3Bits)
	h4 := v * 2654435761 >> (32 - f.bits4)
	c2, c3, c4 = int(f.head2[h2]), int(f.head3[h3]), int(f.head4[h4])
	f.head2[h2], f.head3[h3], f.head4[h4] = int32(pos), int32(pos), int32(pos)
	return
}

// walk adds pos to the tree, starting from cand (the newest position with
// pos's 4-byte hash), and appends to out the matches it meets that are
// longer than best, each longer than the one before.
func (f *treeFinder) walk(pos, cand, best int, out []found, collect bool) []found {
	buf := f.buf
	limit := min(len(buf)-pos, lzmaMaxMatch)
	nice := min(f.nice, limit)
	node := pos % f.window
	// Where the next smaller and larger subtree hang: the right child of
	// the last smaller node and the left child of the last larger one.
	smaller, larger := 2*node, 2*node+1
	lenSmaller, lenLarger := 0, 0
	for range f.depth {
		d := pos - cand
		if cand < 0 || d <= 0 || d > f.dict {
			break
		}
		pair := node - d
		if pair < 0 {
			pair += f.window
		}
		pair *= 2
		l := min(lenSmaller, lenLarger)
		if buf[cand+l] == buf[pos+l] {
			l += matchLen(buf, pos+l+1, cand+l+1, limit-l-1) + 1
			if l > best {
				best = l
				if collect {
					out = append(out, found{uint32(l), uint32(d - 1)})
				}
			}
			if l >= nice {
				// The node's children become pos's: cand itself leaves
				// the tree (pos is as good and nearer).
				f.son[smaller], f.son[larger] = f.son[pair], f.son[pair+1]
				return out
			}
		}
		if buf[cand+l] < buf[pos+l] {
			f.son[smaller] = int32(cand)
			smaller = pair + 1
			cand = int(f.son[smaller])
			lenSmaller = l
		} else {
			f.son[larger] = int32(cand)
			larger = pair
			cand = int(f.son[larger])
			lenLarger = l
		}
	}
	f.son[smaller], f.son[larger] = -1, -1
	return out
}

// findAll adds pos and appends to out the matches at pos that are longer
// than every nearer one (so their lengths rise with their distances),
// stopping at the nice length.
func (f *treeFinder) findAll(pos int, out []found) []found {
	f.skip(pos)
	f.next = pos + 1
	limit := min(len(f.buf)-pos, lzmaMaxMatch)
	if limit < 4 {
		return out // the tail: too short to index (matches of 2–3 go uncoded)
	}
	c2, c3, c4 := f.heads(pos)
	best := 1
	for _, c := range [2]int{c2, c3} {
		if d := pos - c; c >= 0 && d <= f.dict {
			if l := matchLen(f.buf, pos, c, limit); l > best {
				best = l
				out = append(out, found{uint32(l), uint32(d - 1)})
				if l == limit || l >= f.nice {
					f.walk(pos, c4, lzmaMaxMatch, nil, false)
					return out
				}
			}
		}
	}
	return f.walk(pos, c4, best, out, true)
}

// skip adds the positions before pos to the tree without finding their
// matches.
func (f *treeFinder) skip(pos int) {
	for ; f.next < pos; f.next++ {
		if len(f.buf)-f.next < 4 {
			continue
		}
		_, _, c4 := f.heads(f.next)
		f.walk(f.next, c4, lzmaMaxMatch, nil, false)
	}
}

// matchSource gives the optimal parser the matches at rising positions
// (some skipped), from a tree finder it runs itself or from one that runs
// ahead on another goroutine. Both give the same matches, so the same
// output.
type matchSource interface {
	// at returns the matches at pos, valid until the next call.
	at(pos int) []found
	// close stops the work ahead, if any.
	close()
}

// inlineMatches runs the tree finder in the parser's goroutine: a
// position the parser skips is added to the tree without a search.
type inlineMatches struct {
	f   *treeFinder
	out []found
}

func (m *inlineMatches) at(pos int) []found {
	m.out = m.f.findAll(pos, m.out[:0])
	return m.out
}

func (m *inlineMatches) close() {}

// matchBatch is the matches of positions [start, start+len(offs)-1):
// those of position start+i are found[offs[i]:offs[i+1]].
type matchBatch struct {
	start int
	offs  []int32
	found []found
}

// batchPositions is how many positions one matchBatch holds.
const batchPositions = 1 << 16

// aheadMatches runs the tree finder on its own goroutine over every
// position, a few batches ahead of the parser: the finder is two thirds
// of the optimal parser's time, so one run then takes both cores. (The
// searches at positions the parser skips cost no more than adding them to
// the tree without one.)
type aheadMatches struct {
	batches chan *matchBatch
	free    chan *matchBatch
	done    chan struct{}
	cur     *matchBatch
}

func newAheadMatches(f *treeFinder) *aheadMatches {
	m := &aheadMatches{batches: make(chan *matchBatch, 3), free: make(chan *matchBatch, 4), done: make(chan struct{})}
	go func() {
		defer close(m.batches)
		for start := 0; start < len(f.buf); start += batchPositions {
			var b *matchBatch
			select {
			case b = <-m.free:
			default:
				b = &matchBatch{}
			}
			b.start, b.offs, b.found = start, b.offs[:0], b.found[:0]
			for pos := start; pos < min(start+batchPositions, len(f.buf)); pos++ {
				b.offs = append(b.offs, int32(len(b.found)))
				b.found = f.findAll(pos, b.found)
			}
			b.offs = append(b.offs, int32(len(b.found)))
			select {
			case m.batches <- b:
			case <-m.done:
				return
			}
		}
	}()
	return m
}

func (m *aheadMatches) at(pos int) []found {
	for m.cur == nil || pos >= m.cur.start+len(m.cur.offs)-1 {
		if m.cur != nil {
			select {
			case m.free <- m.cur:
			default:
			}
		}
		m.cur = <-m.batches
		if m.cur == nil {
			panic("xzstream: match finder ended before the input")
		}
	}
	i := pos - m.cur.start
	return m.cur.found[m.cur.offs[i]:m.cur.offs[i+1]]
}

func (m *aheadMatches) close() {
	close(m.done)
	for range m.batches { // let the finder end
	}
}
