package diskimage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestOVA: the OVA is a ustar archive of disk.ovf, disk.vmdk and disk.mf
// in that order; the VMDK is the streamOptimized VMDK kiln writes of the
// disk (byte for byte), which qemu-img checks and finds identical to the
// raw image; the manifest holds the members' SHA-256; the descriptor is
// XML that names the VMDK with its size, the capacity and the populated
// size.
func TestOVA(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.img")
	fixture(t, raw, 40<<20+3*512, 9)
	out := filepath.Join(dir, "disk.ova")
	when := time.Unix(1700000000, 0)
	res := convert(t, raw, out, OVA, Options{Time: when})
	vmdk := convert(t, raw, filepath.Join(dir, "disk.vmdk"), VMDK, Options{Time: when})
	b := mustRead(t, out)
	if int64(len(b)) != res.Size || res.VirtualSize != vmdk.VirtualSize || len(b)%tarRecord != 0 {
		t.Fatalf("%d bytes, result %+v", len(b), res)
	}
	tr := tar.NewReader(bytes.NewReader(b))
	members := map[string][]byte{}
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag != tar.TypeReg || h.Mode != 0o644 || h.ModTime.Unix() != when.Unix() || h.Uid != 0 {
			t.Errorf("%s: %+v", h.Name, h)
		}
		names = append(names, h.Name)
		members[h.Name] = data
	}
	if strings.Join(names, " ") != "disk.ovf disk.vmdk disk.mf" {
		t.Fatalf("members %v", names)
	}
	for off := 0; off < len(b); {
		// Every header is ustar's.
		if string(b[off+257:off+265]) != "ustar\x0000" {
			t.Fatalf("header at %d: magic %q", off, b[off+257:off+265])
		}
		size := int64(0)
		fmt.Sscanf(string(b[off+124:off+135]), "%o", &size)
		off += 512 + int(roundUp(size, 512))
		if off >= len(b) || b[off] == 0 {
			break
		}
	}
	if want := mustRead(t, filepath.Join(dir, "disk.vmdk")); !bytes.Equal(members["disk.vmdk"], want) {
		t.Error("the OVA's VMDK is not kiln's streamOptimized VMDK of the disk")
	}
	x := filepath.Join(dir, "x.vmdk")
	os.WriteFile(x, members["disk.vmdk"], 0o644)
	if out := qemuImg(t, "check", "-f", "vmdk", x); !strings.Contains(out, "No errors were found") {
		t.Errorf("qemu-img check: %s", out)
	}
	if out := qemuImg(t, "compare", "-f", "raw", "-F", "vmdk", raw, x); !strings.Contains(out, "Images are identical") {
		t.Errorf("qemu-img compare: %s", out)
	}
	var mf strings.Builder
	for _, n := range []string{"disk.ovf", "disk.vmdk"} {
		s := sha256.Sum256(members[n])
		fmt.Fprintf(&mf, "SHA256(%s)= %s\n", n, hex.EncodeToString(s[:]))
	}
	if string(members["disk.mf"]) != mf.String() {
		t.Errorf("manifest %q, want %q", members["disk.mf"], mf.String())
	}
	var env struct {
		File struct {
			Href string `xml:"href,attr"`
			Size int64  `xml:"size,attr"`
		} `xml:"References>File"`
		Disk struct {
			Capacity  int64  `xml:"capacity,attr"`
			Populated int64  `xml:"populatedSize,attr"`
			Format    string `xml:"format,attr"`
		} `xml:"DiskSection>Disk"`
	}
	if err := xml.Unmarshal(members["disk.ovf"], &env); err != nil {
		t.Fatalf("the descriptor: %v", err)
	}
	if env.File.Href != "disk.vmdk" || env.File.Size != int64(len(members["disk.vmdk"])) || env.Disk.Capacity != vmdk.VirtualSize ||
		env.Disk.Populated <= 0 || env.Disk.Populated > env.Disk.Capacity || !strings.HasSuffix(env.Disk.Format, "#streamOptimized") {
		t.Errorf("descriptor: %+v", env)
	}
}

// TestOVFLength: the descriptor's length is fixed by the largest sizes,
// so a real one is never longer.
func TestOVFLength(t *testing.T) {
	p := ovfParams{VMDK: ovaVMDK, Capacity: 1 << 40, Name: ovaName, CPUs: ovaCPUs, MemoryMiB: ovaMemMB, VMDKSize: 1<<63 - 1, Populated: 1<<63 - 1}
	longest, _ := ovfDescriptor(p)
	p.VMDKSize, p.Populated = 1, 0
	short, _ := ovfDescriptor(p)
	if len(short) >= len(longest) {
		t.Errorf("%d and %d bytes", len(short), len(longest))
	}
}
