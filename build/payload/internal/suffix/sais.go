// Package suffix builds suffix arrays in linear time with the SA-IS
// algorithm (Nong, Zhang and Chan, "Linear Suffix Array Construction by
// Almost Pure Induced-Sorting", 2009). bsdiff searches one; the bzip2
// encoder sorts rotations with one.
package suffix

// Array returns the suffix array of t: the start offsets of t's suffixes
// in lexicographic order. len(t) must be below 1<<31.
func Array(t []byte) []int32 {
	sa := make([]int32, len(t))
	sais(t, sa, 256)
	return sa
}

// sais fills sa (len(sa) == len(t)) with the suffix array of t, whose
// symbols are below k. A virtual sentinel, smaller than every symbol,
// ends t.
func sais[T byte | int32](t []T, sa []int32, k int) {
	n := len(t)
	switch n {
	case 0:
		return
	case 1:
		sa[0] = 0
		return
	}
	// Classify suffixes: S (smaller than the next suffix) or L.
	stype := make([]bool, n)
	for i := n - 2; i >= 0; i-- {
		stype[i] = t[i] < t[i+1] || (t[i] == t[i+1] && stype[i+1])
	}
	isLMS := func(i int) bool { return i > 0 && stype[i] && !stype[i-1] }

	counts := make([]int32, k)
	for _, c := range t {
		counts[c]++
	}
	bkt := make([]int32, k)
	ends := func() {
		var s int32
		for c, x := range counts {
			s += x
			bkt[c] = s
		}
	}
	starts := func() {
		var s int32
		for c, x := range counts {
			bkt[c] = s
			s += x
		}
	}
	induce := func() {
		starts()
		// The suffix before the sentinel is L-type and comes first in its bucket.
		c := t[n-1]
		sa[bkt[c]] = int32(n - 1)
		bkt[c]++
		for i := 0; i < n; i++ {
			j := int(sa[i]) - 1
			if j >= 0 && !stype[j] {
				c := t[j]
				sa[bkt[c]] = int32(j)
				bkt[c]++
			}
		}
		ends()
		for i := n - 1; i >= 0; i-- {
			j := int(sa[i]) - 1
			if j >= 0 && stype[j] {
				c := t[j]
				bkt[c]--
				sa[bkt[c]] = int32(j)
			}
		}
	}

	// (1) Sort LMS substrings: LMS positions at their bucket ends, induce.
	for i := range sa {
		sa[i] = -1
	}
	ends()
	for i := 1; i < n; i++ {
		if isLMS(i) {
			c := t[i]
			bkt[c]--
			sa[bkt[c]] = int32(i)
		}
	}
	induce()

	// (2) Compact the sorted LMS positions and name the substrings.
	m := 0
	for i := 0; i < n; i++ {
		if isLMS(int(sa[i])) {
			sa[m] = sa[i]
			m++
		}
	}
	for i := m; i < n; i++ {
		sa[i] = -1
	}
	name, prev := 0, -1
	for i := 0; i < m; i++ {
		pos := int(sa[i])
		diff := prev < 0
		for d := 0; !diff; d++ {
			if pos+d == n || prev+d == n || t[pos+d] != t[prev+d] || stype[pos+d] != stype[prev+d] {
				diff = true
			} else if d > 0 && (isLMS(pos+d) || isLMS(prev+d)) {
				break
			}
		}
		if diff {
			name++
			prev = pos
		}
		sa[m+pos/2] = int32(name - 1)
	}
	j := n - 1
	for i := n - 1; i >= m; i-- {
		if sa[i] >= 0 {
			sa[j] = sa[i]
			j--
		}
	}

	// (3) Sort the reduced string (recursively when names repeat), then
	// place the LMS suffixes in that order and induce the rest.
	s1 := sa[n-m:]
	if name < m {
		sais(s1, sa[:m], name)
	} else {
		for i := 0; i < m; i++ {
			sa[s1[i]] = int32(i)
		}
	}
	j = 0
	for i := 1; i < n; i++ {
		if isLMS(i) {
			s1[j] = int32(i)
			j++
		}
	}
	for i := 0; i < m; i++ {
		sa[i] = s1[sa[i]]
	}
	for i := m; i < n; i++ {
		sa[i] = -1
	}
	ends()
	for i := m - 1; i >= 0; i-- {
		j := sa[i]
		sa[i] = -1
		c := t[j]
		bkt[c]--
		sa[bkt[c]] = j
	}
	induce()
}
