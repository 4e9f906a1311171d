package xzstream

import (
	"math/rand/v2"
	"testing"
)

// TestTreeFinderLongestMatch: with an unbounded walk the binary-tree
// finder reports, at every position, the longest match of 4 bytes or more
// within the dictionary that a search of every earlier position finds;
// every match it reports is real, within the
// dictionary, and longer and farther than the one before. The
// dictionaries are smaller than the input, so the tree forgets positions
// as it slides; some positions are skipped, as inside a long match.
func TestTreeFinderLongestMatch(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 11))
	for _, c := range []struct{ n, dict int }{{20000, 1 << 20}, {40000, 4096}, {30000, 8192 + 100}} {
		buf := structured(rng, c.n)
		f := newTreeFinder(buf, c.dict, 1<<30, lzmaMaxMatch)
		var out []found
		for pos := 0; pos < len(buf); pos++ {
			if rng.IntN(8) == 0 { // skipped: added to the tree, not searched
				continue
			}
			out = f.findAll(pos, out[:0])
			limit := min(len(buf)-pos, lzmaMaxMatch)
			best, bestDist := 0, 0
			for d := 1; d <= min(pos, f.dict); d++ {
				if l := matchLen(buf, pos, pos-d, limit); l > best {
					best, bestDist = l, d
				}
			}
			prevL, prevD := 0, 0
			for _, m := range out {
				d := int(m.dist) + 1
				if d > f.dict || d > pos || int(m.l) > limit || matchLen(buf, pos, pos-d, limit) < int(m.l) {
					t.Fatalf("n %d dict %d pos %d: reported match %d at distance %d is not one", c.n, c.dict, pos, m.l, d)
				}
				if int(m.l) <= prevL || d <= prevD {
					t.Fatalf("n %d dict %d pos %d: matches out of order: %+v", c.n, c.dict, pos, out)
				}
				prevL, prevD = int(m.l), d
			}
			if best >= 4 && limit >= 4 {
				if prevL != best {
					t.Fatalf("n %d dict %d pos %d: longest match %d, want %d (distance %d)", c.n, c.dict, pos, prevL, best, bestDist)
				}
			}
		}
	}
}
