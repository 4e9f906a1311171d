package fat

import (
	"errors"
	"testing"
)

// checkGeometry checks the invariants every volume must keep.
func checkGeometry(t *testing.T, size int64, g geometry) {
	t.Helper()
	total := size / sectorSize
	switch {
	case int64(g.totalSectors) != total:
		t.Fatalf("size %d: %d sectors, want %d", size, g.totalSectors, total)
	case g.clusters < minClusters:
		t.Fatalf("size %d: %d clusters, FAT32 needs %d", size, g.clusters, minClusters)
	case int64(g.clusters)+2 > g.fatEntries():
		t.Fatalf("size %d: %d clusters but the FAT has %d entries", size, g.clusters, g.fatEntries())
	case g.dataStart()%int64(g.secPerCluster) != 0:
		t.Fatalf("size %d: data starts at sector %d, not a multiple of %d", size, g.dataStart(), g.secPerCluster)
	case g.dataStart()+int64(g.clusters)*int64(g.secPerCluster) > total:
		t.Fatalf("size %d: clusters run past the end", size)
	case total-g.dataStart()-int64(g.clusters)*int64(g.secPerCluster) >= int64(g.secPerCluster):
		t.Fatalf("size %d: a whole cluster left unused at the end", size)
	case g.fatEntries()-int64(g.clusters)-2 > int64(g.clusters)/100+int64(g.secPerCluster+1)*entriesPerFATSc:
		// fatgen103's formula overestimates by under 1%, and aligning the
		// data region adds up to a cluster's worth of sectors; no more.
		t.Fatalf("size %d: FAT has %d entries for %d clusters", size, g.fatEntries(), g.clusters)
	}
}

// TestGeometrySweep checks every MiB from the smallest FAT32 volume to
// 8 GiB and odd sector counts around it, including the sizes where
// go-diskfs gave the FAT fewer entries than clusters.
func TestGeometrySweep(t *testing.T) {
	for mib := int64(33); mib <= 8192; mib++ {
		for _, extra := range []int64{0, 512, 511 * 512, -512 * 7} {
			size := mib<<20 + extra
			g, err := computeGeometry(size)
			if err != nil {
				t.Fatalf("size %d: %v", size, err)
			}
			checkGeometry(t, size, g)
		}
	}
	for _, size := range []int64{minSize(), minSize() + 512, 16 << 30, 32<<30 + 512, 100 << 30, 2<<40 - 512} {
		g, err := computeGeometry(size)
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		checkGeometry(t, size, g)
	}
}

func TestGeometryClusterSizes(t *testing.T) {
	for _, tt := range []struct {
		size int64
		spc  uint32
	}{
		{33 << 20, 1}, {128 << 20, 1}, {260 << 20, 1}, {261 << 20, 8}, {1 << 30, 8},
		{8 << 30, 8}, {8<<30 + 512, 16}, {16<<30 + 512, 32}, {64 << 30, 64},
	} {
		g, err := computeGeometry(tt.size)
		if err != nil {
			t.Fatal(err)
		}
		if g.secPerCluster != tt.spc {
			t.Errorf("size %d: %d sectors per cluster, want %d", tt.size, g.secPerCluster, tt.spc)
		}
	}
}

func TestGeometryLimits(t *testing.T) {
	if _, err := computeGeometry(minSize()); err != nil {
		t.Errorf("smallest volume: %v", err)
	}
	if _, err := computeGeometry(minSize() - 512); !errors.Is(err, ErrTooSmall) {
		t.Errorf("below the smallest volume: %v, want %v", err, ErrTooSmall)
	}
	if _, err := computeGeometry(0); !errors.Is(err, ErrTooSmall) {
		t.Errorf("empty volume: %v, want %v", err, ErrTooSmall)
	}
	if _, err := computeGeometry(2 << 40); !errors.Is(err, ErrTooLarge) {
		t.Errorf("2 TiB: %v, want %v", err, ErrTooLarge)
	}
}
