// Package oci reads OCI and Docker images through containers/image into a
// tree, layer by layer, without extracting anything. Build with the tag
// containers_image_openpgp (pure-Go signature verification, no cgo).
package oci

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"go.podman.io/image/v5/docker"
	dockerarchive "go.podman.io/image/v5/docker/archive"
	"go.podman.io/image/v5/image"
	"go.podman.io/image/v5/manifest"
	ociarchive "go.podman.io/image/v5/oci/archive"
	ocilayout "go.podman.io/image/v5/oci/layout"
	"go.podman.io/image/v5/pkg/blobinfocache/none"
	"go.podman.io/image/v5/signature"
	"go.podman.io/image/v5/types"
	"go.podman.io/storage/pkg/configfile"

	"github.com/kiln-os/kiln/build/source"
	"github.com/kiln-os/kiln/build/tree"
)

// Image is an OCI or Docker image read into a tree.
type Image struct {
	Tree *tree.Tree
	// Ref is the reference as given ("oci:layout:tag").
	Ref string
	// Digest is the image manifest's digest ("sha256:…").
	Digest string
	// Layers are the layer digests, lowest first.
	Layers []string
}

// imageTransports are the containers/image transports kiln accepts. Only
// these are linked in: the others (containers-storage, sif, …) pull in
// cgo or a daemon.
var imageTransports = map[string]types.ImageTransport{
	"oci":            ocilayout.Transport,
	"oci-archive":    ociarchive.Transport,
	"docker-archive": dockerarchive.Transport,
	"docker":         docker.Transport,
}

// IsImageRef reports whether spec names a container image transport
// ("oci:", "oci-archive:", "docker-archive:", "docker://").
func IsImageRef(spec string) bool {
	t, _, ok := strings.Cut(spec, ":")
	_, known := imageTransports[t]
	return ok && known
}

// ParseImageRef parses "transport:reference" for the transports kiln
// links in.
func ParseImageRef(spec string) (types.ImageReference, error) {
	t, rest, ok := strings.Cut(spec, ":")
	tr, known := imageTransports[t]
	if !ok || !known {
		return nil, fmt.Errorf("image %q: want oci:PATH[:TAG], oci-archive:PATH, docker-archive:PATH or docker://REF", spec)
	}
	ref, err := tr.ParseReference(rest)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", spec, err)
	}
	return ref, nil
}

// policyContext returns the signature policy: the standard policy.json
// when one exists ($CONTAINERS_POLICY_JSON, ~/.config/containers,
// /etc/containers, /usr/share/containers), else one that accepts
// anything, with a warning. A policy file that exists but cannot be read,
// or a $CONTAINERS_POLICY_JSON naming a missing file, is an error.
func policyContext(sys *types.SystemContext, log *slog.Logger) (*signature.PolicyContext, error) {
	policy, err := signature.DefaultPolicy(sys)
	if err != nil {
		// The library reports "no policy anywhere" with its own sentinel,
		// not os.ErrNotExist (which it keeps for an explicit path).
		if !errors.Is(err, configfile.ErrConfigFileNotFound) {
			return nil, fmt.Errorf("signature policy: %w", err)
		}
		log.Warn("no containers policy.json found: accepting images without signature verification")
		policy = &signature.Policy{Default: []signature.PolicyRequirement{signature.NewPRInsecureAcceptAnything()}}
	}
	return signature.NewPolicyContext(policy)
}

// Options control FromImage.
type Options struct {
	// Mtime is the root directory's time when no layer sets it.
	Mtime time.Time
	// Log receives warnings; nil discards them.
	Log *slog.Logger
	// Budget bounds what the layers may spool, together (nil: unbounded).
	Budget *source.Budget
}

// FromImage reads an image's layers, in order, into a new tree, applying
// whiteouts and opaque directories. Layers are decompressed into the
// spool as they are read; nothing is extracted to the host.
func FromImage(ctx context.Context, s *source.Spool, spec string, o Options) (*Image, error) {
	return fromImage(ctx, s, spec, o, &types.SystemContext{})
}

// fromImage is FromImage with the containers/image system context (tests
// move the system configuration root).
func fromImage(ctx context.Context, s *source.Spool, spec string, o Options, sys *types.SystemContext) (*Image, error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ref, err := ParseImageRef(spec)
	if err != nil {
		return nil, err
	}
	pc, err := policyContext(sys, log)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", spec, err)
	}
	defer pc.Destroy()
	src, err := ref.NewImageSource(ctx, sys)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", spec, err)
	}
	defer src.Close()
	unparsed := image.UnparsedInstance(src, nil)
	if ok, err := pc.IsRunningImageAllowed(ctx, unparsed); !ok {
		return nil, fmt.Errorf("image %s: rejected by the signature policy: %w", spec, err)
	}
	raw, _, err := unparsed.Manifest(ctx)
	if err != nil {
		return nil, fmt.Errorf("image %s: manifest: %w", spec, err)
	}
	digest, err := manifest.Digest(raw)
	if err != nil {
		return nil, fmt.Errorf("image %s: manifest digest: %w", spec, err)
	}
	img, err := image.FromUnparsedImage(ctx, sys, unparsed)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", spec, err)
	}
	out := &Image{Tree: tree.New(o.Mtime), Ref: spec, Digest: digest.String()}
	for i, layer := range img.LayerInfos() {
		name := fmt.Sprintf("image %s: layer %d (%s)", spec, i, layer.Digest)
		rc, _, err := src.GetBlob(ctx, layer, none.NoCache)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		err = func() error {
			defer rc.Close()
			// Blobs are not trusted: the layer's digest is checked over
			// every byte read.
			verifier := layer.Digest.Verifier()
			blob := io.TeeReader(rc, verifier)
			r, err := source.Decompress(blob)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			defer r.Close()
			if err := s.ApplyTar(out.Tree, r, source.LayerOptions{Name: name, Rules: source.OCILayer, Budget: o.Budget}); err != nil {
				return err
			}
			if _, err := io.Copy(io.Discard, blob); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if !verifier.Verified() {
				return fmt.Errorf("%s: content does not match its digest", name)
			}
			return nil
		}()
		if err != nil {
			return nil, err
		}
		out.Layers = append(out.Layers, layer.Digest.String())
	}
	return out, nil
}
