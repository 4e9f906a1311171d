package test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kiln-os/kiln/build/manifest"
)

// formatFiles are the formats kiln writes, the file a build gives each,
// and the name qemu-img gives it ("" for the compressed raw formats).
var formatFiles = []struct{ format, file, qemu string }{
	{"qcow2", "disk.qcow2", "qcow2"},
	{"qcow2-zstd", "disk-zstd.qcow2", "qcow2"},
	{"vmdk", "disk.vmdk", "vmdk"},
	{"vmdk-sparse", "disk-sparse.vmdk", "vmdk"},
	{"vhd", "disk.vhd", "vpc"},
	{"vhd-dynamic", "disk-dynamic.vhd", "vpc"},
	{"vhdx", "disk.vhdx", "vhdx"},
	{"raw.zst", "disk.img.zst", ""},
	{"raw.xz", "disk.img.xz", ""},
}

func allFormats() string {
	var names []string
	for _, f := range formatFiles {
		names = append(names, f.format)
	}
	return strings.Join(names, ",")
}

// chunkedDigest is the manifest's digest of a file, by coreutils and xxd
// as the manifest documents it.
func chunkedDigest(t *testing.T, path string) string {
	t.Helper()
	out := mustRun(t, "sh", "-c", "split -b 1M --filter=sha256sum \"$0\" | cut -c1-64 | xxd -r -p | sha256sum", path)
	return strings.Fields(out)[0]
}

// qemuInfo is what qemu-img info --output=json says of an image.
type qemuInfo struct {
	Format         string `json:"format"`
	VirtualSize    int64  `json:"virtual-size"`
	FormatSpecific struct {
		Type string `json:"type"`
		Data struct {
			CreateType      string `json:"create-type"`
			Compat          string `json:"compat"`
			CompressionType string `json:"compression-type"`
		} `json:"data"`
	} `json:"format-specific"`
}

func qemuImgInfo(t *testing.T, format, path string) qemuInfo {
	t.Helper()
	var info qemuInfo
	if err := json.Unmarshal([]byte(mustRun(t, "qemu-img", "info", "--output=json", "-f", format, path)), &info); err != nil {
		t.Fatal(err)
	}
	return info
}

// TestFormatsBuildQEMU builds a signed image with every --format: the
// manifest lists each output with its size and the digest coreutils
// computes; qemu-img check finds no errors (QEMU has no checker for VHD,
// whose rules TestFormatAzureVHD checks), compare finds the disk image,
// info the format, the subformat and the virtual size; zstd and xz give
// back disk.img exactly; kiln verify passes each output.
func TestFormatsBuildQEMU(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "k")
	mustRun(t, kiln, "keygen", "-o", key)
	out := buildSmall(t, dir, key+".key", "--format", "raw,"+allFormats())
	m := readManifest(t, out)
	if m.Format != manifest.DocumentsFormatVersion || len(m.Outputs) != len(formatFiles) {
		t.Fatalf("manifest format %d with %d outputs, want %d with %d", m.Format, len(m.Outputs), manifest.DocumentsFormatVersion, len(formatFiles))
	}
	disk := filepath.Join(out, "disk.img")
	for i, f := range formatFiles {
		t.Run(f.format, func(t *testing.T) {
			path := filepath.Join(out, f.file)
			o := m.Outputs[i]
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if o.Name != f.file || o.Format != f.format || o.Size != st.Size() || o.VirtualSize < m.DiskSize {
				t.Errorf("manifest lists %+v; the file is %d bytes", o, st.Size())
			}
			if d := chunkedDigest(t, path); d != o.Digest {
				t.Errorf("manifest digest %s, coreutils %s", o.Digest, d)
			}
			if f.qemu != "" {
				if f.qemu != "vpc" {
					r := run(t, "qemu-img", "check", "-f", f.qemu, path)
					if r.code != 0 || !strings.Contains(r.stdout, "No errors were found on the image.") {
						t.Errorf("qemu-img check: exit %d\n%s%s", r.code, r.stdout, r.stderr)
					}
				}
				if r := run(t, "qemu-img", "compare", "-f", "raw", "-F", f.qemu, disk, path); r.code != 0 || !strings.Contains(r.stdout, "Images are identical.") {
					t.Errorf("qemu-img compare: exit %d\n%s%s", r.code, r.stdout, r.stderr)
				}
				info := qemuImgInfo(t, f.qemu, path)
				if info.Format != f.qemu || info.VirtualSize != o.VirtualSize {
					t.Errorf("qemu-img info: %s, %d bytes; manifest: %d bytes", info.Format, info.VirtualSize, o.VirtualSize)
				}
				want := map[string]string{"vmdk": "streamOptimized", "vmdk-sparse": "monolithicSparse"}[f.format]
				if want != "" && info.FormatSpecific.Data.CreateType != want {
					t.Errorf("qemu-img info: create type %q, want %q", info.FormatSpecific.Data.CreateType, want)
				}
				if strings.HasPrefix(f.format, "qcow2") {
					wantComp := map[bool]string{true: "zstd", false: "zlib"}[f.format == "qcow2-zstd"]
					if info.FormatSpecific.Data.Compat != "1.1" || info.FormatSpecific.Data.CompressionType != wantComp {
						t.Errorf("qemu-img info: compat %q (want 1.1, qcow2 version 3), compression %q (want %s)", info.FormatSpecific.Data.Compat, info.FormatSpecific.Data.CompressionType, wantComp)
					}
				}
			} else {
				tool := map[string]string{"raw.zst": "zstd", "raw.xz": "xz"}[f.format]
				mustRun(t, "sh", "-c", tool+" -dc \"$0\" | cmp - \"$1\"", path, disk)
			}
			if r := run(t, kiln, "verify", path, "--key", key+".pub"); r.code != 0 || !strings.Contains(r.stdout, "ok   digest "+f.file) || !strings.Contains(r.stdout, "ok   verity USR-A") {
				t.Errorf("kiln verify: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
		})
	}
	// The qcow2 kiln convert writes of the build's disk.img is the build's.
	conv := filepath.Join(dir, "c.qcow2")
	mustRun(t, kiln, "convert", "-q", disk, "--format", "qcow2", "-o", conv)
	mustRun(t, "cmp", conv, filepath.Join(out, "disk.qcow2"))
}

// TestFormatAzureVHD reads the footers of the VHDs a build writes and
// checks Azure's rules and the VHD specification: cookie "conectix",
// features 2, version 1.0, the data offset (none for a fixed disk), the
// disk type, a virtual size that is a whole number of MiB and of CHS
// cylinders, current size = original size, the checksum (one's complement
// of the byte sum), the CHS geometry of the specification's algorithm, the
// timestamp from SOURCE_DATE_EPOCH; a fixed disk is the disk then the
// footer; a dynamic disk's copy of the footer, header and BAT.
func TestFormatAzureVHD(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, kiln, "keygen", "-o", filepath.Join(dir, "k"))
	out := buildSmall(t, dir, filepath.Join(dir, "k.key"), "--format", "vhd,vhd-dynamic")
	m := readManifest(t, out)
	be := binary.BigEndian
	sum := func(b []byte) uint32 {
		var s uint32
		for _, c := range b {
			s += uint32(c)
		}
		return ^s
	}
	for _, c := range []struct {
		file       string
		diskType   uint32
		dataOffset uint64
	}{{"disk.vhd", 2, ^uint64(0)}, {"disk-dynamic.vhd", 3, 512}} {
		b, err := os.ReadFile(filepath.Join(out, c.file))
		if err != nil {
			t.Fatal(err)
		}
		f := b[len(b)-512:]
		size := be.Uint64(f[48:])
		noSum := append([]byte(nil), f...)
		clear(noSum[64:68])
		// The specification's CHS algorithm (appendix "CHS Calculation").
		total := min(int64(size/512), 65535*16*255)
		var spt, heads, cth int64
		if total >= 65535*16*63 {
			spt, heads, cth = 255, 16, total/255
		} else {
			spt, cth = 17, total/17
			heads = max((cth+1023)/1024, 4)
			if cth >= heads*1024 || heads > 16 {
				spt, heads, cth = 31, 16, total/31
			}
			if cth >= heads*1024 {
				spt, heads, cth = 63, 16, total/63
			}
		}
		for _, x := range []struct {
			what      string
			got, want any
		}{
			{"cookie", string(f[:8]), "conectix"},
			{"features", be.Uint32(f[8:]), uint32(2)},
			{"file format version", be.Uint32(f[12:]), uint32(0x00010000)},
			{"data offset", be.Uint64(f[16:]), c.dataOffset},
			{"timestamp", be.Uint32(f[24:]), uint32(1700000000 - 946684800)},
			{"original size = current size", be.Uint64(f[40:]), size},
			{"virtual size a whole number of MiB, not less than the disk", size%(1<<20) == 0 && int64(size) >= m.DiskSize, true},
			{"geometry", fmt.Sprint(be.Uint16(f[56:]), f[58], f[59]), fmt.Sprint(cth/heads, heads, spt)},
			{"whole cylinders", cth / heads * heads * spt * 512, int64(size)},
			{"disk type", be.Uint32(f[60:]), c.diskType},
			{"checksum", be.Uint32(f[64:]), sum(noSum)},
		} {
			if x.got != x.want {
				t.Errorf("%s: %s: %v, want %v", c.file, x.what, x.got, x.want)
			}
		}
		if c.diskType == 2 {
			if int64(len(b)) != int64(size)+512 {
				t.Errorf("%s: %d bytes for a %d-byte disk", c.file, len(b), size)
			}
			disk, _ := os.ReadFile(filepath.Join(out, "disk.img"))
			if !bytes.Equal(b[:len(disk)], disk) || strings.Trim(string(b[len(disk):len(b)-512]), "\x00") != "" {
				t.Errorf("%s: the disk, then zeros, is not what precedes the footer", c.file)
			}
			continue
		}
		h := b[512:1536]
		hNoSum := append([]byte(nil), h...)
		clear(hNoSum[36:40])
		entries := be.Uint32(h[28:])
		if !bytes.Equal(b[:512], f) || string(h[:8]) != "cxsparse" || be.Uint32(h[36:]) != sum(hNoSum) ||
			be.Uint64(h[16:]) != 1536 || be.Uint32(h[32:]) != 2<<20 || uint64(entries) != (size+2<<20-1)/(2<<20) {
			t.Errorf("%s: footer copy, header cookie, checksum, BAT offset, block size or entries wrong", c.file)
		}
		for i := range entries {
			if e := be.Uint32(b[1536+4*i:]); e != 0xffffffff && int64(e)*512+512+2<<20 > int64(len(b))-512 {
				t.Errorf("%s: BAT entry %d points past the data", c.file, i)
			}
		}
	}
}

// TestFormatReproducible: the same image converts to the same bytes
// again, with one worker or several (raw.zst and raw.xz compress chunks on
// each), and as the build wrote them.
func TestFormatReproducible(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, kiln, "keygen", "-o", filepath.Join(dir, "k"))
	out := buildSmall(t, dir, filepath.Join(dir, "k.key"), "--format", allFormats())
	disk := filepath.Join(out, "disk.img")
	for _, f := range formatFiles {
		// The build names a VMDK's extent after its file: so do these.
		a, b := filepath.Join(dir, "a", f.file), filepath.Join(dir, "b", f.file)
		os.MkdirAll(filepath.Dir(a), 0o755)
		os.MkdirAll(filepath.Dir(b), 0o755)
		env := []string{"SOURCE_DATE_EPOCH=1700000000"}
		if r := kilnEnv(t, env, "convert", "-q", disk, "--format", f.format, "-o", a, "--workers", "1"); r.code != 0 {
			t.Fatalf("convert %s: %s", f.format, r.stderr)
		}
		if r := kilnEnv(t, env, "convert", "-q", disk, "--format", f.format, "-o", b, "--workers", "3"); r.code != 0 {
			t.Fatalf("convert %s: %s", f.format, r.stderr)
		}
		if r := run(t, "cmp", a, b); r.code != 0 {
			t.Errorf("%s: 1 worker and 3 workers differ: %s", f.format, r.stdout)
		}
		if r := run(t, "cmp", a, filepath.Join(out, f.file)); r.code != 0 {
			t.Errorf("%s: kiln convert and kiln build differ: %s", f.format, r.stdout)
		}
	}
}

// TestFormatVerifyFailures: kiln verify fails (exit 1) a converted image
// with a flipped byte, one the manifest does not list, one in another
// format than listed, and one whose manifest lists it wrongly (strictly
// parsed, then re-signed).
func TestFormatVerifyFailures(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "k")
	mustRun(t, kiln, "keygen", "-o", key)
	out := buildSmall(t, dir, key+".key", "--format", allFormats())
	pub := key + ".pub"
	for _, f := range formatFiles {
		path := filepath.Join(out, f.file)
		st, _ := os.Stat(path)
		saved := filepath.Join(dir, "saved")
		copyFile(t, path, saved)
		// A byte in the middle of the file, and one in its first sector.
		for _, off := range []int64{st.Size() / 2, 100} {
			flip(t, path, off)
			// A flip the format's reader refuses (byte 100 of a qcow2 is
			// header_length) is a failed check too, not bad input: the
			// manifest lists the file.
			verifyFails(t, "digest "+f.file, "the manifest says", path, "--key", pub)
			copyFile(t, saved, path)
		}
	}
	// A data byte: the disk it holds changes too, and verify says where.
	qcow := filepath.Join(out, "disk.qcow2")
	copyFile(t, qcow, filepath.Join(dir, "saved"))
	flip(t, qcow, 64<<10+100) // the first data cluster's: the MBR's boot code
	verifyFails(t, "mbr", "changed", qcow, "--key", pub)
	copyFile(t, filepath.Join(dir, "saved"), qcow)
	mustRun(t, kiln, "verify", qcow, "--key", pub)

	// Not listed, and listed in another format.
	other := filepath.Join(out, "other.qcow2")
	copyFile(t, qcow, other)
	verifyFails(t, "output", "lists no output of that name", other, "--key", pub)
	os.Remove(other)
	// Malformed and not listed: bad input, naming the file and the field.
	os.WriteFile(other, []byte("QFI\xfb"), 0o644)
	if r := run(t, kiln, "verify", other, "--key", pub); r.code != 2 || !strings.Contains(r.stderr, other+": diskimage: qcow2: a 4-byte file holds no header") {
		t.Errorf("verify of a malformed qcow2 the manifest does not list: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	os.Remove(other)
	vmdk := filepath.Join(out, "disk.vmdk")
	copyFile(t, vmdk, filepath.Join(dir, "saved"))
	copyFile(t, qcow, vmdk)
	verifyFails(t, "output", "the manifest lists a vmdk", vmdk, "--key", pub)
	copyFile(t, filepath.Join(dir, "saved"), vmdk)

	// The manifest, changed and re-signed: its outputs are parsed strictly.
	man := filepath.Join(out, "manifest.json")
	orig, _ := os.ReadFile(man)
	for _, c := range []struct{ old, new, want string }{
		{`"format": "qcow2",`, `"format": "qcow2", "extra": 1,`, "unknown field"},
		{`"name": "disk.qcow2"`, `"name": "../disk.qcow2"`, "not a file name"},
		{`"format": "qcow2",`, `"format": "qcow9",`, "format \"qcow9\""},
		{`"format": 4,`, `"format": 3,`, "format 3 lists no documents"},
		{`"format": 4,`, `"format": 2,`, "format 2 lists no outputs"},
	} {
		if !bytes.Contains(orig, []byte(c.old)) {
			t.Fatalf("the manifest holds no %s", c.old)
		}
		os.WriteFile(man, bytes.Replace(orig, []byte(c.old), []byte(c.new), 1), 0o644)
		mustRun(t, kiln, "sign", man, "--key", key+".key")
		verifyFails(t, "manifest", c.want, qcow, "--key", pub)
	}
	os.WriteFile(man, orig, 0o644)
	mustRun(t, kiln, "sign", man, "--key", key+".key")
	mustRun(t, kiln, "verify", qcow, "--key", pub)
}

// TestFormatBuildReplacesOutputs: a build into an earlier build's output
// directory leaves only its own converted images.
func TestFormatBuildReplacesOutputs(t *testing.T) {
	dir := t.TempDir()
	// Ed25519 signs deterministically: the slot's signed record, and so
	// the manifest, is the same from build to build.
	mustRun(t, kiln, "keygen", "--type", "ed25519", "-o", filepath.Join(dir, "k"))
	out := buildSmall(t, dir, filepath.Join(dir, "k.key"), "--format", "qcow2,vhd")
	if !fileExists(filepath.Join(out, "disk.qcow2")) || !fileExists(filepath.Join(out, "disk.vhd")) {
		t.Fatalf("outputs: %v", dirNames(t, out))
	}
	// The order asked for does not change the manifest.
	first, _ := os.ReadFile(filepath.Join(out, "manifest.json"))
	buildSmall(t, dir, filepath.Join(dir, "k.key"), "--format", "vhd", "--format", "qcow2")
	if again, _ := os.ReadFile(filepath.Join(out, "manifest.json")); !bytes.Equal(first, again) {
		t.Error("--format vhd --format qcow2 wrote another manifest than --format qcow2,vhd")
	}
	buildSmall(t, dir, filepath.Join(dir, "k.key"), "--format", "vmdk")
	want := []string{"disk.img", "disk.vmdk", "manifest.json", "manifest.json.sig", "provenance.intoto.json", "sbom.cdx.json", "sbom.spdx.json", "usr.blockmap.json", "usr.img"}
	if got := dirNames(t, out); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("after a build with --format vmdk: %v, want %v", got, want)
	}
	// Without --format, the manifest is format 2, as before there were
	// outputs.
	buildSmall(t, dir, filepath.Join(dir, "k.key"))
	if m := readManifest(t, out); m.Format != manifest.DocumentsFormatVersion || len(m.Outputs) != 0 || fileExists(filepath.Join(out, "disk.vmdk")) {
		t.Errorf("a build without --format: format %d, %d outputs, %v", m.Format, len(m.Outputs), dirNames(t, out))
	}
}

// TestConvertErrors: bad input is refused with exit 2, naming the file or
// the format, and leaves nothing behind.
func TestConvertErrors(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.img")
	mustRun(t, "truncate", "-s", "8M", raw)
	os.WriteFile(filepath.Join(dir, "data"), bytes.Repeat([]byte("kiln"), 1000), 0o644)
	mustRun(t, "dd", "if="+filepath.Join(dir, "data"), "of="+raw, "conv=notrunc", "status=none")
	qcow := filepath.Join(dir, "disk.qcow2")
	mustRun(t, kiln, "convert", "-q", raw, "--format", "qcow2")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"convert", filepath.Join(dir, "missing.img"), "--format", "qcow2"}, "missing.img"},
		{[]string{"convert", raw, "--format", "qcow9"}, `"qcow9"`},
		{[]string{"convert", raw}, "--format is required"},
		{[]string{"convert", qcow, "--format", "vhd", "-o", filepath.Join(dir, "x.vhd")}, "is a qcow2 image"},
		{[]string{"convert", raw, "--format", "qcow2"}, "exists (--force replaces it)"},
		{[]string{"convert", raw, "--format", "qcow2", "-o", raw, "--force"}, "is the input image"},
		{[]string{"convert", raw, "--format", "vhd", "-o", filepath.Join(dir, "no", "such", "dir.vhd")}, "no directory"},
		{[]string{"convert", dir, "--format", "vhd"}, "is a directory"},
		{[]string{"build", filepath.Join(dir, "r.yaml"), "-o", filepath.Join(dir, "o"), "--format", "qcow2,vmdk9"}, `"vmdk9"`},
		{[]string{"build", filepath.Join(dir, "r.yaml"), "-o", filepath.Join(dir, "o"), "--format", "qcow2,qcow2"}, "named twice"},
	} {
		r := run(t, kiln, c.args...)
		if r.code != 2 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("kiln %s: exit %d, want 2 and %q\n%s", strings.Join(c.args, " "), r.code, c.want, r.stderr)
		}
	}
	if got := dirNames(t, dir); strings.Join(got, " ") != "data disk.img disk.qcow2" {
		t.Errorf("left behind: %v", got)
	}
	// --force replaces; --json says what was written.
	r := run(t, kiln, "convert", raw, "--format", "qcow2", "--force", "--json")
	var res struct {
		Output, Format, Digest string
		Size                   int64
		VirtualSize            int64 `json:"virtual_size"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &res); r.code != 0 || err != nil {
		t.Fatalf("--json: %v\n%s%s", err, r.stdout, r.stderr)
	}
	if res.Output != qcow || res.Format != "qcow2" || res.VirtualSize != 8<<20 || res.Digest != chunkedDigest(t, qcow) {
		t.Errorf("--json: %+v", res)
	}
	// An interrupted conversion leaves nothing: a big raw.xz, stopped.
	big := filepath.Join(dir, "big.img")
	f, _ := os.Create(big)
	f.Truncate(1 << 30)
	rnd := rand.New(rand.NewPCG(1, 1))
	buf := make([]byte, 64<<20)
	for i := range buf {
		buf[i] = byte(rnd.Uint32())
	}
	f.WriteAt(buf, 0)
	f.Close()
	cmd := exec.Command(kiln, "convert", "-q", big, "--format", "raw.xz", "-o", filepath.Join(dir, "big.xz"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	cmd.Process.Signal(os.Interrupt)
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 {
		t.Errorf("interrupted: %v, want exit 130", err)
	}
	if got := dirNames(t, dir); strings.Join(got, " ") != "big.img data disk.img disk.qcow2" {
		t.Errorf("an interrupted conversion left: %v", got)
	}
}

// TestConvertBigSparse: a 64 GiB raw image with 6 MiB of data converts to
// every format in about the time of its data, with bounded memory (peak
// RSS by GNU time), and reads back as the raw image (qemu-img compare).
func TestConvertBigSparse(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "big.img")
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 30
	f.Truncate(size)
	rnd := rand.New(rand.NewPCG(2, 2))
	buf := make([]byte, 1<<20)
	for _, off := range []int64{0, 1<<30 + 123*512, 17 << 30, 33<<30 + 4096, 48<<30 - 512, size - 1<<20} {
		for i := range buf {
			buf[i] = byte(rnd.Uint32())
		}
		f.WriteAt(buf, off)
	}
	f.Close()
	for _, c := range formatFiles {
		out := filepath.Join(dir, c.file)
		r := run(t, "/usr/bin/time", "-f", "%e %M", kiln, "convert", "-q", raw, "--format", c.format, "-o", out)
		if r.code != 0 {
			t.Fatalf("convert %s: %s", c.format, r.stderr)
		}
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		fields := strings.Fields(lines[len(lines)-1])
		secs, _ := strconv.ParseFloat(fields[0], 64)
		kib, _ := strconv.ParseInt(fields[1], 10, 64)
		st, _ := os.Stat(out)
		t.Logf("%-11s %6.2f s, peak RSS %4d MiB, %d bytes", c.format, secs, kib>>10, st.Size())
		// Reading 64 GiB of zeros takes tens of seconds here; the data
		// takes well under one.
		if secs > 15 || kib > 400<<10 {
			t.Errorf("%s: %.2f s, peak RSS %d MiB: the holes were read, or memory grew with the disk", c.format, secs, kib>>10)
		}
		if c.qemu != "" {
			if r := run(t, "qemu-img", "compare", "-f", "raw", "-F", c.qemu, raw, out); r.code != 0 {
				t.Errorf("qemu-img compare %s: %s%s", c.format, r.stdout, r.stderr)
			}
		}
		os.Remove(out)
	}
}
