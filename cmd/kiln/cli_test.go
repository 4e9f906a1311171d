package main

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func runKiln(args ...string) (stdout, stderr string, code int) {
	var o, e bytes.Buffer
	code = Run(context.Background(), Env{Args: args, Stdin: strings.NewReader(""), Stdout: &o, Stderr: &e})
	return o.String(), e.String(), code
}

func TestInProcessInitShowStatus(t *testing.T) {
	disk := filepath.Join(t.TempDir(), "d.img")
	if _, e, code := runKiln("layout", "init", "--json", disk); code != 0 {
		t.Fatalf("init: %d %s", code, e)
	}
	out, e, code := runKiln("layout", "show", "--json", disk)
	if code != 0 {
		t.Fatalf("show: %d %s", code, e)
	}
	var show tableJSONOut
	if err := json.Unmarshal([]byte(out), &show); err != nil {
		t.Fatal(err)
	}
	if len(show.Partitions) != 7 || show.Partitions[2].Slot == nil || !show.Partitions[2].Slot.Successful {
		t.Fatalf("show: %+v", show)
	}
	out, _, code = runKiln("slot", "status", disk)
	if code != 0 || !regexp.MustCompile(`USR-A +3 +1 +0 +true +- +none +next, empty\n`).MatchString(out) || !strings.Contains(out, "booted: none: no slot holds a release yet") {
		t.Fatalf("status: %d %s", code, out)
	}
}

func TestExitCodes(t *testing.T) {
	cases := []struct {
		args []string
		code int
	}{
		{[]string{"version"}, 0},
		{[]string{"layout"}, 2},
		{[]string{"layout", "show"}, 2},
		{[]string{"layout", "show", "a", "b"}, 2},
		{[]string{"slot", "status", "--nope", "x"}, 2},
		{[]string{"frobnicate"}, 2},
	}
	for _, c := range cases {
		if _, e, code := runKiln(c.args...); code != c.code {
			t.Errorf("kiln %v: exit %d, want %d (%s)", c.args, code, c.code, e)
		}
	}
}
