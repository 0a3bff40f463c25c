package cli

import (
	"crypto/fips140"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/keywarden/keywarden/internal/secmem"
)

// Commit is the source revision, set at build time with -ldflags "-X
// github.com/keywarden/keywarden/internal/cli.Commit=..." where the build
// has no version control information of its own (a source archive).
var Commit = ""

// buildInfo is what "keywarden version" reports: what was built, from
// which source, and how.
type buildInfo struct {
	Version    string `json:"version"`
	Commit     string `json:"commit"`
	CommitTime string `json:"commit_time,omitempty"`
	Modified   bool   `json:"modified"`
	Go         string `json:"go"`
	// Experiments is GOEXPERIMENT: runtimesecret is the official build.
	Experiments   []string `json:"experiments"`
	RuntimeSecret bool     `json:"runtimesecret"`
	// FIPS140 is the GOFIPS140 module the build selected ("off" if none),
	// and FIPS140Enabled whether FIPS 140-3 mode is on in this process.
	FIPS140        string `json:"fips140"`
	FIPS140Enabled bool   `json:"fips140_enabled"`
	Tags           string `json:"tags,omitempty"`
	CGO            bool   `json:"cgo"`
	Protocol       int    `json:"protocol_version"`
	Platform       string `json:"platform"`
}

func readBuildInfo() buildInfo {
	b := buildInfo{Version: Version, Commit: Commit, Go: runtime.Version(), Experiments: []string{},
		RuntimeSecret: secmem.RuntimeSecret, FIPS140: "off", FIPS140Enabled: fips140.Enabled(),
		Protocol: 1, Platform: runtime.GOOS + "/" + runtime.GOARCH}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	if b.Version == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		b.Version = bi.Main.Version // go install module@version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Commit = s.Value
		case "vcs.time":
			b.CommitTime = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		case "GOEXPERIMENT":
			for _, x := range strings.Split(s.Value, ",") {
				if x != "" {
					b.Experiments = append(b.Experiments, x)
				}
			}
		case "GOFIPS140":
			b.FIPS140 = s.Value
		case "-tags":
			b.Tags = s.Value
		case "CGO_ENABLED":
			b.CGO = s.Value == "1"
		}
	}
	if b.Commit == "" {
		b.Commit = "unknown"
	}
	return b
}

func runVersion(e *env, args []string) error {
	f := newFlags("version", e)
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	b := readBuildInfo()
	if f.json {
		return printJSON(e, b)
	}
	fmt.Fprintf(e.stdout, "keywarden %s (protocol %d)\n", b.Version, b.Protocol)
	commit := b.Commit
	if b.Modified {
		commit += " (modified)"
	}
	if b.CommitTime != "" {
		commit += ", " + b.CommitTime
	}
	fmt.Fprintf(e.stdout, "commit:        %s\n", commit)
	fmt.Fprintf(e.stdout, "go:            %s %s\n", b.Go, b.Platform)
	exp := strings.Join(b.Experiments, ",")
	if exp == "" {
		exp = "none"
	}
	secret := "yes"
	if !b.RuntimeSecret {
		secret = "NO: built without GOEXPERIMENT=runtimesecret, copies made by the crypto libraries are not erased"
	}
	fmt.Fprintf(e.stdout, "goexperiment:  %s\n", exp)
	fmt.Fprintf(e.stdout, "runtimesecret: %s\n", secret)
	fips := b.FIPS140
	if b.FIPS140Enabled {
		fips += " (FIPS 140-3 mode on)"
	} else {
		fips += " (FIPS 140-3 mode off)"
	}
	fmt.Fprintf(e.stdout, "fips140:       %s\n", fips)
	if b.Tags != "" {
		fmt.Fprintf(e.stdout, "tags:          %s\n", b.Tags)
	}
	return nil
}
