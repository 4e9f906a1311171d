package test

import (
	"encoding/xml"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/kiln-os/kiln/build/manifest"
)

// TestFormatGCE builds with --format gce and reads disk.tar.gz as GCE's
// import and GNU tar do: gzip -t passes; file(1) finds a GNU tar in gzip;
// tar -tvf lists one member, disk.raw, -rw-r--r-- 0/0, of disk.img's size
// and SOURCE_DATE_EPOCH's time; its header is oldgnu's (magic "ustar  ")
// and sparse (type S); tar -xSf extracts disk.raw identical to disk.img
// (cmp), and as sparse as it (du); the manifest lists it with the digest
// coreutils compute.
func TestFormatGCE(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, kiln, "keygen", "-o", filepath.Join(dir, "k"))
	out := buildSmall(t, dir, filepath.Join(dir, "k.key"), "--format", "gce")
	disk := filepath.Join(out, "disk.img")
	gce := filepath.Join(out, "disk.tar.gz")
	m := readManifest(t, out)
	st, err := os.Stat(gce)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Outputs) != 1 || m.Outputs[0].Name != "disk.tar.gz" || m.Outputs[0].Format != "gce" || m.Outputs[0].Size != st.Size() ||
		m.Outputs[0].VirtualSize != m.DiskSize || m.Outputs[0].Digest != chunkedDigest(t, gce) {
		t.Errorf("manifest outputs %+v; the file is %d bytes", m.Outputs, st.Size())
	}
	mustRun(t, "gzip", "-t", gce)
	if f := mustRun(t, "file", "-b", "-z", gce); !strings.HasPrefix(f, "POSIX tar archive (GNU)") {
		t.Errorf("file -z: %s", f)
	}
	list := strings.Fields(mustRun(t, "tar", "-tvf", gce, "--full-time", "--utc"))
	want := []string{"-rw-r--r--", "0/0", strconv.FormatInt(m.DiskSize, 10), "2023-11-14", "22:13:20", "disk.raw"}
	if !slices.Equal(list, want) {
		t.Errorf("tar -tvf: %q, want %q", list, want)
	}
	head := mustRun(t, "sh", "-c", "gzip -dc \"$0\" | head -c 512 | od -An -c -j 156 -N 1; gzip -dc \"$0\" | head -c 265 | tail -c 8 | od -An -tx1", gce)
	if f := strings.Fields(head); len(f) != 9 || f[0] != "S" || strings.Join(f[1:], " ") != "75 73 74 61 72 20 20 00" {
		t.Errorf("the first header: type and magic %q, want S and \"ustar  \\0\"", f)
	}
	x := filepath.Join(dir, "x")
	os.Mkdir(x, 0o755)
	mustRun(t, "tar", "-xSf", gce, "-C", x)
	mustRun(t, "cmp", disk, filepath.Join(x, "disk.raw"))
	du := func(p string) int64 {
		n, _ := strconv.ParseInt(strings.Fields(mustRun(t, "du", "-k", p))[0], 10, 64)
		return n
	}
	if a, b := du(filepath.Join(x, "disk.raw")), du(disk); a > b+1024 {
		t.Errorf("the extracted disk.raw occupies %d KiB, disk.img %d KiB: not sparse", a, b)
	}
	if st.Size() > m.DiskSize/4 {
		t.Errorf("disk.tar.gz is %d bytes for a %d-byte disk", st.Size(), m.DiskSize)
	}
}

// ovfEnvelope is what the checks read of an OVF descriptor.
type ovfEnvelope struct {
	XMLName xml.Name
	Files   []struct {
		ID   string `xml:"id,attr"`
		Href string `xml:"href,attr"`
		Size string `xml:"size,attr"`
	} `xml:"References>File"`
	Disks []struct {
		DiskID    string `xml:"diskId,attr"`
		Format    string `xml:"format,attr"`
		Capacity  string `xml:"capacity,attr"`
		FileRef   string `xml:"fileRef,attr"`
		Populated string `xml:"populatedSize,attr"`
	} `xml:"DiskSection>Disk"`
	Networks []struct {
		Name string `xml:"name,attr"`
	} `xml:"NetworkSection>Network"`
	Systems []struct {
		ID string `xml:"id,attr"`
		OS struct {
			ID string `xml:"id,attr"`
		} `xml:"OperatingSystemSection"`
		HW struct {
			System struct {
				Fields []ovfField `xml:",any"`
			} `xml:"System"`
			Items []struct {
				Required string     `xml:"required,attr"`
				Fields   []ovfField `xml:",any"`
			} `xml:"Item"`
			Config []struct {
				Key   string `xml:"key,attr"`
				Value string `xml:"value,attr"`
			} `xml:"http://www.vmware.com/schema/ovf Config"`
		} `xml:"VirtualHardwareSection"`
	} `xml:"VirtualSystem"`
}

type ovfField struct {
	XMLName xml.Name
	Value   string `xml:",chardata"`
}

const (
	ovfNS  = "http://schemas.dmtf.org/ovf/envelope/1"
	rasdNS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
	vssdNS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
)

// checkOVF applies to an OVF descriptor the rules VirtualBox's OVF reader
// (src/VBox/Main/xml/ovfreader.cpp: OVFReader::parse, HandleDiskSection,
// HandleVirtualSystemContent, VirtualHardwareItem) enforces, and the
// ordering the DMTF CIM schemas require, and returns what breaks them.
func checkOVF(data []byte, vmdkSize, capacity int64) []string {
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	var env ovfEnvelope
	if err := xml.Unmarshal(data, &env); err != nil {
		return []string{err.Error()}
	}
	// The root is Envelope, in a namespace (OVF 1.0's).
	if env.XMLName.Local != "Envelope" || env.XMLName.Space != ovfNS {
		bad("root element %v", env.XMLName)
	}
	// Each Disk has diskId, format and an integer capacity; its fileRef
	// names a References/File with an href (and an integer size).
	disks := map[string]bool{}
	for _, d := range env.Disks {
		c, err := strconv.ParseInt(d.Capacity, 10, 64)
		if d.DiskID == "" || d.Format == "" || err != nil {
			bad("Disk %+v: diskId, format, capacity", d)
		}
		disks[d.DiskID] = true
		i := slices.IndexFunc(env.Files, func(f struct {
			ID   string `xml:"id,attr"`
			Href string `xml:"href,attr"`
			Size string `xml:"size,attr"`
		}) bool {
			return f.ID == d.FileRef
		})
		if i < 0 || env.Files[i].Href == "" {
			bad("Disk %s: fileRef %q names no File with an href", d.DiskID, d.FileRef)
			continue
		}
		// What kiln promises: the VMDK's size, the disk's capacity and
		// populated size, the streamOptimized format.
		p, _ := strconv.ParseInt(d.Populated, 10, 64)
		if env.Files[i].Href != "disk.vmdk" || env.Files[i].Size != strconv.FormatInt(vmdkSize, 10) || c != capacity || p <= 0 || p > c ||
			d.Format != "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" {
			bad("Disk %+v, File %+v: want disk.vmdk of %d bytes, capacity %d, streamOptimized", d, env.Files[i], vmdkSize, capacity)
		}
	}
	if len(env.Disks) != 1 || len(env.Systems) != 1 {
		bad("%d disks, %d virtual systems, want 1 and 1", len(env.Disks), len(env.Systems))
		return errs
	}
	vs := env.Systems[0]
	if _, err := strconv.ParseUint(vs.OS.ID, 10, 64); err != nil {
		bad("OperatingSystemSection ovf:id %q", vs.OS.ID)
	}
	// The VSSD and RASD elements: in their namespace, in the alphabetical
	// order the CIM schemas' sequences give them.
	inOrder := func(what, ns string, fs []ovfField) map[string]string {
		v := map[string]string{}
		for i, f := range fs {
			if f.XMLName.Space != ns || (i > 0 && fs[i-1].XMLName.Local >= f.XMLName.Local) {
				bad("%s: %s out of namespace or order", what, f.XMLName.Local)
			}
			v[f.XMLName.Local] = f.Value
		}
		return v
	}
	inOrder("System", vssdNS, vs.HW.System.Fields)
	controllers := map[string]bool{}
	var items []map[string]string
	for i, it := range vs.HW.Items {
		v := inOrder(fmt.Sprintf("Item %d", i+1), rasdNS, it.Fields)
		items = append(items, v)
		rt, _ := strconv.Atoi(v["ResourceType"])
		// A ResourceType, not 0; controllers need an InstanceID.
		switch {
		case rt == 0:
			bad("Item %d: no ResourceType", i+1)
		case rt == 5 || rt == 6 || rt == 20:
			if v["InstanceID"] == "" {
				bad("Item %d: a controller without InstanceID", i+1)
			}
			controllers[v["InstanceID"]] = true
		case rt == 3:
			if q, err := strconv.ParseUint(v["VirtualQuantity"], 10, 64); err != nil || q >= 65535 || q == 0 {
				bad("Item %d: CPU count %q", i+1, v["VirtualQuantity"])
			}
		case rt == 4:
			if !slices.Contains([]string{"MegaBytes", "MB", "byte * 2^20", "GigaBytes", "GB", "byte * 2^30"}, v["AllocationUnits"]) {
				bad("Item %d: memory in %q", i+1, v["AllocationUnits"])
			}
		case rt == 10:
			if !slices.ContainsFunc(env.Networks, func(n struct {
				Name string `xml:"name,attr"`
			}) bool {
				return n.Name == v["Connection"]
			}) {
				bad("Item %d: connection %q is no NetworkSection network", i+1, v["Connection"])
			}
		case rt == 17:
		default:
			if it.Required != "false" {
				bad("Item %d: resource type %d that VirtualBox does not know, required", i+1, rt)
			}
		}
		if v["ElementName"] == "" || v["InstanceID"] == "" {
			bad("Item %d: no ElementName or InstanceID (the CIM schema requires both)", i+1)
		}
	}
	// The disk: a controller's child, its host resource a Disk.
	var found bool
	for i, v := range items {
		if v["ResourceType"] != "17" {
			continue
		}
		found = true
		if !controllers[v["Parent"]] {
			bad("Item %d: disk under %q, no controller", i+1, v["Parent"])
		}
		id, ok := strings.CutPrefix(v["HostResource"], "ovf:/disk/")
		if !ok || !disks[id] {
			bad("Item %d: host resource %q", i+1, v["HostResource"])
		}
	}
	if !found {
		bad("no disk item")
	}
	// UEFI: VMware's firmware key.
	if !slices.ContainsFunc(vs.HW.Config, func(c struct {
		Key   string `xml:"key,attr"`
		Value string `xml:"value,attr"`
	}) bool {
		return c.Key == "firmware" && c.Value == "efi"
	}) {
		bad("no vmw:Config firmware=efi")
	}
	return errs
}

// TestFormatOVA builds with --format ova,vmdk and reads disk.ova as
// vSphere and VirtualBox import it: file(1) finds a POSIX (ustar) tar;
// tar -tvf lists disk.ovf, disk.vmdk, disk.mf in that order, each
// -rw-r--r-- 0/0 at SOURCE_DATE_EPOCH, every header ustar's; the
// manifest's SHA256 lines pass sha256sum -c; the VMDK is the build's
// disk.vmdk byte for byte, qemu-img check finds no errors and compare
// finds disk.img; the descriptor is well-formed XML (xmllint) and keeps
// the rules of VirtualBox's OVF reader (checkOVF).
func TestFormatOVA(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, kiln, "keygen", "-o", filepath.Join(dir, "k"))
	out := buildSmall(t, dir, filepath.Join(dir, "k.key"), "--format", "ova,vmdk")
	disk := filepath.Join(out, "disk.img")
	ova := filepath.Join(out, "disk.ova")
	m := readManifest(t, out)
	i := slices.IndexFunc(m.Outputs, func(o manifest.Output) bool { return o.Name == "disk.ova" })
	if i < 0 || m.Outputs[i].Format != "ova" || m.Outputs[i].Digest != chunkedDigest(t, ova) {
		t.Fatalf("manifest outputs %+v", m.Outputs)
	}
	if f := mustRun(t, "file", "-b", ova); !strings.HasPrefix(f, "POSIX tar archive") || strings.Contains(f, "GNU") {
		t.Errorf("file: %s", f)
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(mustRun(t, "tar", "-tvf", ova, "--full-time", "--utc")), "\n") {
		f := strings.Fields(line)
		if len(f) != 6 || f[0] != "-rw-r--r--" || f[1] != "0/0" || f[3]+" "+f[4] != "2023-11-14 22:13:20" {
			t.Errorf("tar -tvf: %q", line)
		}
		names = append(names, f[len(f)-1])
	}
	if strings.Join(names, " ") != "disk.ovf disk.vmdk disk.mf" {
		t.Errorf("members %v, want disk.ovf disk.vmdk disk.mf", names)
	}
	// Every header's magic: ustar's "ustar\0" "00" (GNU tar's would be
	// "ustar  \0").
	magics := mustRun(t, "bash", "-c", `off=0; size=$(stat -c %s "$0"); while [ $off -lt $size ]; do
		m=$(dd if="$0" bs=1 skip=$((off+257)) count=8 status=none | od -An -tx1 | tr -d ' \n'); [ "$m" = 0000000000000000 ] && break
		echo $m; s=$(dd if="$0" bs=1 skip=$((off+124)) count=11 status=none); off=$((off + 512 + (8#$s + 511) / 512 * 512)); done`, ova)
	if got := strings.Fields(magics); len(got) != 3 || got[0] != "7573746172003030" || got[1] != got[0] || got[2] != got[0] {
		t.Errorf("header magics %q, want 3 × ustar\\0 00", got)
	}
	x := filepath.Join(dir, "x")
	os.Mkdir(x, 0o755)
	mustRun(t, "tar", "-xf", ova, "-C", x)
	if r := run(t, "sh", "-c", "cd \"$0\" && sha256sum -c --strict disk.mf", x); r.code != 0 || strings.Count(r.stdout, ": OK") != 2 {
		t.Errorf("sha256sum -c disk.mf: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	vmdk := filepath.Join(x, "disk.vmdk")
	mustRun(t, "cmp", vmdk, filepath.Join(out, "disk.vmdk"))
	if r := run(t, "qemu-img", "check", "-f", "vmdk", vmdk); r.code != 0 || !strings.Contains(r.stdout, "No errors were found") {
		t.Errorf("qemu-img check: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := run(t, "qemu-img", "compare", "-f", "raw", "-F", "vmdk", disk, vmdk); r.code != 0 || !strings.Contains(r.stdout, "Images are identical") {
		t.Errorf("qemu-img compare: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if info := qemuImgInfo(t, "vmdk", vmdk); info.FormatSpecific.Data.CreateType != "streamOptimized" {
		t.Errorf("qemu-img info: create type %q", info.FormatSpecific.Data.CreateType)
	}
	ovf := filepath.Join(x, "disk.ovf")
	mustRun(t, "xmllint", "--noout", ovf)
	data, _ := os.ReadFile(ovf)
	st, _ := os.Stat(vmdk)
	for _, e := range checkOVF(data, st.Size(), (m.DiskSize+511)/512*512) {
		t.Error("disk.ovf: " + e)
	}
}

// TestCheckOVF: the descriptor checks fail descriptors that break them.
func TestCheckOVF(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.img")
	mustRun(t, "truncate", "-s", "8M", raw)
	mustRun(t, "sh", "-c", "printf kiln | dd of=\"$0\" bs=1 seek=4096 conv=notrunc status=none", raw)
	ova := filepath.Join(dir, "disk.ova")
	mustRun(t, kiln, "convert", "-q", raw, "--format", "ova")
	x := filepath.Join(dir, "x")
	os.Mkdir(x, 0o755)
	mustRun(t, "tar", "-xf", ova, "-C", x)
	good, _ := os.ReadFile(filepath.Join(x, "disk.ovf"))
	st, _ := os.Stat(filepath.Join(x, "disk.vmdk"))
	if errs := checkOVF(good, st.Size(), 8<<20); len(errs) > 0 {
		t.Fatalf("kiln's descriptor: %v", errs)
	}
	for _, c := range [][2]string{
		{`ovf:diskId="vmdisk1"`, `ovf:diskId="other"`},
		{`<rasd:Parent>3</rasd:Parent>`, `<rasd:Parent>9</rasd:Parent>`},
		{`<rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>`, `<rasd:AllocationUnits>bytes</rasd:AllocationUnits>`},
		{`ovf:fileRef="file1"`, `ovf:fileRef="file2"`},
		{`<rasd:Connection>VM Network</rasd:Connection>`, `<rasd:Connection>LAN</rasd:Connection>`},
		{`<rasd:InstanceID>3</rasd:InstanceID>`, ``},
		{`<rasd:ResourceType>6</rasd:ResourceType>`, `<rasd:ResourceType>99</rasd:ResourceType>`},
		{`vmw:value="efi"`, `vmw:value="bios"`},
		{`OperatingSystemSection ovf:id="101"`, `OperatingSystemSection ovf:id="linux"`},
		{`xmlns="http://schemas.dmtf.org/ovf/envelope/1"`, `xmlns="urn:other"`},
	} {
		bad := strings.Replace(string(good), c[0], c[1], 1)
		if bad == string(good) {
			t.Fatalf("the descriptor holds no %s", c[0])
		}
		if errs := checkOVF([]byte(bad), st.Size(), 8<<20); len(errs) == 0 {
			t.Errorf("%s → %s: no error", c[0], c[1])
		}
	}
}

// TestCloudFormatsReproducible: kiln convert writes the same gce and ova
// twice (1 worker and 3) and as kiln build wrote them; both refuse bad
// input with exit 2 and leave nothing behind.
func TestCloudFormatsReproducible(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, kiln, "keygen", "-o", filepath.Join(dir, "k"))
	out := buildSmall(t, dir, filepath.Join(dir, "k.key"), "--format", "gce,ova,qcow2")
	disk := filepath.Join(out, "disk.img")
	env := []string{"SOURCE_DATE_EPOCH=1700000000"}
	for _, f := range []struct{ format, file string }{{"gce", "disk.tar.gz"}, {"ova", "disk.ova"}} {
		a, b := filepath.Join(dir, "a."+f.format), filepath.Join(dir, "b."+f.format)
		if r := kilnEnv(t, env, "convert", "-q", disk, "--format", f.format, "-o", a, "--workers", "1"); r.code != 0 {
			t.Fatalf("convert %s: %s", f.format, r.stderr)
		}
		if r := kilnEnv(t, env, "convert", "-q", disk, "--format", f.format, "-o", b, "--workers", "3"); r.code != 0 {
			t.Fatalf("convert %s: %s", f.format, r.stderr)
		}
		mustRun(t, "cmp", a, b)
		mustRun(t, "cmp", a, filepath.Join(out, f.file))
		// Another SOURCE_DATE_EPOCH: another member mtime.
		c := filepath.Join(dir, "c."+f.format)
		if r := kilnEnv(t, []string{"SOURCE_DATE_EPOCH=1600000000"}, "convert", "-q", disk, "--format", f.format, "-o", c); r.code != 0 {
			t.Fatalf("convert %s: %s", f.format, r.stderr)
		}
		if r := run(t, "cmp", "-s", a, c); r.code == 0 {
			t.Errorf("%s: SOURCE_DATE_EPOCH changes nothing", f.format)
		}
		for _, args := range [][]string{
			{"convert", filepath.Join(out, "disk.qcow2"), "--format", f.format, "-o", filepath.Join(dir, "q")},
			{"convert", disk, "--format", f.format, "-o", filepath.Join(dir, "no", "dir")},
			{"convert", disk, "--format", f.format, "-o", a},
		} {
			if r := run(t, kiln, args...); r.code != 2 {
				t.Errorf("kiln %s: exit %d, want 2\n%s", strings.Join(args, " "), r.code, r.stderr)
			}
		}
		os.Remove(a)
		os.Remove(b)
		os.Remove(c)
	}
	if got := dirNames(t, dir); strings.Join(got, " ") != "k.key k.pub out small-recipe.yaml small.yaml usr" {
		t.Errorf("left behind: %v", got)
	}
}

// TestCloudFormatsBigSparse: a 64 GiB raw image with 6 MiB of data
// becomes a gce or ova archive in about the time of its data, with
// bounded memory (peak RSS by GNU time); GNU tar extracts the GCE
// archive to the image, and the OVA holds a VMDK of it (qemu-img compare).
func TestCloudFormatsBigSparse(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "big.img")
	mustRun(t, "truncate", "-s", "64G", raw)
	for _, off := range []string{"0", "1025", "17408", "33792", "49151", "65535"} { // MiB
		mustRun(t, "dd", "if=/dev/urandom", "of="+raw, "bs=1M", "count=1", "seek="+off, "conv=notrunc", "status=none")
	}
	for _, f := range []string{"gce", "ova"} {
		out := filepath.Join(dir, "big."+f)
		r := run(t, "/usr/bin/time", "-f", "%e %M", kiln, "convert", "-q", raw, "--format", f, "-o", out)
		if r.code != 0 {
			t.Fatalf("convert %s: %s", f, r.stderr)
		}
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		fields := strings.Fields(lines[len(lines)-1])
		secs, _ := strconv.ParseFloat(fields[0], 64)
		kib, _ := strconv.ParseInt(fields[1], 10, 64)
		st, _ := os.Stat(out)
		t.Logf("%s: %.2f s, peak RSS %d MiB, %d bytes", f, secs, kib>>10, st.Size())
		if secs > 15 || kib > 400<<10 || st.Size() > 16<<20 {
			t.Errorf("%s: %.2f s, peak RSS %d MiB, %d bytes: the holes were read or stored, or memory grew with the disk", f, secs, kib>>10, st.Size())
		}
		x := filepath.Join(dir, "x")
		os.RemoveAll(x)
		os.Mkdir(x, 0o755)
		if f == "gce" {
			mustRun(t, "tar", "-xSf", out, "-C", x)
			// qemu-img compare skips what both files' holes hold; cmp
			// would read 64 GiB.
			if r := run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", raw, filepath.Join(x, "disk.raw")); r.code != 0 {
				t.Errorf("qemu-img compare: %s%s", r.stdout, r.stderr)
			}
		} else {
			mustRun(t, "tar", "-xf", out, "-C", x, "disk.vmdk")
			if r := run(t, "qemu-img", "compare", "-f", "raw", "-F", "vmdk", raw, filepath.Join(x, "disk.vmdk")); r.code != 0 {
				t.Errorf("qemu-img compare: %s%s", r.stdout, r.stderr)
			}
		}
		os.RemoveAll(x)
		os.Remove(out)
	}
}

// TestVerifyCloudFormats: kiln verify reads the gce and ova outputs
// through their formats (the OVA's VMDK in place; the GCE archive expanded
// into a sparse temporary file, only to the size the signed manifest
// gives) and checks the disk each holds: both pass as built; a flipped
// byte fails the digest (exit 1); the same output of another build, whose
// USR differs, fails the digest and then USR-A's digest and verity: the
// disk inside was read.
func TestVerifyCloudFormats(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "k")
	mustRun(t, kiln, "keygen", "-o", key)
	out := buildSmall(t, dir, key+".key", "--format", "gce,ova")
	otherDir := filepath.Join(dir, "other")
	os.Mkdir(otherDir, 0o755)
	other := buildSmall(t, otherDir, key+".key", "--format", "gce,ova", "--set", "version=9.9.9")
	pub := key + ".pub"
	for _, name := range []string{"disk.tar.gz", "disk.ova"} {
		path := filepath.Join(out, name)
		r := run(t, kiln, "verify", path, "--key", pub)
		if r.code != 0 {
			t.Fatalf("verify %s: exit %d\n%s%s", name, r.code, r.stdout, r.stderr)
		}
		for _, check := range []string{"format " + name, "gpt", "digest USR-A", "verity USR-A"} {
			if !strings.Contains(r.stdout, "\nok   "+check+" ") {
				t.Errorf("verify %s does not pass %q:\n%s", name, check, r.stdout)
			}
		}
		saved := filepath.Join(dir, "saved")
		copyFile(t, path, saved)
		st, _ := os.Stat(path)
		for _, off := range []int64{st.Size() / 2, 100} {
			flip(t, path, off)
			verifyFails(t, "digest "+name, "the manifest says", path, "--key", pub)
			copyFile(t, saved, path)
		}
		copyFile(t, filepath.Join(other, name), path)
		verifyFails(t, "digest "+name, "the manifest says", path, "--key", pub)
		verifyFails(t, "gpt", "", path, "--key", pub)
		copyFile(t, saved, path)
	}
}
