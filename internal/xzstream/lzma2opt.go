package xzstream

import "math"

// The optimal parser: over a window of positions it finds the cheapest
// sequence of symbols by the coder's current prices (the bit costs its
// probabilities give), as xz's normal mode does, instead of deciding one
// symbol at a time.

// Prices are in 1/16 bit.
const (
	priceShift  = 4
	infinity    = math.MaxUint32 / 2
	optWindow   = 2048 // positions planned at once
	refreshBits = 1024 // bytes coded between two refreshes of the price tables
	// optDepth and optNice bound the tree match finder's walk (nodes a
	// position) and the match length that ends the search. Against 32 and
	// 64 (xz -6..-9 use 48 and 64): a depth of 48 made make bench's xz-max
	// delta 0.02 % smaller in 17 % more time; a nice length of 273 (xz
	// -9e's) made 16 MiB of its x86 code 0.8 % and of its other files 0.3 %
	// smaller, in 12 % more time.
	optDepth = 32
	optNice  = 273
)

// bitPrices[p>>4] is the cost of a 0 bit coded with probability p.
var bitPrices = func() (t [2048 >> 4]uint32) {
	for i := range t {
		p := (float64(i<<4) + 8) / 2048
		t[i] = uint32(math.Round(-math.Log2(p) * (1 << priceShift)))
	}
	return
}()

func bitPrice(p uint16, b uint32) uint32 {
	if b == 0 {
		return bitPrices[p>>4]
	}
	return bitPrices[(2048-p)>>4]
}

func bitTreePrice(probs []uint16, n int, v uint32) uint32 {
	var price uint32
	m := uint32(1)
	for i := n - 1; i >= 0; i-- {
		b := (v >> i) & 1
		price += bitPrice(probs[m], b)
		m = m<<1 | b
	}
	return price
}

func bitTreeReversePrice(probs []uint16, n int, v uint32) uint32 {
	var price uint32
	m := uint32(1)
	for i := range n {
		b := (v >> i) & 1
		price += bitPrice(probs[m], b)
		m = m<<1 | b
	}
	return price
}

// prices are the tables the optimal parser reads, made from the model.
type prices struct {
	matchLen, repLen [lzmaPosStates][lzmaMaxMatch + 1]uint32
	slot             [lzmaLenToPos][64]uint32 // with the direct bits of slots ≥ 14
	near             [lzmaLenToPos][lzmaFullDistance]uint32
	align            [1 << lzmaAlignBits]uint32
}

func (c *lenCoder) price(l uint32, posState uint32) uint32 {
	l -= lzmaMinMatch
	switch {
	case l < 8:
		return bitPrice(c.choice, 0) + bitTreePrice(c.low[posState][:], 3, l)
	case l < 16:
		return bitPrice(c.choice, 1) + bitPrice(c.choice2, 0) + bitTreePrice(c.mid[posState][:], 3, l-8)
	}
	return bitPrice(c.choice, 1) + bitPrice(c.choice2, 1) + bitTreePrice(c.high[:], 8, l-16)
}

func (t *prices) refresh(m *lzmaModel) {
	for ps := range uint32(lzmaPosStates) {
		for l := uint32(lzmaMinMatch); l <= lzmaMaxMatch; l++ {
			t.matchLen[ps][l] = m.matchLen.price(l, ps)
			t.repLen[ps][l] = m.repLen.price(l, ps)
		}
	}
	for ls := range lzmaLenToPos {
		for slot := range uint32(64) {
			p := bitTreePrice(m.posSlot[ls][:], 6, slot)
			if slot >= lzmaEndPosModel {
				p += (slot>>1 - 1 - lzmaAlignBits) << priceShift
			}
			t.slot[ls][slot] = p
		}
		for d := range uint32(lzmaFullDistance) {
			slot := posSlotOf(d)
			p := t.slot[ls][slot]
			if slot >= 4 {
				footer := int(slot>>1) - 1
				base := (2 | slot&1) << footer
				p += bitTreeReversePrice(m.posSpecial[base-slot:], footer, d-base)
			}
			t.near[ls][d] = p
		}
	}
	for v := range uint32(1 << lzmaAlignBits) {
		t.align[v] = bitTreeReversePrice(m.align[:], lzmaAlignBits, v)
	}
}

// distPrice is the cost of distance dist+1 for a match of length l.
func (t *prices) distPrice(dist, l uint32) uint32 {
	ls := min(l-lzmaMinMatch, lzmaLenToPos-1)
	if dist < lzmaFullDistance {
		return t.near[ls][dist]
	}
	return t.slot[ls][posSlotOf(dist)] + t.align[dist&(1<<lzmaAlignBits-1)]
}

// node is the cheapest known way to reach a position of the window: the
// node before it and the one to three symbols from there.
type node struct {
	price uint32
	from  int32 // the position before the symbols
	syms  [3]symbol
	nSyms uint8
	state uint32
	reps  [4]uint32
}

// optimalParser plans windows of up to optWindow positions.
type optimalParser struct {
	c       *lzmaEncoder
	f       *treeFinder
	src     matchSource
	t       prices
	nodes   []node
	matches []found
	refresh int // position after which the price tables are made again
	last    int // the farthest node of the window set so far
}

// relax records the symbol s from node from to node to when it is the
// cheapest way there yet.
func (op *optimalParser) relax(from, to int, price uint32, s symbol) {
	op.relaxSeq(from, to, price, [3]symbol{s}, 1)
}

// relaxSeq records the symbols seq[:n] from node from to node to when
// they are the cheapest way there yet.
func (op *optimalParser) relaxSeq(from, to int, price uint32, seq [3]symbol, n int) {
	nodes := op.nodes
	for op.last < to {
		op.last++
		nodes[op.last].price = infinity
	}
	nd := &nodes[to]
	if price >= nd.price {
		return
	}
	src := &nodes[from]
	nd.price, nd.from, nd.syms, nd.nSyms = price, int32(from), seq, uint8(n)
	nd.state, nd.reps = src.state, src.reps
	for _, s := range seq[:n] {
		nd.state = nextState(nd.state, s.kind, s.l)
		switch {
		case s.kind == symMatch:
			nd.reps = [4]uint32{s.dist, nd.reps[0], nd.reps[1], nd.reps[2]}
		case s.kind == symRep && s.rep > 0:
			d := nd.reps[s.rep]
			copy(nd.reps[1:s.rep+1], nd.reps[:s.rep])
			nd.reps[0] = d
		}
	}
}

// literalRep0 tries, after the symbols that end at position p in state s
// with last distance rep0+1 (reached from node i of the window at base
// at price), a literal at
// p and a match at rep0 from p+1: the way past one changed byte (a
// changed constant in code, a changed digit in text) that a path keeping
// only the cheapest way to p+1 would lose. seq[:n] are the symbols before.
func (op *optimalParser) literalRep0(base, i, p int, price, s, rep0 uint32, seq [3]symbol, n int) {
	buf := op.c.buf
	d := int(rep0) + 1
	q := p + 1
	if d > p || q >= len(buf) {
		return
	}
	l := matchLen(buf, q, q-d, min(len(buf)-q, optNice))
	if l < lzmaMinMatch {
		return
	}
	price += op.literalPrice(p, s, rep0)
	s = nextState(s, symLiteral, 0)
	posState := uint32(q) & (lzmaPosStates - 1)
	price += op.repPrice(0, s, posState) + op.t.repLen[posState][l]
	seq[n], seq[n+1] = symbol{kind: symLiteral}, symbol{kind: symRep, l: uint32(l)}
	op.relaxSeq(i, q+l-base, price, seq, n+2)
}

// aheadMinInput is the input from which the optimal parser's match finder
// runs ahead on its own goroutine.
const aheadMinInput = 1 << 20

func newOptimalParser(c *lzmaEncoder, dict int, ahead bool) *optimalParser {
	op := &optimalParser{c: c, f: newTreeFinder(c.buf, dict, optDepth, optNice), nodes: make([]node, optWindow+2*lzmaMaxMatch+2)}
	if ahead && len(c.buf) >= aheadMinInput {
		op.src = newAheadMatches(op.f)
	} else {
		op.src = &inlineMatches{f: op.f}
	}
	return op
}

func nextState(s uint32, kind uint8, l uint32) uint32 {
	switch {
	case kind == symLiteral:
		switch {
		case s < 4:
			return 0
		case s < 10:
			return s - 3
		}
		return s - 6
	case kind == symMatch:
		if s < 7 {
			return 7
		}
		return 10
	case l == 1:
		if s < 7 {
			return 9
		}
		return 11
	}
	if s < 7 {
		return 8
	}
	return 11
}

// literalPrice is the cost of the byte at pos as a literal after a node
// in state s with last distance rep0+1.
func (op *optimalParser) literalPrice(pos int, s, rep0 uint32) uint32 {
	m, buf := &op.c.m, op.c.buf
	posState := uint32(pos) & (lzmaPosStates - 1)
	price := bitPrice(m.isMatch[s][posState], 0)
	var prev byte
	if pos > 0 {
		prev = buf[pos-1]
	}
	probs := m.literal[prev>>(8-lzmaLitCtxBits)][:]
	b := uint32(buf[pos])
	sym := uint32(1)
	i := 7
	if s >= 7 && int(rep0) < pos {
		mb := uint32(buf[pos-int(rep0)-1])
		for ; i >= 0; i-- {
			bit, mbit := (b>>i)&1, (mb>>i)&1
			price += bitPrice(probs[(1+mbit)<<8+sym], bit)
			sym = sym<<1 | bit
			if bit != mbit {
				i--
				break
			}
		}
	}
	for ; i >= 0; i-- {
		bit := (b >> i) & 1
		price += bitPrice(probs[sym], bit)
		sym = sym<<1 | bit
	}
	return price
}

// repPrice is the cost of the rep-match flags for rep r (without the
// length) in state s.
func (op *optimalParser) repPrice(r int, s, posState uint32) uint32 {
	m := &op.c.m
	p := bitPrice(m.isMatch[s][posState], 1) + bitPrice(m.isRep[s], 1)
	switch r {
	case 0:
		return p + bitPrice(m.isRepG0[s], 0) + bitPrice(m.isRep0Long[s][posState], 1)
	case 1:
		return p + bitPrice(m.isRepG0[s], 1) + bitPrice(m.isRepG1[s], 0)
	}
	return p + bitPrice(m.isRepG0[s], 1) + bitPrice(m.isRepG1[s], 1) + bitPrice(m.isRepG2[s], uint32(r-2))
}

func (op *optimalParser) close() { op.src.close() }

func (op *optimalParser) next(pos int, out []symbol) []symbol {
	c, f, buf := op.c, op.f, op.c.buf
	if pos >= op.refresh {
		op.t.refresh(&c.m)
		op.refresh = pos + refreshBits
	}
	n := op.nodes
	end := min(len(buf)-pos, optWindow)
	n[0] = node{state: c.m.state, reps: c.m.reps}
	op.last = 0  // the farthest position reached; nodes past it are not set
	target := -1 // set when a long match ends the window early
	var long symbol
	for i := 0; i < end && i <= op.last; i++ {
		if i > 0 && i == op.last {
			break
		}
		p := pos + i
		cur := &n[i]
		if cur.price >= infinity {
			continue
		}
		limit := min(len(buf)-p, lzmaMaxMatch)
		posState := uint32(p) & (lzmaPosStates - 1)
		op.matches = op.src.at(p)
		// A match of the nice length or more ends the window: it is taken
		// as it is from the best way to reach it.
		if k := len(op.matches); k > 0 && int(op.matches[k-1].l) >= f.nice {
			target, long = i, symbol{kind: symMatch, l: op.matches[k-1].l, dist: op.matches[k-1].dist}
			break
		}
		// The literal (then perhaps a match at rep0), and the short rep.
		op.relax(i, i+1, cur.price+op.literalPrice(p, cur.state, cur.reps[0]), symbol{kind: symLiteral})
		if d := int(cur.reps[0]) + 1; d <= p && buf[p] != buf[p-d] {
			op.literalRep0(pos, i, p, cur.price, cur.state, cur.reps[0], [3]symbol{}, 0)
		}
		if d := int(cur.reps[0]) + 1; d <= p && buf[p] == buf[p-d] {
			sr := bitPrice(c.m.isMatch[cur.state][posState], 1) + bitPrice(c.m.isRep[cur.state], 1) +
				bitPrice(c.m.isRepG0[cur.state], 0) + bitPrice(c.m.isRep0Long[cur.state][posState], 0)
			op.relax(i, i+1, cur.price+sr, symbol{kind: symRep, l: 1})
		}
		if limit < lzmaMinMatch {
			continue
		}
		// The four repeat distances.
		longRep := false
		for r := range 4 {
			d := int(cur.reps[r]) + 1
			if d > p {
				continue
			}
			l := matchLen(buf, p, p-d, limit)
			if l < lzmaMinMatch {
				continue
			}
			if l >= f.nice {
				target, long, longRep = i, symbol{kind: symRep, rep: uint8(r), l: uint32(l)}, true
				break
			}
			base := cur.price + op.repPrice(r, cur.state, posState)
			for k := lzmaMinMatch; k <= l; k++ {
				op.relax(i, i+k, base+op.t.repLen[posState][k], symbol{kind: symRep, rep: uint8(r), l: uint32(k)})
			}
			rep := symbol{kind: symRep, rep: uint8(r), l: uint32(l)}
			op.literalRep0(pos, i, p+l, base+op.t.repLen[posState][l], nextState(cur.state, symRep, uint32(l)), cur.reps[r], [3]symbol{rep}, 1)
		}
		if longRep {
			break
		}
		// The matches: for each length, the nearest match that long.
		if len(op.matches) > 0 {
			base := cur.price + bitPrice(c.m.isMatch[cur.state][posState], 1) + bitPrice(c.m.isRep[cur.state], 0)
			k := uint32(lzmaMinMatch)
			for _, m := range op.matches {
				var dp [lzmaLenToPos]uint32
				for ls := range uint32(lzmaLenToPos) {
					dp[ls] = op.t.distPrice(m.dist, ls+lzmaMinMatch)
				}
				for ; k <= m.l; k++ {
					op.relax(i, i+int(k), base+op.t.matchLen[posState][k]+dp[min(k-lzmaMinMatch, lzmaLenToPos-1)],
						symbol{kind: symMatch, l: k, dist: m.dist})
				}
				// The match's whole length, a literal, and the match's
				// distance again.
				full := symbol{kind: symMatch, l: m.l, dist: m.dist}
				op.literalRep0(pos, i, p+int(m.l), base+op.t.matchLen[posState][m.l]+dp[min(m.l-lzmaMinMatch, lzmaLenToPos-1)],
					nextState(cur.state, symMatch, m.l), m.dist, [3]symbol{full}, 1)
			}
		}
	}
	if target < 0 {
		target = max(op.last, 1)
	}
	// Back from target to 0, then forward.
	start := len(out)
	for i := target; i > 0; i = int(n[i].from) {
		for k := int(n[i].nSyms) - 1; k >= 0; k-- {
			out = append(out, n[i].syms[k])
		}
	}
	for a, b := start, len(out)-1; a < b; a, b = a+1, b-1 {
		out[a], out[b] = out[b], out[a]
	}
	if long.l > 0 {
		out = append(out, long)
		target += int(long.l)
	}
	return out
}
