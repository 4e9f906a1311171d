package xzstream

import "io"

// x86 is the state of xz's x86 BCJ filter (filter ID 0x04), which turns
// the relative targets of E8 (CALL) and E9 (JMP) instructions into absolute
// ones on encoding, and back on decoding, so that calls to one function
// from many places become the same bytes for the LZMA2 coder. The rules
// (which E8/E9 bytes are converted, and how the two "most significant"
// address bytes are treated) are those of the .xz format, whose decoders
// (xz, liblzma, Python's lzma, xz-embedded in update_engine) must give the
// input back.
type x86 struct {
	pos      uint32 // stream position of the first byte not yet filtered
	prevPos  uint32 // position of the last E8/E9 byte seen
	prevMask uint32 // which of the last bytes before prevPos were E8/E9
}

func newX86(start uint32) *x86 { return &x86{pos: start, prevPos: start - 5} }

// msb reports whether b may be the top byte of a converted address.
func msb(b byte) bool { return b == 0 || b == 0xff }

var (
	x86Allowed = [8]bool{true, true, true, false, true, false, false, false}
	x86Bit     = [8]uint32{0, 1, 2, 2, 3, 3, 3, 3}
)

// filter converts buf in place (encoding when encode is set, else
// decoding) and returns how many bytes it is done with: all but the last
// four at most, which need the bytes after them and are given again in the
// next call (or left as they are at the end of the stream).
func (f *x86) filter(buf []byte, encode bool) int {
	if len(buf) < 5 {
		return 0
	}
	if f.pos-f.prevPos > 5 {
		f.prevPos = f.pos - 5
	}
	last := len(buf) - 5
	i := 0
	for i <= last {
		if buf[i] != 0xe8 && buf[i] != 0xe9 {
			i++
			continue
		}
		here := f.pos + uint32(i)
		if gap := here - f.prevPos; gap > 5 {
			f.prevMask = 0
		} else {
			for range gap {
				f.prevMask = (f.prevMask & 0x77) << 1
			}
		}
		f.prevPos = here
		top := buf[i+4]
		if !msb(top) || !x86Allowed[(f.prevMask>>1)&7] || f.prevMask>>1 >= 0x10 {
			i++
			f.prevMask |= 1
			if msb(top) {
				f.prevMask |= 0x10
			}
			continue
		}
		src := uint32(buf[i+1]) | uint32(buf[i+2])<<8 | uint32(buf[i+3])<<16 | uint32(top)<<24
		var dst uint32
		for {
			next := here + 5
			if encode {
				dst = src + next
			} else {
				dst = src - next
			}
			if f.prevMask == 0 {
				break
			}
			shift := x86Bit[f.prevMask>>1] * 8
			if !msb(byte(dst >> (24 - shift))) {
				break
			}
			src = dst ^ (1<<(32-shift) - 1)
		}
		buf[i+1] = byte(dst)
		buf[i+2] = byte(dst >> 8)
		buf[i+3] = byte(dst >> 16)
		buf[i+4] = ^byte((dst>>24)&1 - 1)
		i += 5
		f.prevMask = 0
	}
	f.pos += uint32(i)
	return i
}

// x86Reader decodes x86 BCJ data read from r.
type x86Reader struct {
	r       io.Reader
	f       *x86
	buf     []byte // buf[:decoded] is decoded; the rest needs the bytes after it
	decoded int
	off     int // buf[:off] has been returned
	eof     bool
	err     error
}

func (x *x86Reader) done() int { return x.decoded }

func (x *x86Reader) Read(p []byte) (int, error) {
	for {
		if x.off < x.done() {
			n := copy(p, x.buf[x.off:x.done()])
			x.off += n
			return n, nil
		}
		if x.eof {
			return 0, x.err
		}
		// Keep the undecoded tail, read more after it.
		rest := copy(x.buf, x.buf[x.off:])
		if x.buf == nil {
			x.buf = make([]byte, 0, 64<<10)
		}
		x.buf, x.off, x.decoded = x.buf[:rest], 0, 0
		n, err := x.r.Read(x.buf[rest:cap(x.buf)])
		x.buf = x.buf[:rest+n]
		x.decoded = x.f.filter(x.buf, false)
		if err != nil {
			// The last four bytes or fewer are never converted.
			x.eof, x.err, x.decoded = true, err, len(x.buf)
		}
	}
}
