package fat

import (
	"fmt"
	"math"
)

// On-disk constants of the FAT32 volumes this package writes.
const (
	sectorSize      = 512
	reservedSectors = 32 // as fatgen103 recommends for FAT32
	numFATs         = 2
	fsInfoSector    = 1
	backupBootSec   = 6
	rootCluster     = 2
	entriesPerFATSc = sectorSize / 4

	// minClusters is the smallest cluster count that every driver that
	// follows fatgen103 reads as FAT32; fewer clusters are FAT12/16.
	minClusters = 65525
	// maxClusters keeps the largest cluster number (count+1) below
	// 0x0FFFFFF7, the bad-cluster mark.
	maxClusters = 0x0FFFFFF5
)

// geometry is the layout of a volume: where the FATs and the data region
// lie and how many clusters there are.
type geometry struct {
	totalSectors  uint32 // sectors in the volume (BPB_TotSec32)
	secPerCluster uint32 // BPB_SecPerClus
	fatSectors    uint32 // sectors per FAT (BPB_FATSz32)
	clusters      uint32 // data clusters, numbered 2 … clusters+1
}

func (g geometry) clusterSize() int64 { return int64(g.secPerCluster) * sectorSize }

// dataStart is the first sector of the data region (cluster 2).
func (g geometry) dataStart() int64 {
	return reservedSectors + numFATs*int64(g.fatSectors)
}

// clusterOffset is the byte offset of cluster c in the volume.
func (g geometry) clusterOffset(c uint32) int64 {
	return g.dataStart()*sectorSize + int64(c-2)*g.clusterSize()
}

// fatOffset is the byte offset of FAT copy i.
func (g geometry) fatOffset(i int) int64 {
	return (reservedSectors + int64(i)*int64(g.fatSectors)) * sectorSize
}

// fatEntries is how many 32-bit entries one FAT holds.
func (g geometry) fatEntries() int64 { return int64(g.fatSectors) * entriesPerFATSc }

// MinSize is the smallest Options.Size that Write accepts, in bytes
// (about 32.5 MiB): below it a volume cannot have the 65525 clusters that
// make it FAT32.
func MinSize() int64 { return minSize() }

// minSize is the first size where 512-byte clusters and FATs sized as fit sizes them leave at
// least minClusters clusters.
func minSize() int64 {
	fat := (int64(minClusters) + 2 + entriesPerFATSc - 1) / entriesPerFATSc
	for total := reservedSectors + numFATs*fat + minClusters; ; total++ {
		if g, ok := fit(total, 1); ok && g.clusters >= minClusters {
			return total * sectorSize
		}
	}
}

// defaultSecPerCluster is fatgen103's FAT32 cluster-size table (the one
// mkfs.fat and Windows use): 512-byte clusters up to 260 MiB, 4 KiB to
// 8 GiB, 8 KiB to 16 GiB, 16 KiB to 32 GiB and 32 KiB beyond.
func defaultSecPerCluster(total int64) uint32 {
	switch {
	case total <= 532480:
		return 1
	case total <= 16777216:
		return 8
	case total <= 33554432:
		return 16
	case total <= 67108864:
		return 32
	}
	return 64
}

// computeGeometry lays out a FAT32 volume of size bytes. It starts from
// fatgen103's cluster size and halves it until the volume has at least
// minClusters clusters; a volume too small even with 512-byte clusters is
// an error, because a driver would read it as FAT16.
func computeGeometry(size int64) (geometry, error) {
	total := size / sectorSize
	if total > math.MaxUint32 {
		return geometry{}, fmt.Errorf("%w: %d bytes, the most is %d", ErrTooLarge, size, int64(math.MaxUint32)*sectorSize)
	}
	for spc := defaultSecPerCluster(total); spc >= 1; spc /= 2 {
		g, ok := fit(total, spc)
		if !ok {
			continue
		}
		if g.clusters > maxClusters {
			return geometry{}, fmt.Errorf("%w: %d clusters of %d bytes", ErrTooLarge, g.clusters, g.clusterSize())
		}
		if g.clusters >= minClusters {
			return g, nil
		}
	}
	return geometry{}, fmt.Errorf("%w: %d bytes, FAT32 needs at least %d", ErrTooSmall, size, minSize())
}

// fit sizes the FATs of a volume of total sectors with spc sectors per
// cluster. It uses fatgen103's FAT size formula, rounds the FAT up so the
// data region starts on a cluster boundary (so clusters are aligned to
// their size inside the partition, as mkfs.fat does), and then grows the
// FAT until it has an entry for every cluster: the formula is meant to
// overestimate, but the check is what guarantees it at every size.
func fit(total int64, spc uint32) (geometry, bool) {
	s := int64(spc)
	tmp1 := total - reservedSectors
	tmp2 := (256*s + numFATs) / 2 // FAT32: entries are 4 bytes
	if tmp1 <= 0 {
		return geometry{}, false
	}
	fat := (tmp1 + tmp2 - 1) / tmp2
	for {
		for (reservedSectors+numFATs*fat)%s != 0 {
			fat++
		}
		data := total - reservedSectors - numFATs*fat
		if data < s {
			return geometry{}, false
		}
		clusters := data / s
		if clusters+2 <= fat*entriesPerFATSc {
			if fat > math.MaxUint32 || clusters > math.MaxUint32 {
				return geometry{}, false
			}
			return geometry{
				totalSectors:  uint32(total),
				secPerCluster: spc,
				fatSectors:    uint32(fat),
				clusters:      uint32(clusters),
			}, true
		}
		fat++
	}
}
