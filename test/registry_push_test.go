package test

import (
	"bufio"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRegistryOrasPull: a generic OCI client (the oras CLI) pulls a
// kiln build as files named for what they are: the compressed images as
// FILE.zst, which zstd turns into the build's files byte for byte, the
// rest as they are; a containerDisk's layer as disk.qcow2.tar.gz, which
// tar unpacks to disk/disk.qcow2. kiln pull still restores the build.
func TestRegistryOrasPull(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "-o", key)
	out := buildSmall(t, dir, key+".key", "--format", "qcow2,vhd")
	reg, px, env := registryBehindProxy(t)
	ref := px.host + "/kiln/oras:1.0.0"
	pushJSON(t, env, out, ref, "--ca-file", reg.ca)

	got := filepath.Join(dir, "oras")
	os.Mkdir(got, 0o755)
	oras(t, reg, got, env, "pull", ref, "-o", got)
	// File oras wrote → the build's file it holds ("" for itself).
	want := map[string]string{"disk.img.zst": "disk.img", "disk.qcow2.zst": "disk.qcow2", "disk.vhd.zst": "disk.vhd",
		"usr.img.zst": "usr.img", "usr.blockmap.json": "", "manifest.json": ""}
	var wantNames []string
	for n := range want {
		wantNames = append(wantNames, n)
	}
	slices.Sort(wantNames)
	if names := dirNames(t, got); !slices.Equal(names, wantNames) {
		t.Fatalf("oras pull wrote %v, want %v", names, wantNames)
	}
	for name, orig := range want {
		if orig == "" {
			mustRun(t, "cmp", filepath.Join(got, name), filepath.Join(out, name))
			continue
		}
		dec := filepath.Join(dir, "dec-"+orig)
		mustRun(t, "zstd", "-d", "-q", "-o", dec, filepath.Join(got, name))
		mustRun(t, "cmp", dec, filepath.Join(out, orig))
	}

	pulled := filepath.Join(dir, "pulled")
	mustRun(t, "env", append(append([]string{}, env...), kiln, "pull", "-q", ref, "-o", pulled, "--key", key+".pub", "--ca-file", reg.ca)...)
	sameDir(t, out, pulled)

	// The containerDisk: one gzip tar layer, titled so.
	diskRef := px.host + "/kiln/oras-disk:1.0.0"
	pushJSON(t, env, out, diskRef, "--containerdisk", "--ca-file", reg.ca)
	gotDisk := filepath.Join(dir, "oras-disk")
	os.Mkdir(gotDisk, 0o755)
	oras(t, reg, gotDisk, env, "pull", diskRef, "-o", gotDisk)
	if names := dirNames(t, gotDisk); !slices.Equal(names, []string{"disk.qcow2.tar.gz"}) {
		t.Fatalf("oras pull of the containerDisk wrote %v, want [disk.qcow2.tar.gz]", names)
	}
	mustRun(t, "gzip", "-t", filepath.Join(gotDisk, "disk.qcow2.tar.gz"))
	mustRun(t, "tar", "-xzf", filepath.Join(gotDisk, "disk.qcow2.tar.gz"), "-C", gotDisk)
	mustRun(t, "cmp", filepath.Join(gotDisk, "disk", "disk.qcow2"), filepath.Join(out, "disk.qcow2"))
}

// sparse reports whether path occupies less than half its size.
func sparse(t *testing.T, path string) bool {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks*512 < st.Size/2
}

// TestRegistryPushCompressesEveryImage: every disk image goes up
// compressed (+zstd, titled FILE.zst) but those that are compressed
// streams already (raw.zst, raw.xz), the fixed VHD included, and comes
// back byte for byte, sparse where the original was.
func TestRegistryPushCompressesEveryImage(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "-o", key)
	out := buildSmall(t, dir, key+".key", "--format", "raw,"+allFormats())
	reg, px, env := registryBehindProxy(t)
	ca := []string{"--ca-file", reg.ca}

	t.Run("vhd", func(t *testing.T) {
		ref := px.host + "/kiln/vhd:1.0.0"
		start := time.Now()
		p := pushJSON(t, env, append([]string{out, ref, "--format", "vhd"}, ca...)...)
		took := time.Since(start)
		vhd := filepath.Join(out, "disk.vhd")
		st, _ := os.Stat(vhd)
		m := reg.manifest(t, px.host, "kiln/vhd", "1.0.0")
		var found bool
		for _, l := range m.Layers {
			if l.Annotations["vnd.kiln.file"] != "disk.vhd" {
				continue
			}
			found = true
			blob := reg.get(t, px.host, "/v2/kiln/vhd/blobs/"+l.Digest, "")
			t.Logf("disk.vhd: %d bytes (%d MiB), blob %d bytes (%s, %s); push %v", st.Size(), st.Size()>>20, len(blob), l.MediaType, l.Annotations["org.opencontainers.image.title"], took.Round(time.Millisecond))
			if l.MediaType != "application/vnd.kiln.disk.vhd+zstd" || l.Annotations["org.opencontainers.image.title"] != "disk.vhd.zst" || int64(len(blob)) != l.Size {
				t.Errorf("disk.vhd layer %+v, blob of %d bytes", l, len(blob))
			}
			if int64(len(blob)) > st.Size()/20 {
				t.Errorf("disk.vhd blob %d bytes for a %d-byte file: not compressed", len(blob), st.Size())
			}
		}
		if !found {
			t.Fatalf("no disk.vhd layer in %+v (push said %+v)", m.Layers, p.Blobs)
		}
		pulled := filepath.Join(dir, "pulled-vhd")
		start = time.Now()
		mustRun(t, "env", append(append([]string{}, env...), append([]string{kiln, "pull", "-q", ref, "-o", pulled, "--key", key + ".pub"}, ca...)...)...)
		t.Logf("pull --key of it: %v", time.Since(start).Round(time.Millisecond))
		got := filepath.Join(pulled, "disk.vhd")
		mustRun(t, "cmp", vhd, got)
		if sparse(t, vhd) && !sparse(t, got) {
			t.Errorf("the pulled disk.vhd is not sparse; the original is")
		}
		// QEMU has no checker for VHD (qemu-img check: "This image format
		// does not support checks"): qemu-img reads it as the disk instead.
		if r := run(t, "qemu-img", "compare", "-f", "raw", "-F", "vpc", filepath.Join(out, "disk.img"), got); r.code != 0 || !strings.Contains(r.stdout, "Images are identical.") {
			t.Errorf("qemu-img compare: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if info := qemuImgInfo(t, "vpc", got); info.Format != "vpc" {
			t.Errorf("qemu-img info: %+v", info)
		}
	})

	t.Run("every format", func(t *testing.T) {
		ref := px.host + "/kiln/all:1.0.0"
		p := pushJSON(t, env, append([]string{out, ref}, ca...)...)
		sizes := map[string]int64{}
		for _, b := range p.Blobs {
			sizes[b.Name] = b.Size
			f := slices.IndexFunc(formatFiles, func(f struct{ format, file, qemu string }) bool { return f.file == b.Name })
			if f < 0 && b.Name != "disk.img" && b.Name != "usr.img" {
				continue
			}
			st, err := os.Stat(filepath.Join(out, b.Name))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%-18s %10d bytes → blob %9d bytes (%s, title %s)", b.Name, st.Size(), b.Size, b.MediaType, b.Title)
			stream := b.Name == "disk.img.zst" || b.Name == "disk.img.xz"
			switch {
			case stream && (strings.HasSuffix(b.MediaType, "+zstd") || b.Size != st.Size() || b.Title != b.Name):
				t.Errorf("%s, a compressed stream, pushed as %+v", b.Name, b)
			case !stream && (!strings.HasSuffix(b.MediaType, "+zstd") || b.Size >= st.Size() || b.Title != b.Name+".zst" && b.Title != b.Name+".kiln.zst"):
				t.Errorf("%s (%d bytes) pushed as %+v: not compressed", b.Name, st.Size(), b)
			}
		}
		if len(sizes) < len(formatFiles)+4 {
			t.Errorf("pushed %v", sizes)
		}
		pulled := filepath.Join(dir, "pulled-all")
		mustRun(t, "env", append(append([]string{}, env...), append([]string{kiln, "pull", "-q", ref, "-o", pulled, "--key", key + ".pub"}, ca...)...)...)
		sameDir(t, out, pulled)
		for _, f := range formatFiles {
			orig, got := filepath.Join(out, f.file), filepath.Join(pulled, f.file)
			if sparse(t, orig) && !sparse(t, got) {
				t.Errorf("the pulled %s is not sparse; the original is", f.file)
			}
			if f.qemu != "" && f.qemu != "vpc" {
				if r := run(t, "qemu-img", "check", "-f", f.qemu, got); r.code != 0 || !strings.Contains(r.stdout, "No errors were found on the image.") {
					t.Errorf("qemu-img check %s: exit %d\n%s%s", f.file, r.code, r.stdout, r.stderr)
				}
			}
		}
	})
}

// TestRegistryPushRefusesUnvouched: push publishes only images that the
// build's manifest.json (what the signature covers) vouches for, byte for
// byte, and with --key only a build whose manifest.json verifies. Anything
// else is refused before any upload: exit 2, the file and what differs
// named, no blob uploaded, no tag made.
func TestRegistryPushRefusesUnvouched(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "-o", key)
	out := buildSmall(t, dir, key+".key", "--format", "qcow2")
	reg, px, env := registryBehindProxy(t)
	ca := []string{"--ca-file", reg.ca}
	usr := readManifest(t, out).Partition("USR-A")

	// disk.qcow2 converted again, by qemu-img: the same disk, other bytes.
	reconverted := copyBuild(t, out, filepath.Join(dir, "reconverted"))
	os.Remove(filepath.Join(reconverted, "disk.qcow2"))
	mustRun(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", filepath.Join(reconverted, "disk.img"), filepath.Join(reconverted, "disk.qcow2"))
	// disk.vhd converted after the build: the manifest does not list it.
	unlisted := copyBuild(t, out, filepath.Join(dir, "unlisted"))
	mustRun(t, kiln, "convert", "-q", filepath.Join(unlisted, "disk.img"), "--format", "vhd")
	// A byte of disk.qcow2 changed.
	changedQcow2 := copyBuild(t, out, filepath.Join(dir, "changed-qcow2"))
	st, _ := os.Stat(filepath.Join(changedQcow2, "disk.qcow2"))
	flip(t, filepath.Join(changedQcow2, "disk.qcow2"), st.Size()-4096)
	// A byte of disk.img changed, in USR-A.
	changedDisk := copyBuild(t, out, filepath.Join(dir, "changed-disk"))
	flip(t, filepath.Join(changedDisk, "disk.img"), usr.Offset+8192)
	// A byte of usr.img changed.
	changedUsr := copyBuild(t, out, filepath.Join(dir, "changed-usr"))
	flip(t, filepath.Join(changedUsr, "usr.img"), 8192)

	for _, c := range []struct {
		name  string
		args  []string
		words []string
	}{
		{"reconverted", []string{reconverted}, []string{"disk.qcow2 is not what manifest.json vouches for", "digest"}},
		{"unlisted", []string{unlisted}, []string{"disk.vhd is not what manifest.json vouches for", "lists no output disk.vhd", "--format vhd"}},
		{"unlisted-format", []string{unlisted, "--format", "vhd"}, []string{"disk.vhd is not what manifest.json vouches for", "lists no output disk.vhd"}},
		{"changed-qcow2", []string{changedQcow2}, []string{"disk.qcow2 is not what manifest.json vouches for", "digest"}},
		{"changed-disk", []string{changedDisk}, []string{"disk.img is not what manifest.json vouches for", "partition USR-A: digest"}},
		{"changed-usr", []string{changedUsr}, []string{"usr.img is not what manifest.json vouches for", "digest", "USR-A"}},
		{"changed-containerdisk", []string{changedDisk, "--containerdisk", "--format", "raw"}, []string{"disk.img is not what manifest.json vouches for", "partition USR-A"}},
		{"unlisted-containerdisk", []string{unlisted, "--containerdisk", "--format", "vhd"}, []string{"disk.vhd is not what manifest.json vouches for"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			px.reset(0, 0)
			ref := px.host + "/kiln/" + c.name + ":1.0.0"
			args := append([]string{"push", c.args[0], ref}, c.args[1:]...)
			expectFailure(t, env, 2, append(c.words, "nothing was pushed"), append(args, ca...)...)
			if n := px.count(blobUpload); n != 0 {
				t.Errorf("%d blob upload requests after a refused push", n)
			}
			if tagExists(t, reg, px.host, "kiln/"+c.name, "1.0.0") {
				t.Errorf("the refused push made the tag %s", ref)
			}
		})
	}
	// With --key, manifest.json itself must verify: a manifest changed
	// after signing (its files matching it), another key, no signature.
	other := filepath.Join(dir, "other")
	mustRun(t, kiln, "keygen", "-o", other)
	changedManifest := copyBuild(t, out, filepath.Join(dir, "changed-manifest"))
	m, _ := os.ReadFile(filepath.Join(changedManifest, "manifest.json"))
	os.WriteFile(filepath.Join(changedManifest, "manifest.json"), []byte(strings.Replace(string(m), `"version": "1.0.0"`, `"version": "1.0.1"`, 1)), 0o644)
	unsigned := copyBuild(t, out, filepath.Join(dir, "unsigned"))
	os.Remove(filepath.Join(unsigned, "manifest.json.sig"))
	for _, c := range []struct {
		name, dir, key string
		words          []string
	}{
		{"key-changed-manifest", changedManifest, key, []string{"manifest.json does not verify with " + key + ".pub"}},
		{"key-other", out, other, []string{"manifest.json does not verify with " + other + ".pub"}},
		{"key-unsigned", unsigned, key, []string{"asks for a signed build", "manifest.json.sig"}},
		{"key-containerdisk", changedManifest, key, []string{"manifest.json does not verify with"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			px.reset(0, 0)
			args := []string{"push", c.dir, px.host + "/kiln/" + c.name + ":1.0.0", "--key", c.key + ".pub"}
			if strings.HasSuffix(c.name, "containerdisk") {
				args = append(args, "--containerdisk")
			}
			expectFailure(t, env, 2, append(c.words, "nothing was pushed"), append(args, ca...)...)
			if n := px.count(blobUpload); n != 0 || tagExists(t, reg, px.host, "kiln/"+c.name, "1.0.0") {
				t.Errorf("a push refused: %d blob upload requests, or the tag exists", n)
			}
		})
	}
	// Without --key the changed manifest.json is pushed (its files match
	// it; pull --key refuses it: TestRegistryPullRefusesTampered).
	pushJSON(t, env, append([]string{changedManifest, px.host + "/kiln/changed-manifest:1.0.0"}, ca...)...)
	// What the manifest vouches for still goes: the qcow2 of the build
	// whose disk.img changed, and the build itself, with --key too.
	pushJSON(t, env, append([]string{changedDisk, px.host + "/kiln/qcow2-only:1.0.0", "--format", "qcow2"}, ca...)...)
	pushJSON(t, env, append([]string{out, px.host + "/kiln/good:1.0.0", "--key", key + ".pub"}, ca...)...)
	pushJSON(t, env, append([]string{out, px.host + "/kiln/good-disk:1.0.0", "--containerdisk", "--key", key + ".pub"}, ca...)...)
}

// startSlowProxy starts a TLS proxy to the registry that holds every
// blob upload (PUT, POST, PATCH under /blobs/) and blob download (GET)
// for delay before passing it on: a slow link.
func (r *testRegistry) startSlowProxy(t *testing.T, delay time.Duration) string {
	t.Helper()
	target, _ := url.Parse("https://" + r.addr)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: r.pool}},
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if strings.Contains(req.URL.Path, "/blobs/") && (req.Method == http.MethodPut || req.Method == http.MethodGet) {
			time.Sleep(delay)
		}
		rp.ServeHTTP(w, req)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{r.cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// timedLine is a line of stderr and when it arrived.
type timedLine struct {
	text string
	at   time.Duration
}

// kilnTimed runs kiln with stderr a pipe, read as it comes: the lines
// with their arrival times, and when kiln exited.
func kilnTimed(t *testing.T, env []string, args ...string) ([]timedLine, time.Duration) {
	t.Helper()
	cmd := exec.Command(kiln, args...)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var lines []timedLine
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		lines = append(lines, timedLine{sc.Text(), time.Since(start)})
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("kiln %v: %v\n%v", args, err, lines)
	}
	return lines, time.Since(start)
}

// find returns the first line that matches re, failing without one.
func find(t *testing.T, lines []timedLine, re string) timedLine {
	t.Helper()
	rx := regexp.MustCompile(re)
	for _, l := range lines {
		if rx.MatchString(l.text) {
			return l
		}
	}
	t.Fatalf("no line matches %q in:\n%v", re, lines)
	return timedLine{}
}

// TestRegistryProgress: push and pull report each blob's steps on stderr
// as they happen, one line a step in a pipe, with the bytes done and the
// total; nothing with -q or --json. The registry is reached through a
// proxy that holds every blob transfer 600 ms, so the lines of early
// steps must arrive well before kiln exits.
func TestRegistryProgress(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "-o", key)
	out := buildSmall(t, dir, key+".key")
	reg := startRegistry(t)
	const delay = 600 * time.Millisecond
	host := reg.startSlowProxy(t, delay)
	env := reg.env(t, reg.pass, host)
	ref := host + "/kiln/progress:1.0.0"

	lines, end := kilnTimed(t, env, "push", out, ref, "--ca-file", reg.ca)
	for _, l := range lines {
		t.Logf("push %6.2fs  %s", l.at.Seconds(), l.text)
	}
	t.Logf("push exited at %.2fs", end.Seconds())
	find(t, lines, `^kiln: checking disk\.img against manifest\.json \(203\.0 MiB\): 203\.0 MiB in `)
	hashed := find(t, lines, `^kiln: compressing and hashing disk\.img \(203\.0 MiB\): 203\.0 MiB in `)
	up := find(t, lines, `^kiln: uploading disk\.img\.zst \(([0-9.]+ [KM]iB)\): ([0-9.]+ [KM]iB) in `)
	if m := regexp.MustCompile(`\((.*)\): (.*) in`).FindStringSubmatch(up.text); m[1] != m[2] {
		t.Errorf("uploaded %s of %s", m[2], m[1])
	}
	find(t, lines, `^kiln: uploading usr\.img\.zst `)
	find(t, lines, `^kiln: uploading manifest\.json `)
	// After disk.img's upload come three more blob uploads and the
	// signature's, each held: its line came seconds before the end.
	if hashed.at+4*delay > end || up.at+3*delay > end {
		t.Errorf("progress lines came late: hashing at %v, disk.img uploaded at %v, exit at %v", hashed.at, up.at, end)
	}

	pulled := filepath.Join(dir, "pulled")
	lines, end = kilnTimed(t, env, "pull", ref, "-o", pulled, "--key", key+".pub", "--ca-file", reg.ca)
	for _, l := range lines {
		t.Logf("pull %6.2fs  %s", l.at.Seconds(), l.text)
	}
	t.Logf("pull exited at %.2fs", end.Seconds())
	first := find(t, lines, `^kiln: downloading manifest\.json \(([0-9.]+ KiB)\): `)
	down := find(t, lines, `^kiln: downloading disk\.img\.zst \(([0-9.]+ [KM]iB)\): ([0-9.]+ [KM]iB) in `)
	if m := regexp.MustCompile(`\((.*)\): (.*) in`).FindStringSubmatch(down.text); m[1] != m[2] {
		t.Errorf("downloaded %s of %s", m[2], m[1])
	}
	find(t, lines, `^kiln: decompressing disk\.img \(203\.0 MiB\): 203\.0 MiB in `)
	find(t, lines, `^kiln: verifying disk\.img against the signed manifest\.json \(203\.0 MiB\): 203\.0 MiB in `)
	if first.at+3*delay > end || down.at+delay > end {
		t.Errorf("progress lines came late: manifest.json at %v, disk.img at %v, exit at %v", first.at, down.at, end)
	}
	sameDir(t, out, pulled)

	// -q and --json: no progress.
	for _, args := range [][]string{
		{"push", "-q", out, host + "/kiln/progress:q", "--ca-file", reg.ca},
		{"push", "--json", out, host + "/kiln/progress:json", "--ca-file", reg.ca},
		{"pull", "-q", ref, "-o", filepath.Join(dir, "q"), "--ca-file", reg.ca},
		{"pull", "--json", ref, "-o", filepath.Join(dir, "json"), "--ca-file", reg.ca},
	} {
		if r := kilnEnv(t, env, args...); r.code != 0 || r.stderr != "" {
			t.Errorf("kiln %v: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
}

// TestRegistryPushCloudFormats: the gce and ova outputs go up as the
// files they are (both compressed already), titled with their own names,
// and come back byte for byte through kiln pull --key; kiln verify passes
// on what was pulled.
func TestRegistryPushCloudFormats(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "-o", key)
	out := buildSmall(t, dir, key+".key", "--format", "gce,ova")
	reg, px, env := registryBehindProxy(t)
	ca := []string{"--ca-file", reg.ca}
	ref := px.host + "/kiln/cloud:1.0.0"
	p := pushJSON(t, env, append([]string{out, ref, "--format", "gce,ova"}, ca...)...)
	want := map[string]string{"disk.tar.gz": "application/vnd.kiln.disk.gce", "disk.ova": "application/vnd.kiln.disk.ova"}
	for _, b := range p.Blobs {
		mt, ok := want[b.Name]
		if !ok {
			continue
		}
		delete(want, b.Name)
		st, err := os.Stat(filepath.Join(out, b.Name))
		if err != nil {
			t.Fatal(err)
		}
		if b.MediaType != mt || b.Title != b.Name || b.Size != st.Size() {
			t.Errorf("%s pushed as %+v, want %s titled %s, %d bytes", b.Name, b, mt, b.Name, st.Size())
		}
	}
	if len(want) > 0 {
		t.Fatalf("not pushed: %v (pushed %+v)", want, p.Blobs)
	}
	pulled := filepath.Join(dir, "pulled")
	mustRun(t, "env", append(append([]string{}, env...), append([]string{kiln, "pull", "-q", ref, "-o", pulled, "--key", key + ".pub"}, ca...)...)...)
	for _, name := range []string{"disk.tar.gz", "disk.ova"} {
		mustRun(t, "cmp", filepath.Join(out, name), filepath.Join(pulled, name))
		mustRun(t, kiln, "verify", filepath.Join(pulled, name), "--key", key+".pub")
	}
}
