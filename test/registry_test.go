package test

import (
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The registry tests run kiln push and kiln pull against Debian's
// docker-registry (distribution 2.8, which has no referrers API: the
// signature is found through the fallback tag), started by each test on
// loopback with a self-signed certificate and htpasswd auth, through a
// proxy that counts requests and can drop connections.

// sameDir fails unless directories a and b hold the same file names with
// identical bytes (cmp).
func sameDir(t *testing.T, a, b string) {
	t.Helper()
	na, nb := dirNames(t, a), dirNames(t, b)
	if !slices.Equal(na, nb) {
		t.Fatalf("%s holds %v, %s holds %v", a, na, b, nb)
	}
	for _, n := range na {
		mustRun(t, "cmp", filepath.Join(a, n), filepath.Join(b, n))
	}
}

// pushedJSON is what kiln push --json prints.
type pushedJSON struct {
	Reference string `json:"reference"`
	Digest    string `json:"digest"`
	Signature string `json:"signature"`
	Uploaded  int64  `json:"uploaded_bytes"`
	Blobs     []struct {
		Name      string `json:"name"`
		Title     string `json:"title"`
		MediaType string `json:"media_type"`
		Digest    string `json:"digest"`
		Size      int64  `json:"size"`
		Uploaded  bool   `json:"uploaded"`
	} `json:"blobs"`
}

func pushJSON(t *testing.T, env []string, args ...string) pushedJSON {
	t.Helper()
	r := kilnEnv(t, env, append([]string{"push", "--json"}, args...)...)
	if r.code != 0 {
		t.Fatalf("kiln push %v: exit %d\n%s", args, r.code, r.stderr)
	}
	var p pushedJSON
	if err := json.Unmarshal([]byte(r.stdout), &p); err != nil {
		t.Fatalf("push --json: %v\n%s", err, r.stdout)
	}
	return p
}

// ociManifest is the part of an OCI image manifest the tests read.
type ociManifest struct {
	MediaType    string            `json:"mediaType"`
	ArtifactType string            `json:"artifactType"`
	Config       ociDescriptor     `json:"config"`
	Layers       []ociDescriptor   `json:"layers"`
	Subject      *ociDescriptor    `json:"subject"`
	Annotations  map[string]string `json:"annotations"`
	Manifests    []ociDescriptor   `json:"manifests"` // an index
}

type ociDescriptor struct {
	MediaType    string            `json:"mediaType"`
	ArtifactType string            `json:"artifactType"`
	Digest       string            `json:"digest"`
	Size         int64             `json:"size"`
	Annotations  map[string]string `json:"annotations"`
}

func (r *testRegistry) manifest(t *testing.T, host, repo, ref string) ociManifest {
	t.Helper()
	b := r.get(t, host, "/v2/"+repo+"/manifests/"+ref, "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json")
	var m ociManifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("manifest %s: %v", ref, err)
	}
	return m
}

// expectFailure runs kiln, wants the exit code and every word in stderr,
// and returns stderr.
func expectFailure(t *testing.T, env []string, code int, words []string, args ...string) string {
	t.Helper()
	r := kilnEnv(t, env, args...)
	if r.code != code {
		t.Fatalf("kiln %v: exit %d, want %d\n%s%s", args, r.code, code, r.stdout, r.stderr)
	}
	t.Logf("kiln %s: exit %d: %s", args[0], r.code, strings.TrimSpace(r.stderr))
	for _, w := range words {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("kiln %v: stderr does not say %q:\n%s", args, w, r.stderr)
		}
	}
	return r.stderr
}

// absent fails unless path does not exist.
func absent(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); err == nil {
		t.Errorf("%s exists after a failed pull: %v", path, dirNamesOrNil(path))
	}
}

func dirNamesOrNil(d string) []string {
	es, _ := os.ReadDir(d)
	var n []string
	for _, e := range es {
		n = append(n, e.Name())
	}
	return n
}

func TestRegistryPushPullRoundTrip(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "-o", key)
	out := buildSmall(t, dir, key+".key")
	reg, px, env := registryBehindProxy(t)
	ref := px.host + "/kiln/small:1.0.0"

	first := pushJSON(t, env, out, ref, "--ca-file", reg.ca)
	if n := px.count(blobUpload); n == 0 || first.Uploaded == 0 {
		t.Fatalf("first push: %d upload requests, %d bytes", n, first.Uploaded)
	}
	pulled := filepath.Join(dir, "pulled")
	r := kilnEnv(t, env, "pull", ref, "-o", pulled, "--key", key+".pub", "--ca-file", reg.ca)
	if r.code != 0 {
		t.Fatalf("pull: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	sameDir(t, out, pulled)
	if !strings.Contains(r.stdout, "verified with") {
		t.Errorf("pull does not say it verified:\n%s", r.stdout)
	}
	// The pulled disk keeps its holes.
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(pulled, "disk.img"), &st); err != nil || st.Blocks*512 >= st.Size/2 {
		t.Errorf("pulled disk.img: %d bytes in %d blocks of 512: not sparse (%v)", st.Size, st.Blocks, err)
	}

	t.Run("media types and annotations", func(t *testing.T) {
		m := reg.manifest(t, px.host, "kiln/small", "1.0.0")
		if m.MediaType != "application/vnd.oci.image.manifest.v1+json" || m.ArtifactType != "application/vnd.kiln.build.v1" || m.Config.MediaType != "application/vnd.oci.empty.v1+json" {
			t.Errorf("manifest %s, artifact type %s, config %s", m.MediaType, m.ArtifactType, m.Config.MediaType)
		}
		want := map[string]string{"org.opencontainers.image.version": "1.0.0", "org.opencontainers.image.title": "small", "vnd.kiln.name": "small",
			"vnd.kiln.layout": readManifest(t, out).Layout, "org.opencontainers.image.created": "2023-11-14T22:13:20Z"}
		for k, v := range want {
			if m.Annotations[k] != v {
				t.Errorf("annotation %s = %q, want %q", k, m.Annotations[k], v)
			}
		}
		// Titled with what the blob is (a generic client writes that
		// file); a compressed one names its file in vnd.kiln.file.
		types := map[string]string{}
		for _, l := range m.Layers {
			types[l.Annotations["org.opencontainers.image.title"]] = l.MediaType + " " + l.Annotations["vnd.kiln.file"]
		}
		wantTypes := map[string]string{"disk.img.zst": "application/vnd.kiln.disk.raw+zstd disk.img", "usr.img.zst": "application/vnd.kiln.partition.raw+zstd usr.img",
			"usr.blockmap.json": "application/vnd.kiln.blockmap.v1+json ", "manifest.json": "application/vnd.kiln.manifest.v1+json "}
		if fmt.Sprint(types) != fmt.Sprint(wantTypes) {
			t.Errorf("layers %v, want %v", types, wantTypes)
		}
		// No referrers API in distribution 2.8: the signature is listed
		// by the fallback tag sha256-<digest>, an index.
		tags := string(reg.get(t, px.host, "/v2/kiln/small/tags/list", ""))
		fallback := "sha256-" + strings.TrimPrefix(first.Digest, "sha256:")
		if !strings.Contains(tags, fallback) {
			t.Fatalf("tags %s: no %s", tags, fallback)
		}
		idx := reg.manifest(t, px.host, "kiln/small", fallback)
		var artifactTypes []string
		for _, m := range idx.Manifests {
			artifactTypes = append(artifactTypes, m.ArtifactType)
		}
		if len(idx.Manifests) != 4 || idx.Manifests[0].Digest != first.Signature ||
			strings.Join(artifactTypes, " ") != "application/vnd.kiln.signature.v1 application/spdx+json application/vnd.cyclonedx+json application/vnd.in-toto+json" {
			t.Fatalf("referrers index %+v, want the signature %s, two SBOMs and the provenance", idx.Manifests, first.Signature)
		}
		sig := reg.manifest(t, px.host, "kiln/small", first.Signature)
		if sig.Subject == nil || sig.Subject.Digest != first.Digest || len(sig.Layers) != 1 || sig.Layers[0].MediaType != "application/vnd.kiln.signature.v1+base64" {
			t.Errorf("signature manifest %+v", sig)
		}
		sigBlob := reg.get(t, px.host, "/v2/kiln/small/blobs/"+sig.Layers[0].Digest, "")
		local, _ := os.ReadFile(filepath.Join(out, "manifest.json.sig"))
		if string(sigBlob) != string(local) {
			t.Errorf("signature blob %q, manifest.json.sig %q", sigBlob, local)
		}
	})

	t.Run("unchanged build uploads nothing", func(t *testing.T) {
		px.reset(0, 0)
		second := pushJSON(t, env, out, ref, "--ca-file", reg.ca)
		if n := px.count(blobUpload); n != 0 || second.Uploaded != 0 {
			t.Errorf("second push of the same build: %d upload requests, %d bytes uploaded", n, second.Uploaded)
		}
		if second.Digest != first.Digest || second.Signature != first.Signature {
			t.Errorf("same build, manifest %s then %s, signature %s then %s", first.Digest, second.Digest, first.Signature, second.Signature)
		}
		// A pull by digest gets the same files.
		byDigest := filepath.Join(dir, "by-digest")
		mustRun(t, "env", append(append([]string{}, env...), kiln, "pull", px.host+"/kiln/small@"+first.Digest, "-o", byDigest, "--ca-file", reg.ca)...)
		sameDir(t, out, byDigest)
	})

	t.Run("uncompressed", func(t *testing.T) {
		p := pushJSON(t, env, out, px.host+"/kiln/small:raw", "--compression", "none", "--ca-file", reg.ca)
		disk, _ := os.Stat(filepath.Join(out, "disk.img"))
		for _, b := range p.Blobs {
			if b.Name == "disk.img" && (b.MediaType != "application/vnd.kiln.disk.raw" || b.Size != disk.Size() || !b.Uploaded) {
				t.Errorf("disk.img pushed as %+v, want the %d raw bytes", b, disk.Size())
			}
		}
		pulled := filepath.Join(dir, "pulled-raw")
		mustRun(t, "env", append(append([]string{}, env...), kiln, "pull", px.host+"/kiln/small:raw", "-o", pulled, "--key", key+".pub", "--ca-file", reg.ca)...)
		sameDir(t, out, pulled)
	})

	t.Run("bad input", func(t *testing.T) {
		expectFailure(t, env, 2, []string{"names no tag"}, "push", out, px.host+"/kiln/small", "--ca-file", reg.ca)
		expectFailure(t, env, 2, []string{"not a registry host"}, "pull", "kiln/small:1.0.0", "-o", filepath.Join(dir, "x"))
		expectFailure(t, env, 2, []string{"not a build directory"}, "push", dir, ref, "--ca-file", reg.ca)
		expectFailure(t, env, 2, []string{"unknown disk format"}, "push", out, ref, "--format", "floppy", "--ca-file", reg.ca)
		expectFailure(t, env, 2, []string{"not empty"}, "pull", ref, "-o", out, "--ca-file", reg.ca)
		expectFailure(t, env, 1, []string{"not found", px.host + "/kiln/small:9.9.9"}, "pull", px.host+"/kiln/small:9.9.9", "-o", filepath.Join(dir, "none"), "--ca-file", reg.ca)
		absent(t, filepath.Join(dir, "none"))
	})
}

// copyBuild copies a build directory, holes kept.
func copyBuild(t *testing.T, src, dst string) string {
	t.Helper()
	mustRun(t, "cp", "-a", "--sparse=always", src, dst)
	return dst
}

func TestRegistryPullRefusesTampered(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	other := filepath.Join(dir, "other")
	mustRun(t, kiln, "keygen", "-o", key)
	mustRun(t, kiln, "keygen", "-o", other)
	out := buildSmall(t, dir, key+".key")
	reg, px, env := registryBehindProxy(t)
	ca := []string{"--ca-file", reg.ca}

	// manifest.json changed after it was signed.
	changedManifest := copyBuild(t, out, filepath.Join(dir, "changed-manifest"))
	m, _ := os.ReadFile(filepath.Join(changedManifest, "manifest.json"))
	os.WriteFile(filepath.Join(changedManifest, "manifest.json"), []byte(strings.Replace(string(m), `"version": "1.0.0"`, `"version": "1.0.1"`, 1)), 0o644)
	// A byte of disk.img changed (in USR-A's file system); the manifest
	// and signature intact.
	changedDisk := copyBuild(t, out, filepath.Join(dir, "changed-disk"))
	usr := readManifest(t, out).Partition("USR-A")
	f, err := os.OpenFile(filepath.Join(changedDisk, "disk.img"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	f.ReadAt(b, usr.Offset+8192)
	f.WriteAt([]byte{b[0] ^ 0xff}, usr.Offset+8192)
	f.Close()
	// A signature of something else by the right key.
	otherSig := copyBuild(t, out, filepath.Join(dir, "other-sig"))
	os.WriteFile(filepath.Join(dir, "something"), []byte("something else\n"), 0o644)
	mustRun(t, kiln, "sign", "--key", key+".key", filepath.Join(dir, "something"))
	mustRun(t, "cp", filepath.Join(dir, "something.sig"), filepath.Join(otherSig, "manifest.json.sig"))
	// No signature at all.
	unsigned := copyBuild(t, out, filepath.Join(dir, "unsigned"))
	os.Remove(filepath.Join(unsigned, "manifest.json.sig"))

	for _, c := range []struct {
		name, dir, key string
		words          []string
		// byOras: kiln push refuses the build (its manifest.json does not
		// vouch for it), so it is pushed with oras, as an attacker with
		// write access to the repository could.
		byOras bool
	}{
		{"other key", out, other, []string{"manifest.json does not verify with", "does not verify"}, false},
		{"manifest changed", changedManifest, key, []string{"manifest.json does not verify with"}, false},
		{"disk changed", changedDisk, key, []string{"disk.img does not match the signed manifest.json", "digest USR-A"}, true},
		{"signature of another file", otherSig, key, []string{"manifest.json does not verify with"}, false},
		{"unsigned", unsigned, key, []string{"has no signature"}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			// Each in its own repository: a signature is a referrer of
			// the manifest's digest in a repository, and the unsigned and
			// re-signed builds have the signed build's manifest digest.
			tag := strings.ReplaceAll(c.name, " ", "-")
			ref := px.host + "/kiln/" + tag + ":1.0.0"
			if c.byOras {
				expectFailure(t, env, 2, []string{"disk.img is not what manifest.json vouches for", "partition USR-A: digest", "nothing was pushed"},
					append([]string{"push", c.dir, ref}, ca...)...)
				orasPushBuild(t, reg, env, c.dir, ref)
			} else {
				pushJSON(t, env, append([]string{c.dir, ref}, ca...)...)
			}
			// Into a new directory: nothing is left; into an empty one:
			// it stays empty.
			fresh := filepath.Join(dir, "pull-"+tag)
			expectFailure(t, env, 1, append([]string{ref}, c.words...), append([]string{"pull", ref, "-o", fresh, "--key", c.key + ".pub"}, ca...)...)
			absent(t, fresh)
			empty := filepath.Join(dir, "empty-"+tag)
			os.Mkdir(empty, 0o755)
			expectFailure(t, env, 1, nil, append([]string{"pull", ref, "-o", empty, "--key", c.key + ".pub"}, ca...)...)
			if n := dirNamesOrNil(empty); len(n) != 0 {
				t.Errorf("%s holds %v after a failed pull", empty, n)
			}
			// Without --key only the digests are checked, and they match
			// what was pushed.
			plain := filepath.Join(dir, "plain-"+tag)
			mustRun(t, "env", append(append([]string{}, env...), append([]string{kiln, "pull", ref, "-o", plain}, ca...)...)...)
			sameDir(t, c.dir, plain)
		})
	}
}

func TestRegistryPayload(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	other := filepath.Join(dir, "other")
	mustRun(t, kiln, "keygen", "-o", key)
	mustRun(t, kiln, "keygen", "-o", other)
	out := buildSmall(t, dir, key+".key")
	pl := filepath.Join(dir, "update.payload")
	mustRun(t, kiln, "payload", "generate", "-q", "--to", out, "-o", pl, "--key", key+".key", "--client", "kiln")
	reg, px, env := registryBehindProxy(t)
	ref := px.host + "/kiln/small-payload:1.0.0"

	p := pushJSON(t, env, pl, ref, "--ca-file", reg.ca)
	if len(p.Blobs) != 1 || p.Blobs[0].MediaType != "application/vnd.kiln.payload" || p.Signature != "" {
		t.Fatalf("payload push: %+v", p)
	}
	m := reg.manifest(t, px.host, "kiln/small-payload", "1.0.0")
	if m.ArtifactType != "application/vnd.kiln.payload.v1" || m.Annotations["org.opencontainers.image.version"] != "1.0.0" || m.Annotations["vnd.kiln.payload.kind"] != "full" {
		t.Errorf("payload manifest: artifact type %s, annotations %v", m.ArtifactType, m.Annotations)
	}
	pulled := filepath.Join(dir, "pulled")
	mustRun(t, "env", append(append([]string{}, env...), kiln, "pull", ref, "-o", pulled, "--key", key+".pub", "--ca-file", reg.ca)...)
	mustRun(t, "cmp", pl, filepath.Join(pulled, "update.payload"))
	if n := dirNames(t, pulled); len(n) != 1 {
		t.Errorf("pulled %v", n)
	}
	bad := filepath.Join(dir, "bad")
	expectFailure(t, env, 1, []string{"update.payload does not verify with"}, "pull", ref, "-o", bad, "--key", other+".pub", "--ca-file", reg.ca)
	absent(t, bad)
	// Not a payload, not a build directory.
	os.WriteFile(filepath.Join(dir, "junk"), []byte("not a payload"), 0o644)
	expectFailure(t, env, 2, []string{"not an update payload"}, "push", filepath.Join(dir, "junk"), ref, "--ca-file", reg.ca)
}

func TestRegistryPullDroppedConnection(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "-o", key)
	out := buildSmall(t, dir, key+".key")
	reg, px, env := registryBehindProxy(t)
	ref := px.host + "/kiln/small:1.0.0"
	// Uncompressed: disk.img is one blob of 203 MiB.
	p := pushJSON(t, env, out, ref, "--compression", "none", "--ca-file", reg.ca)
	const dropAfter = 1 << 20
	var disk int64
	for _, b := range p.Blobs {
		if b.Name == "disk.img" {
			disk = b.Size
		}
	}
	if disk < 8*dropAfter {
		t.Fatalf("disk.img blob is %d bytes: too small to drop 7 times after %d bytes", disk, dropAfter)
	}

	t.Run("resumed", func(t *testing.T) {
		px.reset(dropAfter, 2) // the first two blob downloads drop
		pulled := filepath.Join(dir, "resumed")
		r := kilnEnv(t, env, "pull", ref, "-o", pulled, "--key", key+".pub", "--ca-file", reg.ca)
		if r.code != 0 {
			t.Fatalf("pull through a dropping proxy: exit %d\n%s", r.code, r.stderr)
		}
		sameDir(t, out, pulled)
		if n := px.count(func(r string) bool { return strings.Contains(r, "Range: bytes=") }); n < 2 {
			t.Errorf("%d range requests after two dropped downloads", n)
		}
	})

	t.Run("gives up", func(t *testing.T) {
		px.reset(dropAfter, -1) // every blob download drops
		pulled := filepath.Join(dir, "dropped")
		expectFailure(t, env, 1, []string{ref, "blob disk.img", "gave up"}, "pull", ref, "-o", pulled, "--ca-file", reg.ca)
		absent(t, pulled)
	})
}

func TestRegistryCredentialsAndTLS(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "-o", key)
	out := buildSmall(t, dir, key+".key")
	reg := startRegistry(t)
	px := reg.startProxy(t, true)
	plain := reg.startProxy(t, false)
	ref := px.host + "/kiln/small:1.0.0"

	wrong := reg.env(t, "wrong-password", px.host)
	expectFailure(t, wrong, 1, []string{px.host, "refused access", "Unauthorized"}, "push", out, ref, "--ca-file", reg.ca)
	none := reg.env(t, reg.pass) // a config.json without this registry
	expectFailure(t, none, 1, []string{"refused access", "there is none for " + px.host, "config.json"}, "push", out, ref, "--ca-file", reg.ca)

	env := reg.env(t, reg.pass, px.host, plain.host)
	pushJSON(t, env, out, ref, "--ca-file", reg.ca)
	expectFailure(t, wrong, 1, []string{"refused access"}, "pull", ref, "-o", filepath.Join(dir, "wrong"), "--ca-file", reg.ca)
	absent(t, filepath.Join(dir, "wrong"))
	// TLS is checked: without the CA the certificate is refused.
	expectFailure(t, env, 1, []string{"certificate", "--ca-file"}, "pull", ref, "-o", filepath.Join(dir, "noca"))
	absent(t, filepath.Join(dir, "noca"))
	// A plain-HTTP registry is refused unless --insecure.
	plainRef := plain.host + "/kiln/small:1.0.0"
	expectFailure(t, env, 1, []string{"plain HTTP", "--insecure"}, "pull", plainRef, "-o", filepath.Join(dir, "plain"))
	absent(t, filepath.Join(dir, "plain"))
	// A push there fails before any layer is hashed: the registry is asked
	// first (no message about a blob).
	r := run(t, "env", append(append([]string{}, env...), kiln, "push", out, plainRef)...)
	if r.code != 1 || !strings.Contains(r.stderr, "plain HTTP") || strings.Contains(r.stderr, "blob") {
		t.Errorf("push to a plain-HTTP registry without --insecure: %+v", r)
	}
	pulled := filepath.Join(dir, "insecure")
	mustRun(t, "env", append(append([]string{}, env...), kiln, "pull", plainRef, "-o", pulled, "--insecure", "--key", key+".pub")...)
	sameDir(t, out, pulled)
	// And a push over plain HTTP (the upload URLs the registry gives).
	pushJSON(t, env, out, plain.host+"/kiln/other:1.0.0", "--insecure", "--compression", "none")
}

func TestRegistryContainerDisk(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "-o", key)
	out := buildSmall(t, dir, key+".key")
	reg, px, env := registryBehindProxy(t)
	p := pushJSON(t, env, out, px.host+"/kiln/small-disk:1.0.0", "--containerdisk", "--ca-file", reg.ca)
	m := reg.manifest(t, px.host, "kiln/small-disk", "1.0.0")
	if m.ArtifactType != "" || m.Config.MediaType != "application/vnd.oci.image.config.v1+json" || len(m.Layers) != 1 || m.Layers[0].MediaType != "application/vnd.oci.image.layer.v1.tar+gzip" {
		t.Fatalf("containerDisk manifest %+v", m)
	}
	if "sha256:"+hex.EncodeToString(sha256Of([]byte(mustGet(t, reg, px.host, "/v2/kiln/small-disk/manifests/1.0.0")))) != p.Digest {
		t.Errorf("manifest digest differs from the one push reported")
	}
	var cfg struct {
		Architecture, OS string
		RootFS           struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	json.Unmarshal(reg.get(t, px.host, "/v2/kiln/small-disk/blobs/"+m.Config.Digest, ""), &cfg)
	layer := filepath.Join(dir, "layer.tar.gz")
	os.WriteFile(layer, reg.get(t, px.host, "/v2/kiln/small-disk/blobs/"+m.Layers[0].Digest, ""), 0o644)
	// The config's diff_id is the uncompressed tar's digest.
	lf, _ := os.Open(layer)
	zr, err := gzip.NewReader(lf)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	io.Copy(h, zr)
	lf.Close()
	if len(cfg.RootFS.DiffIDs) != 1 || cfg.RootFS.DiffIDs[0] != "sha256:"+hex.EncodeToString(h.Sum(nil)) || cfg.OS != "linux" || cfg.Architecture != "amd64" {
		t.Errorf("config %+v, layer diff id sha256:%x", cfg, h.Sum(nil))
	}
	// GNU tar: /disk/disk.img owned by 107:107, the disk's bytes.
	list := mustRun(t, "tar", "--numeric-owner", "-tvzf", layer)
	if !strings.Contains(list, "107/107") || !strings.Contains(list, "disk/disk.img") || !strings.Contains(list, "-r--r-----") {
		t.Errorf("layer:\n%s", list)
	}
	x := filepath.Join(dir, "x")
	os.Mkdir(x, 0o755)
	mustRun(t, "tar", "-xzf", layer, "-C", x)
	mustRun(t, "cmp", filepath.Join(out, "disk.img"), filepath.Join(x, "disk", "disk.img"))
	// kiln pull refuses an image that is not a kiln artifact.
	expectFailure(t, env, 2, []string{"not a kiln build or payload"}, "pull", px.host+"/kiln/small-disk:1.0.0", "-o", filepath.Join(dir, "p"), "--ca-file", reg.ca)
}

func sha256Of(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

func mustGet(t *testing.T, reg *testRegistry, host, path string) string {
	return string(reg.get(t, host, path, "application/vnd.oci.image.manifest.v1+json"))
}

func TestRegistryPushMemoryBounded(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "-o", key)
	big := strings.NewReplacer("size: 64MiB, filesystem: ext4, fs-size: 60MiB", "size: 400MiB, filesystem: ext4, fs-size: 380MiB",
		"label: USR-B, type: coreos-usr, size: 64MiB", "label: USR-B, type: coreos-usr, size: 400MiB").Replace(smallLayout)
	if big == smallLayout {
		t.Fatal("the layout did not grow")
	}
	os.WriteFile(filepath.Join(dir, "big.yaml"), []byte(big), 0o644)
	// 320 MiB of incompressible data: no blob of it fits in the bound.
	usr := filepath.Join(dir, "usr")
	os.MkdirAll(usr, 0o755)
	rng := rand.NewChaCha8([32]byte{7})
	for i := range 5 {
		b := make([]byte, 64<<20)
		rng.Read(b)
		os.WriteFile(filepath.Join(usr, fmt.Sprintf("data%d", i)), b, 0o644)
	}
	recipe := filepath.Join(dir, "big-recipe.yaml")
	os.WriteFile(recipe, []byte("name: big\nversion: 1.0.0\nlayout: big.yaml\npartitions:\n  USR-A:\n    source: dir:usr\n"), 0o644)
	out := filepath.Join(dir, "out")
	if r := kilnEnv(t, []string{"SOURCE_DATE_EPOCH=1700000000"}, "build", "-q", recipe, "-o", out, "--sign", key+".key"); r.code != 0 {
		t.Fatalf("build: %s", r.stderr)
	}
	os.RemoveAll(usr)
	reg, px, env := registryBehindProxy(t)
	ref := px.host + "/kiln/big:1.0.0"
	const bound = 192 << 20
	start := time.Now()
	rss := peakRSSEnv(t, env, "push", out, ref, "--ca-file", reg.ca)
	disk, _ := os.Stat(filepath.Join(out, "disk.img"))
	t.Logf("push of a %d MiB disk (320 MiB of data): %v, peak RSS %d MiB", disk.Size()>>20, time.Since(start).Round(time.Millisecond), rss>>20)
	if rss > bound {
		t.Errorf("push peak RSS %d MiB > %d MiB", rss>>20, bound>>20)
	}
	pulled := filepath.Join(dir, "pulled")
	start = time.Now()
	rss = peakRSSEnv(t, env, "pull", ref, "-o", pulled, "--key", key+".pub", "--ca-file", reg.ca)
	t.Logf("pull with --key: %v, peak RSS %d MiB", time.Since(start).Round(time.Millisecond), rss>>20)
	if rss > bound {
		t.Errorf("pull peak RSS %d MiB > %d MiB", rss>>20, bound>>20)
	}
	sameDir(t, out, pulled)
	start = time.Now()
	rss = peakRSSEnv(t, env, "push", out, px.host+"/kiln/big:raw", "--compression", "none", "--ca-file", reg.ca)
	t.Logf("push uncompressed: %v, peak RSS %d MiB", time.Since(start).Round(time.Millisecond), rss>>20)
	start = time.Now()
	peakRSSEnv(t, env, "push", out, ref, "--ca-file", reg.ca)
	t.Logf("push again, unchanged: %v", time.Since(start).Round(time.Millisecond))
	if rss > bound {
		t.Errorf("uncompressed push peak RSS %d MiB > %d MiB", rss>>20, bound>>20)
	}
}

// TestRegistryPullChecksConvertedImages: with --key, a converted image
// is checked against the signed manifest that lists it (its digest, and
// the disk it holds read through its format); one changed after signing,
// or one the manifest does not list, is refused and nothing is left.
func TestRegistryPullChecksConvertedImages(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "-o", key)
	out := buildSmall(t, dir, key+".key", "--format", "qcow2,raw.zst")
	reg, px, env := registryBehindProxy(t)
	ca := []string{"--ca-file", reg.ca}

	good := px.host + "/kiln/converted:1.0.0"
	pushJSON(t, env, append([]string{out, good}, ca...)...)
	pulled := filepath.Join(dir, "pulled")
	r := kilnEnv(t, env, append([]string{"pull", good, "-o", pulled, "--key", key + ".pub"}, ca...)...)
	if r.code != 0 {
		t.Fatalf("pull: exit %d\n%s", r.code, r.stderr)
	}
	sameDir(t, out, pulled)

	// A byte of disk.qcow2's data changed after the build.
	changed := copyBuild(t, out, filepath.Join(dir, "changed"))
	q := filepath.Join(changed, "disk.qcow2")
	st, _ := os.Stat(q)
	flip(t, q, st.Size()-4096)
	// A converted image made after the build: not in the signed manifest.
	unlisted := copyBuild(t, out, filepath.Join(dir, "unlisted"))
	mustRun(t, kiln, "convert", "-q", filepath.Join(unlisted, "disk.img"), "--format", "vhd")
	// The SBOMs the manifest lists left out, and one changed; the
	// provenance of another build.
	noSBOM := copyBuild(t, out, filepath.Join(dir, "nosbom"))
	os.Remove(filepath.Join(noSBOM, "sbom.spdx.json"))
	os.Remove(filepath.Join(noSBOM, "sbom.cdx.json"))
	changedSBOM := copyBuild(t, out, filepath.Join(dir, "changedsbom"))
	cdx := filepath.Join(changedSBOM, "sbom.cdx.json")
	data, _ := os.ReadFile(cdx)
	os.WriteFile(cdx, []byte(strings.Replace(string(data), `"version": "1.0.0"`, `"version": "6.6.6"`, 1)), 0o644)
	otherDir := filepath.Join(dir, "otherbuild")
	os.Mkdir(otherDir, 0o755)
	other := buildSmall(t, otherDir, key+".key", "--set", "version=9.9.9")
	otherProv := copyBuild(t, out, filepath.Join(dir, "otherprov"))
	copyFile(t, filepath.Join(other, "provenance.intoto.json"), filepath.Join(otherProv, "provenance.intoto.json"))
	for _, c := range []struct {
		name, dir string
		words     []string
	}{
		{"changed", changed, []string{"disk.qcow2 does not match the signed manifest.json", "digest disk.qcow2"}},
		{"unlisted", unlisted, []string{"disk.vhd is not listed in the signed manifest.json", "--format vhd"}},
		{"no-sbom", noSBOM, []string{"manifest.json lists sbom.spdx.json, which no referrer of type application/spdx+json holds"}},
		{"changed-sbom", changedSBOM, []string{"sbom.cdx.json:", "manifest.json says"}},
		{"other-provenance", otherProv, []string{"provenance.intoto.json: provenance: its subject manifest.json has sha256"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			// kiln push refuses these (TestRegistryPushRefusesUnvouched);
			// pushed with oras instead, kiln pull --key refuses them too.
			ref := px.host + "/kiln/converted-" + c.name + ":1.0.0"
			orasPushBuild(t, reg, env, c.dir, ref)
			fresh := filepath.Join(dir, "pull-"+c.name)
			expectFailure(t, env, 1, append([]string{ref}, c.words...), append([]string{"pull", ref, "-o", fresh, "--key", key + ".pub"}, ca...)...)
			absent(t, fresh)
		})
	}
}
