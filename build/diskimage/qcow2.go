package diskimage

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

// qcow2 version 3 (QEMU's docs/interop/qcow2.txt), as kiln writes it:
// 64 KiB clusters, 16-bit refcounts, no backing file, no snapshots. The
// header cluster, then the data clusters in guest order (zero clusters
// are left out: unallocated clusters read as zeros), then the L2 tables,
// the L1 table, the refcount table and the refcount blocks. Metadata comes
// last so that the file is written in one pass; its layout depends on the
// content only.
const (
	qcowMagic          = 0x514649fb // "QFI\xfb"
	qcowClusterBits    = 16
	qcowCluster        = 1 << qcowClusterBits
	qcowL2Entries      = qcowCluster / 8
	qcowRefcountOrder  = 4 // 16-bit refcounts
	qcowRefsPerBlock   = qcowCluster * 8 / (1 << qcowRefcountOrder)
	qcowHeaderLength   = 112
	qcowOflagCopied    = 1 << 63
	qcowOflagCompr     = 1 << 62
	qcowIncompatCompr  = 1 << 3 // incompatible feature: compression type
	qcowCompressZstd   = 1
	qcowCsizeShift     = 62 - (qcowClusterBits - 8)
	qcowCsizeMask      = (1 << (qcowClusterBits - 8)) - 1
	qcowOffsetMask     = (1 << qcowCsizeShift) - 1
	qcowMaxVirtualSize = 1 << 51 // an L1 table of 32 MiB, QEMU's largest
)

// qcowZstdLevel is the zstd level of compressed clusters: zstd's default.
const qcowZstdLevel = zstd.SpeedDefault

func writeQCOW2(ctx context.Context, dst io.WriterAt, src *Source, o Options, compress bool) (int64, error) {
	vsize := VirtualSize(QCOW2, src.Size())
	if vsize > qcowMaxVirtualSize {
		return 0, ErrTooLarge
	}
	l1Size := (vsize + qcowCluster*qcowL2Entries - 1) / (qcowCluster * qcowL2Entries)
	l2 := make([][]uint64, l1Size) // in memory: the L2 tables that have entries
	var refs []uint16              // per host cluster
	ref := func(c int64) {
		for int64(len(refs)) <= c {
			refs = append(refs, 0)
		}
		refs[c]++
	}
	ref(0) // the header
	out := newAppender(dst, qcowCluster)

	var enc *zstd.Encoder
	p := &pipeline{src: src, bs: 1 << 20, workers: o.Workers, progress: o.Progress}
	if compress {
		var err error
		enc, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(qcowZstdLevel), zstd.WithEncoderConcurrency(o.Workers),
			zstd.WithEncoderCRC(false), zstd.WithLowerEncoderMem(true))
		if err != nil {
			return 0, fmt.Errorf("zstd encoder: %w", err)
		}
		defer enc.Close()
		p.work = func(b *block) error {
			b.out = make([][]byte, len(b.zero))
			for u, z := range b.zero {
				if z {
					continue
				}
				c := enc.EncodeAll(padUnit(b.unit(u)), nil)
				// A cluster that does not shrink by a sector is stored
				// as it is.
				if len(c) <= qcowCluster-512 {
					b.out[u] = c
				}
			}
			return nil
		}
	}
	_, err := p.run(ctx, func(b *block) error {
		for u, z := range b.zero {
			if z {
				continue
			}
			g := b.off/qcowCluster + int64(u)
			var entry uint64
			if compress && b.out[u] != nil {
				c := b.out[u]
				host := out.pos()
				if host > qcowOffsetMask {
					return ErrTooLarge
				}
				extra := (host+int64(len(c))-1)>>9 - host>>9
				entry = qcowOflagCompr | uint64(extra)<<qcowCsizeShift | uint64(host)
				// The refcounts QEMU counts: every cluster the sectors
				// of the compressed data touch.
				csize := (extra+1)*512 - host&511
				for k := host / qcowCluster; k <= (host+csize-1)/qcowCluster; k++ {
					ref(k)
				}
				if _, err := out.Write(c); err != nil {
					return err
				}
			} else {
				if err := out.align(qcowCluster); err != nil {
					return err
				}
				host := out.pos()
				entry = qcowOflagCopied | uint64(host)
				ref(host / qcowCluster)
				if _, err := out.Write(padUnit(b.unit(u))); err != nil {
					return err
				}
			}
			t := l2[g/qcowL2Entries]
			if t == nil {
				t = make([]uint64, qcowL2Entries)
				l2[g/qcowL2Entries] = t
			}
			t[g%qcowL2Entries] = entry
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if err := out.align(qcowCluster); err != nil {
		return 0, err
	}
	// The L2 tables, then the L1 table.
	l1 := make([]byte, roundUp(l1Size*8, qcowCluster))
	for i, t := range l2 {
		if t == nil {
			continue
		}
		host := out.pos()
		binary.BigEndian.PutUint64(l1[i*8:], qcowOflagCopied|uint64(host))
		ref(host / qcowCluster)
		if _, err := out.Write(be64s(t)); err != nil {
			return 0, err
		}
	}
	l1Offset := out.pos()
	for c := range int64(len(l1)) / qcowCluster {
		ref(l1Offset/qcowCluster + c)
	}
	if _, err := out.Write(l1); err != nil {
		return 0, err
	}
	// The refcount table and blocks count themselves: find the sizes
	// that cover every cluster, theirs included.
	n := out.pos() / qcowCluster
	tableClusters, blocks := int64(1), int64(1)
	for {
		b := (n + tableClusters + blocks + qcowRefsPerBlock - 1) / qcowRefsPerBlock
		t := (b*8 + qcowCluster - 1) / qcowCluster
		if b == blocks && t == tableClusters {
			break
		}
		blocks, tableClusters = b, t
	}
	tableOffset := n * qcowCluster
	for c := range tableClusters + blocks {
		ref(n + c)
	}
	table := make([]byte, tableClusters*qcowCluster)
	for i := range blocks {
		binary.BigEndian.PutUint64(table[i*8:], uint64((n+tableClusters+i)*qcowCluster))
	}
	if _, err := out.Write(table); err != nil {
		return 0, err
	}
	block := make([]byte, qcowCluster)
	for i := range blocks {
		clear(block)
		for j := range int64(qcowRefsPerBlock) {
			if c := i*qcowRefsPerBlock + j; c < int64(len(refs)) {
				binary.BigEndian.PutUint16(block[j*2:], refs[c])
			}
		}
		if _, err := out.Write(block); err != nil {
			return 0, err
		}
	}
	size := out.pos()
	if err := out.flush(); err != nil {
		return 0, err
	}

	h := make([]byte, qcowCluster)
	be := binary.BigEndian
	be.PutUint32(h[0:], qcowMagic)
	be.PutUint32(h[4:], 3)
	be.PutUint32(h[20:], qcowClusterBits)
	be.PutUint64(h[24:], uint64(vsize))
	be.PutUint32(h[36:], uint32(l1Size))
	be.PutUint64(h[40:], uint64(l1Offset))
	be.PutUint64(h[48:], uint64(tableOffset))
	be.PutUint32(h[56:], uint32(tableClusters))
	if compress {
		be.PutUint64(h[72:], qcowIncompatCompr)
		h[104] = qcowCompressZstd
	}
	be.PutUint32(h[96:], qcowRefcountOrder)
	be.PutUint32(h[100:], qcowHeaderLength)
	// Header extensions: none; the zeros after the header are the end
	// marker.
	if _, err := out.WriteAt(h, 0); err != nil {
		return 0, err
	}
	return size, nil
}

// padUnit returns a whole unit: u, zero-padded when it is the short last
// one of the disk.
func padUnit(u []byte) []byte {
	if len(u) == unitSize {
		return u
	}
	b := make([]byte, unitSize)
	copy(b, u)
	return b
}

func be64s(v []uint64) []byte {
	b := make([]byte, len(v)*8)
	for i, x := range v {
		binary.BigEndian.PutUint64(b[i*8:], x)
	}
	return b
}
