package test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// kilnIn runs kiln with extra environment.
func kilnIn(t *testing.T, env []string, args ...string) result {
	t.Helper()
	return kilnEnv(t, env, args...)
}

// sameDir fails unless directories a and b hold the same file names
// with identical bytes (cmp).
func sameDir(t *testing.T, a, b string) {
	t.Helper()
	names := func(d string) []string {
		es, err := os.ReadDir(d)
		if err != nil {
			t.Fatal(err)
		}
		var n []string
		for _, e := range es {
			n = append(n, e.Name())
		}
		return n
	}
	na, nb := names(a), names(b)
	if !slices.Equal(na, nb) {
		t.Fatalf("%s holds %v, %s holds %v", a, na, b, nb)
	}
	for _, n := range na {
		mustRun(t, "cmp", filepath.Join(a, n), filepath.Join(b, n))
	}
}

// pushed parses kiln push --json.
type pushedJSON struct {
	Reference string `json:"reference"`
	Digest    string `json:"digest"`
	Signature string `json:"signature"`
	Uploaded  int64  `json:"uploaded_bytes"`
	Blobs     []struct {
		Name, MediaType string
		Uploaded        bool
	} `json:"blobs"`
}

func pushJSON(t *testing.T, env []string, args ...string) pushedJSON {
	t.Helper()
	r := kilnIn(t, env, append([]string{"push", "--json"}, args...)...)
	if r.code != 0 {
		t.Fatalf("kiln push %v: exit %d\n%s", args, r.code, r.stderr)
	}
	var p pushedJSON
	if err := json.Unmarshal([]byte(r.stdout), &p); err != nil {
		t.Fatalf("push --json: %v\n%s", err, r.stdout)
	}
	return p
}

func TestRegistryPushPullRoundTrip(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "release")
	mustRun(t, kiln, "keygen", "-o", key)
	out := buildSmall(t, dir, key+".key")
	reg := startRegistry(t)
	px := reg.startProxy(t, true)
	env := reg.env(t, reg.pass, px.host)
	ref := px.host + "/kiln/small:1.0.0"

	first := pushJSON(t, env, out, ref, "--ca-file", reg.ca)
	if n := px.count(blobUpload); n == 0 || first.Uploaded == 0 {
		t.Fatalf("first push: %d upload requests, %d bytes", n, first.Uploaded)
	}
	pulled := filepath.Join(dir, "pulled")
	r := kilnIn(t, env, "pull", ref, "-o", pulled, "--key", key+".pub", "--ca-file", reg.ca)
	if r.code != 0 {
		t.Fatalf("pull: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	t.Log(r.stdout)
	sameDir(t, out, pulled)
	if !strings.Contains(r.stdout, "verified with") {
		t.Errorf("pull does not say it verified:\n%s", r.stdout)
	}

	px.reset(0, 0)
	second := pushJSON(t, env, out, ref, "--ca-file", reg.ca)
	if n := px.count(blobUpload); n != 0 || second.Uploaded != 0 {
		t.Errorf("second push of the same build: %d upload requests, %d bytes uploaded", n, second.Uploaded)
	}
	if second.Digest != first.Digest || second.Signature != first.Signature {
		t.Errorf("same build, manifest %s then %s, signature %s then %s", first.Digest, second.Digest, first.Signature, second.Signature)
	}
}
