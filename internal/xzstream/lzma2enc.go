package xzstream

import (
	"context"
	"encoding/binary"
	"math/bits"
)

// An LZMA2 encoder for data held whole in memory (a payload operation's
// solid run), written for kiln: ulikunitz/xz's encoder, a greedy parser
// over a 4-byte hash table, leaves x86 code 21 % larger than xz's at the
// same dictionary size. This one parses as xz's fast mode does (a hash
// chain match finder, repeat-distance matches preferred where they are
// nearly as long, one step of lazy evaluation) and codes as the LZMA
// specification says; chunks follow LZMA2's limits (2 MiB in, 64 KiB out).

// LZMA model sizes (from the LZMA specification).
const (
	lzmaStates       = 12
	lzmaPosBits      = 2 // pb
	lzmaLitCtxBits   = 3 // lc (lp is 0)
	lzmaPosStates    = 1 << lzmaPosBits
	lzmaMinMatch     = 2
	lzmaMaxMatch     = 273
	lzmaLenToPos     = 4
	lzmaEndPosModel  = 14
	lzmaFullDistance = 128
	lzmaAlignBits    = 4
	lzmaProbInit     = 1024
	lzmaProps        = (lzmaPosBits*5+0)*9 + lzmaLitCtxBits

	lzma2MaxUnpacked = 2 << 20
	lzma2MaxPacked   = 64 << 10
	// lzma2PackedMargin is room for the longest symbol and the range
	// coder's flush: a chunk ends before its packed size could pass the
	// limit.
	lzma2PackedMargin = 128
)

// rangeEncoder is LZMA's binary arithmetic coder.
type rangeEncoder struct {
	low       uint64
	rng       uint32
	cache     byte
	cacheSize int
	out       []byte
}

func (e *rangeEncoder) reset(out []byte) {
	*e = rangeEncoder{rng: 0xffffffff, cacheSize: 1, out: out}
}

func (e *rangeEncoder) shiftLow() {
	if uint32(e.low) < 0xff000000 || e.low>>32 != 0 {
		carry := byte(e.low >> 32)
		b := e.cache
		for ; e.cacheSize > 0; e.cacheSize-- {
			e.out = append(e.out, b+carry)
			b = 0xff
		}
		e.cache = byte(e.low >> 24)
	}
	e.cacheSize++
	e.low = uint64(uint32(e.low) << 8)
}

func (e *rangeEncoder) bit(p *uint16, b uint32) {
	bound := (e.rng >> 11) * uint32(*p)
	if b == 0 {
		e.rng = bound
		*p += (2048 - *p) >> 5
	} else {
		e.low += uint64(bound)
		e.rng -= bound
		*p -= *p >> 5
	}
	for e.rng < 1<<24 {
		e.rng <<= 8
		e.shiftLow()
	}
}

func (e *rangeEncoder) direct(v uint32, n int) {
	for i := n - 1; i >= 0; i-- {
		e.rng >>= 1
		if (v>>i)&1 != 0 {
			e.low += uint64(e.rng)
		}
		for e.rng < 1<<24 {
			e.rng <<= 8
			e.shiftLow()
		}
	}
}

func (e *rangeEncoder) flush() {
	for range 5 {
		e.shiftLow()
	}
}

// pending is the number of bytes the chunk holds once flushed, at most.
func (e *rangeEncoder) pending() int { return len(e.out) + e.cacheSize + 5 }

// bitTree codes v in n bits, most significant first.
func (e *rangeEncoder) bitTree(probs []uint16, n int, v uint32) {
	m := uint32(1)
	for i := n - 1; i >= 0; i-- {
		b := (v >> i) & 1
		e.bit(&probs[m], b)
		m = m<<1 | b
	}
}

// bitTreeReverse codes v in n bits, least significant first.
func (e *rangeEncoder) bitTreeReverse(probs []uint16, n int, v uint32) {
	m := uint32(1)
	for i := range n {
		b := (v >> i) & 1
		e.bit(&probs[m], b)
		m = m<<1 | b
	}
}

// lenCoder codes match lengths.
type lenCoder struct {
	choice, choice2 uint16
	low, mid        [lzmaPosStates][8]uint16
	high            [256]uint16
}

func (c *lenCoder) encode(e *rangeEncoder, l uint32, posState uint32) {
	l -= lzmaMinMatch
	switch {
	case l < 8:
		e.bit(&c.choice, 0)
		e.bitTree(c.low[posState][:], 3, l)
	case l < 16:
		e.bit(&c.choice, 1)
		e.bit(&c.choice2, 0)
		e.bitTree(c.mid[posState][:], 3, l-8)
	default:
		e.bit(&c.choice, 1)
		e.bit(&c.choice2, 1)
		e.bitTree(c.high[:], 8, l-16)
	}
}

// lzmaModel is the adaptive state both coder and decoder keep.
type lzmaModel struct {
	state      uint32
	reps       [4]uint32 // the last four distances, minus one
	isMatch    [lzmaStates][lzmaPosStates]uint16
	isRep      [lzmaStates]uint16
	isRepG0    [lzmaStates]uint16
	isRepG1    [lzmaStates]uint16
	isRepG2    [lzmaStates]uint16
	isRep0Long [lzmaStates][lzmaPosStates]uint16
	literal    [1 << lzmaLitCtxBits][0x300]uint16
	posSlot    [lzmaLenToPos][64]uint16
	posSpecial [1 + lzmaFullDistance - lzmaEndPosModel]uint16
	align      [1 << lzmaAlignBits]uint16
	matchLen   lenCoder
	repLen     lenCoder
}

func (m *lzmaModel) reset() {
	*m = lzmaModel{}
	fill := func(p []uint16) {
		for i := range p {
			p[i] = lzmaProbInit
		}
	}
	for i := range m.isMatch {
		fill(m.isMatch[i][:])
		fill(m.isRep0Long[i][:])
	}
	fill(m.isRep[:])
	fill(m.isRepG0[:])
	fill(m.isRepG1[:])
	fill(m.isRepG2[:])
	for i := range m.literal {
		fill(m.literal[i][:])
	}
	for i := range m.posSlot {
		fill(m.posSlot[i][:])
	}
	fill(m.posSpecial[:])
	fill(m.align[:])
	for _, c := range []*lenCoder{&m.matchLen, &m.repLen} {
		c.choice, c.choice2 = lzmaProbInit, lzmaProbInit
		for i := range c.low {
			fill(c.low[i][:])
			fill(c.mid[i][:])
		}
		fill(c.high[:])
	}
}

// lzmaEncoder codes one input into LZMA2 chunks.
type lzmaEncoder struct {
	m   lzmaModel
	rc  rangeEncoder
	buf []byte
}

func (c *lzmaEncoder) literal(pos int) {
	m, e := &c.m, &c.rc
	posState := uint32(pos) & (lzmaPosStates - 1)
	e.bit(&m.isMatch[m.state][posState], 0)
	var prev byte
	if pos > 0 {
		prev = c.buf[pos-1]
	}
	probs := m.literal[prev>>(8-lzmaLitCtxBits)][:]
	b := uint32(c.buf[pos])
	sym := uint32(1)
	if m.state >= 7 {
		// A literal right after a match: coded against the byte at the
		// last distance, while its bits agree.
		mb := uint32(c.buf[pos-int(m.reps[0])-1])
		for i := 7; i >= 0; i-- {
			bit, mbit := (b>>i)&1, (mb>>i)&1
			e.bit(&probs[(1+mbit)<<8+sym], bit)
			sym = sym<<1 | bit
			if bit != mbit {
				for i--; i >= 0; i-- {
					bit := (b >> i) & 1
					e.bit(&probs[sym], bit)
					sym = sym<<1 | bit
				}
				break
			}
		}
	} else {
		for i := 7; i >= 0; i-- {
			bit := (b >> i) & 1
			e.bit(&probs[sym], bit)
			sym = sym<<1 | bit
		}
	}
	switch {
	case m.state < 4:
		m.state = 0
	case m.state < 10:
		m.state -= 3
	default:
		m.state -= 6
	}
}

func posSlotOf(dist uint32) uint32 {
	if dist < 4 {
		return dist
	}
	n := uint32(bits.Len32(dist)) - 1
	return n<<1 | (dist>>(n-1))&1
}

// match codes a match of length l at distance dist+1.
func (c *lzmaEncoder) match(pos int, dist, l uint32) {
	m, e := &c.m, &c.rc
	posState := uint32(pos) & (lzmaPosStates - 1)
	e.bit(&m.isMatch[m.state][posState], 1)
	e.bit(&m.isRep[m.state], 0)
	m.matchLen.encode(e, l, posState)
	slot := posSlotOf(dist)
	e.bitTree(m.posSlot[min(l-lzmaMinMatch, lzmaLenToPos-1)][:], 6, slot)
	if slot >= 4 {
		footer := int(slot>>1) - 1
		base := (2 | slot&1) << footer
		reduced := dist - base
		if slot < lzmaEndPosModel {
			e.bitTreeReverse(m.posSpecial[base-slot:], footer, reduced)
		} else {
			e.direct(reduced>>lzmaAlignBits, footer-lzmaAlignBits)
			e.bitTreeReverse(m.align[:], lzmaAlignBits, reduced&(1<<lzmaAlignBits-1))
		}
	}
	m.reps = [4]uint32{dist, m.reps[0], m.reps[1], m.reps[2]}
	if m.state < 7 {
		m.state = 7
	} else {
		m.state = 10
	}
}

// rep codes a match of length l at the distance of reps[r]; l 1 at r 0
// is a "short rep", one byte.
func (c *lzmaEncoder) rep(pos int, r int, l uint32) {
	m, e := &c.m, &c.rc
	posState := uint32(pos) & (lzmaPosStates - 1)
	e.bit(&m.isMatch[m.state][posState], 1)
	e.bit(&m.isRep[m.state], 1)
	if r == 0 {
		e.bit(&m.isRepG0[m.state], 0)
		long := uint32(0)
		if l > 1 {
			long = 1
		}
		e.bit(&m.isRep0Long[m.state][posState], long)
	} else {
		e.bit(&m.isRepG0[m.state], 1)
		if r == 1 {
			e.bit(&m.isRepG1[m.state], 0)
		} else {
			e.bit(&m.isRepG1[m.state], 1)
			e.bit(&m.isRepG2[m.state], uint32(r-2))
		}
		d := m.reps[r]
		copy(m.reps[1:r+1], m.reps[:r])
		m.reps[0] = d
	}
	if l == 1 {
		if m.state < 7 {
			m.state = 9
		} else {
			m.state = 11
		}
		return
	}
	m.repLen.encode(e, l, posState)
	if m.state < 7 {
		m.state = 8
	} else {
		m.state = 11
	}
}

// matchFinder is a hash chain over 4-byte prefixes, with a table of the
// last position of each 3-byte prefix for short matches.
type matchFinder struct {
	buf   []byte
	head4 []int32
	head3 []int32
	chain []int32 // previous position with the same 4-byte hash, by pos & mask
	mask  int
	dict  int
	depth int
	nice  int
	next  int // the next position to insert
}

// found is a match: its length and distance minus one.
type found struct{ l, dist uint32 }

const (
	hash4Bits = 20
	hash3Bits = 16
)

func newMatchFinder(buf []byte, dict, depth, nice int) *matchFinder {
	size := 1
	for size < dict {
		size <<= 1
	}
	f := &matchFinder{buf: buf, head4: make([]int32, 1<<hash4Bits), head3: make([]int32, 1<<hash3Bits),
		chain: make([]int32, min(size, max(len(buf), 1))), dict: dict, depth: depth, nice: nice}
	// The chain is indexed by pos modulo its length, a power of two no
	// larger than needed.
	n := 1
	for n < len(f.chain) {
		n <<= 1
	}
	if n != len(f.chain) {
		f.chain = make([]int32, n)
	}
	f.mask = n - 1
	for i := range f.head4 {
		f.head4[i] = -1
	}
	for i := range f.head3 {
		f.head3[i] = -1
	}
	return f
}

func hash4(b []byte) uint32 { return (binary.LittleEndian.Uint32(b) * 2654435761) >> (32 - hash4Bits) }
func hash3(b []byte) uint32 {
	return ((uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16) * 506832829) >> (32 - hash3Bits)
}

// insert adds positions up to pos (exclusive) to the tables.
func (f *matchFinder) insert(pos int) {
	for ; f.next < pos; f.next++ {
		p := f.next
		if p+4 > len(f.buf) {
			continue
		}
		h := hash4(f.buf[p:])
		f.chain[p&f.mask] = f.head4[h]
		f.head4[h] = int32(p)
		f.head3[hash3(f.buf[p:])] = int32(p)
	}
}

// matchLen returns how many bytes at a and b agree, up to limit.
func matchLen(buf []byte, a, b, limit int) int {
	n := 0
	for n+8 <= limit {
		x := binary.LittleEndian.Uint64(buf[a+n:]) ^ binary.LittleEndian.Uint64(buf[b+n:])
		if x != 0 {
			return n + bits.TrailingZeros64(x)>>3
		}
		n += 8
	}
	for n < limit && buf[a+n] == buf[b+n] {
		n++
	}
	return n
}

// find inserts the positions before pos and returns the longest match
// at pos (l 0 when none of length 2 or more), and the best match one byte
// shorter than it, when found (for the choice of the nearer of two).
func (f *matchFinder) find(pos int) (best, shorter found) {
	f.insert(pos)
	limit := min(len(f.buf)-pos, lzmaMaxMatch)
	if limit < lzmaMinMatch {
		f.insert(pos + 1)
		return
	}
	consider := func(cand int) bool {
		d := pos - cand
		if cand < 0 || d <= 0 || d > f.dict {
			return false
		}
		l := matchLen(f.buf, pos, cand, limit)
		if l > int(best.l) {
			if l == int(best.l)+1 {
				shorter = best
			} else {
				shorter = found{}
			}
			best = found{uint32(l), uint32(d - 1)}
		}
		return l >= f.nice || l == limit
	}
	if limit >= 3 {
		if consider(int(f.head3[hash3(f.buf[pos:])])) {
			f.insert(pos + 1)
			return
		}
	}
	if limit >= 4 {
		cand := int(f.head4[hash4(f.buf[pos:])])
		for range f.depth {
			if cand < 0 || pos-cand > f.dict {
				break
			}
			if consider(cand) {
				break
			}
			next := int(f.chain[cand&f.mask])
			if next >= cand {
				break
			}
			cand = next
		}
	}
	if best.l < lzmaMinMatch {
		best = found{}
	}
	f.insert(pos + 1)
	return
}

// changePair reports whether distance big is so much larger than small
// that a match one byte shorter at small is the better choice.
func changePair(small, big uint32) bool { return big>>7 > small }

// AppendLZMA2 appends to dst the LZMA2 chunks coding data with a
// dictionary of dict bytes: a dictionary reset first and no end-of-stream
// byte, so that several such runs join into one stream. It stops with
// ctx's error soon after ctx is done.
func AppendLZMA2(ctx context.Context, dst, data []byte, dict int) ([]byte, error) {
	if len(data) == 0 {
		return dst, nil
	}
	out := encodeLZMA2(dst, data, dict, func() bool { return ctx.Err() != nil }, true, false)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return out[:len(out)-1], nil
}

// encodeLZMA2 appends to dst the LZMA2 coding of buf (lc 3, lp 0, pb 2,
// dictionary dict bytes), ending with the end-of-stream byte, with the
// fast parser or the optimal one (its match finder on a goroutine of its
// own when ahead is set). stop, when
// not nil, is asked at chunk boundaries (at most 2 MiB of input apart),
// once 256 KiB of input have passed since it was last asked, whether to
// give up: the output is then cut short.
func encodeLZMA2(dst, buf []byte, dict int, stop func() bool, fast, ahead bool) []byte {
	if len(buf) == 0 {
		return append(dst, 0)
	}
	c := &lzmaEncoder{buf: buf}
	c.m.reset()
	var p parser
	if fast {
		p = newFastParser(c, dict)
	} else {
		p = newOptimalParser(c, dict, ahead)
	}
	defer p.close()
	var queue []symbol // symbols chosen, queue[next:] not yet coded
	next := 0
	var chunk []byte
	pos, first := 0, true
	nextStop := 256 << 10
	for pos < len(buf) {
		if stop != nil && pos >= nextStop {
			if stop() {
				return append(dst, 0)
			}
			nextStop = pos + 256<<10
		}
		start := pos
		c.rc.reset(chunk[:0])
		for pos < len(buf) && pos-start+lzmaMaxMatch <= lzma2MaxUnpacked && c.rc.pending()+lzma2PackedMargin <= lzma2MaxPacked {
			if next == len(queue) {
				queue, next = p.next(pos, queue[:0]), 0
			}
			pos += c.emit(pos, queue[next])
			next++
		}
		c.rc.flush()
		chunk = c.rc.out
		// Chunk header: control (LZMA; reset of dictionary, state and
		// properties on the first chunk, nothing after), unpacked and
		// packed sizes minus one, big-endian.
		u, pk := pos-start-1, len(chunk)-1
		control := byte(0x80)
		if first {
			control = 0xe0
		}
		dst = append(dst, control|byte(u>>16), byte(u>>8), byte(u), byte(pk>>8), byte(pk))
		if first {
			dst = append(dst, lzmaProps)
			first = false
		}
		dst = append(dst, chunk...)
	}
	return append(dst, 0)
}

// symbol is one coded unit: a literal, a match, or a match at one of the
// last four distances ("rep"; length 1 at rep 0 is a short rep).
type symbol struct {
	kind uint8 // symLiteral, symMatch or symRep
	rep  uint8
	l    uint32
	dist uint32 // of a match, minus one
}

const (
	symLiteral = iota
	symMatch
	symRep
)

// emit codes s at pos and returns its length.
func (c *lzmaEncoder) emit(pos int, s symbol) int {
	switch s.kind {
	case symMatch:
		c.match(pos, s.dist, s.l)
	case symRep:
		c.rep(pos, int(s.rep), s.l)
	default:
		c.literal(pos)
		return 1
	}
	return int(s.l)
}

// parser chooses the symbols from pos on: at least one, appended to out.
// The symbols are coded before it is asked again, so it may read the
// coder's state.
type parser interface {
	next(pos int, out []symbol) []symbol
	// close ends the parser's work ahead, if any.
	close()
}

// fastParser chooses one symbol at a time, as xz's fast mode does.
type fastParser struct {
	c                 *lzmaEncoder
	f                 *matchFinder
	ahead, aheadShort found // the match at aheadAt, found while deciding aheadAt-1
	aheadAt           int
}

func newFastParser(c *lzmaEncoder, dict int) *fastParser {
	return &fastParser{c: c, f: newMatchFinder(c.buf, dict, 64, 273), aheadAt: -1}
}

func (fp *fastParser) close() {}

func (fp *fastParser) findAt(p int) (found, found) {
	if p == fp.aheadAt {
		return fp.ahead, fp.aheadShort
	}
	return fp.f.find(p)
}

// repLen is the length of the match at pos at rep distance r, up to limit.
func (c *lzmaEncoder) repLen(pos, r, limit int) int {
	d := int(c.m.reps[r]) + 1
	if d > pos {
		return 0
	}
	return matchLen(c.buf, pos, pos-d, limit)
}

func (fp *fastParser) next(pos int, out []symbol) []symbol {
	c, f, buf := fp.c, fp.f, fp.c.buf
	take := func(s symbol) []symbol {
		if s.kind != symLiteral {
			f.insert(pos + int(s.l))
		}
		return append(out, s)
	}
	limit := min(len(buf)-pos, lzmaMaxMatch)
	main, shorter := fp.findAt(pos)
	// The repeat distances: the longest match at one of them.
	bestRep, bestRepLen := 0, 0
	for r := range 4 {
		if l := c.repLen(pos, r, limit); l > bestRepLen {
			bestRep, bestRepLen = r, l
		}
	}
	repSym := symbol{kind: symRep, rep: uint8(bestRep), l: uint32(bestRepLen)}
	if bestRepLen >= f.nice || bestRepLen >= 2 && bestRepLen >= int(main.l) {
		return take(repSym)
	}
	if main.l >= uint32(f.nice) {
		return take(symbol{kind: symMatch, l: main.l, dist: main.dist})
	}
	if shorter.l >= 2 && changePair(shorter.dist, main.dist) {
		main = shorter
	}
	if main.l == 2 && main.dist >= 0x80 {
		main = found{}
	}
	if bestRepLen >= 2 && (bestRepLen+1 >= int(main.l) ||
		bestRepLen+2 >= int(main.l) && main.dist >= 1<<9 ||
		bestRepLen+3 >= int(main.l) && main.dist >= 1<<15) {
		return take(repSym)
	}
	if main.l < 2 || limit <= 2 {
		return take(c.literalOrShortRep(pos))
	}
	// One step of lazy evaluation: a better match at the next byte makes
	// this one a literal.
	fp.ahead, fp.aheadShort = f.find(pos + 1)
	fp.aheadAt = pos + 1
	if n := fp.ahead; n.l >= 2 && (n.l >= main.l && n.dist < main.dist ||
		n.l == main.l+1 && !changePair(main.dist, n.dist) ||
		n.l > main.l+1 ||
		n.l+1 >= main.l && main.l >= 3 && changePair(n.dist, main.dist)) {
		return take(c.literalOrShortRep(pos))
	}
	cut := max(int(main.l)-1, 2)
	for r := range 4 {
		if c.repLen(pos+1, r, min(cut, len(buf)-pos-1)) >= cut {
			return take(c.literalOrShortRep(pos))
		}
	}
	return take(symbol{kind: symMatch, l: main.l, dist: main.dist})
}

// literalOrShortRep chooses for the byte at pos a literal, or a one-byte
// match at the last distance when it is that byte and a match came just
// before (where a literal would be coded against it anyway).
func (c *lzmaEncoder) literalOrShortRep(pos int) symbol {
	d := int(c.m.reps[0]) + 1
	if c.m.state >= 7 && d <= pos && c.buf[pos] == c.buf[pos-d] {
		return symbol{kind: symRep, l: 1}
	}
	return symbol{kind: symLiteral}
}
