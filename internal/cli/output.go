package cli

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keywarden/keywarden"
)

func printJSON(e *env, v any) error {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

type aclJSON struct {
	UID   *uint32  `json:"uid,omitempty"`
	GID   *uint32  `json:"gid,omitempty"`
	Usage []string `json:"usage"`
}

type keyJSON struct {
	ID          string         `json:"id"`
	Name        string         `json:"name"`
	OwnerUID    uint32         `json:"owner_uid"`
	Type        string         `json:"type"`
	Class       string         `json:"class"`
	Usage       []string       `json:"usage"`
	Exportable  bool           `json:"exportable"`
	Wrappable   bool           `json:"wrappable"`
	Ephemeral   bool           `json:"ephemeral"`
	ACL         []aclJSON      `json:"acl"`
	Created     string         `json:"created"`
	Version     uint32         `json:"version"`
	CallerUsage []string       `json:"caller_usage"`
	KDF         *kdfJSON       `json:"kdf,omitempty"`
	Lifecycle   *lifecycleJSON `json:"lifecycle,omitempty"`
}

type lifecycleJSON struct {
	Origin             string        `json:"origin"`
	NeverExportable    bool          `json:"never_exportable"`
	Trusted            bool          `json:"trusted"`
	WrappedOut         bool          `json:"wrapped_out"`
	MinVersion         uint32        `json:"min_version"`
	RotateAfterSeconds int64         `json:"rotate_after_seconds"`
	RefuseWhenSpent    bool          `json:"refuse_when_spent"`
	DeletionAllowed    bool          `json:"deletion_allowed"`
	AllowedPrograms    []string      `json:"allowed_programs"`
	SSH                bool          `json:"ssh"`
	Versions           []versionJSON `json:"versions"`
}

type versionJSON struct {
	Version         uint32 `json:"version"`
	Created         string `json:"created"`
	Encryptions     uint64 `json:"encryptions"`
	EncryptionLimit uint64 `json:"encryption_limit"`
}

// kdfJSON is how a key derived from a passphrase was made.
type kdfJSON struct {
	Algorithm string `json:"algorithm"`
	Version   uint32 `json:"version"`
	Time      uint32 `json:"time"`
	MemoryKiB uint32 `json:"memory_kib"`
	Threads   uint8  `json:"threads"`
	SaltHex   string `json:"salt_hex"`
}

func usageList(u keywarden.Usage) []string {
	if u == 0 {
		return []string{}
	}
	return strings.Split(u.String(), ",")
}

func keyToJSON(i keywarden.KeyInfo) keyJSON {
	k := keyJSON{
		ID: i.ID.String(), Name: i.Name, OwnerUID: i.Owner, Type: string(i.Type), Class: string(i.Class),
		Usage: usageList(i.Usage), Exportable: i.Exportable, Wrappable: i.Wrappable, Ephemeral: i.Ephemeral,
		ACL: []aclJSON{}, Created: i.Created.UTC().Format(time.RFC3339Nano), Version: i.Version,
		CallerUsage: usageList(i.CallerUsage),
	}
	if r := i.KDF; r != nil {
		k.KDF = &kdfJSON{r.Algorithm, r.Version, r.Params.Time, r.Params.MemoryKiB, r.Params.Threads, hex.EncodeToString(r.Salt)}
	}
	if l := i.Lifecycle; len(l.Versions) > 0 {
		lj := &lifecycleJSON{Origin: l.Origin.String(), NeverExportable: l.NeverExportable, Trusted: l.Trusted, WrappedOut: l.WrappedOut,
			MinVersion: l.MinVersion, RotateAfterSeconds: int64(l.RotateAfter / time.Second), RefuseWhenSpent: l.RefuseWhenSpent,
			DeletionAllowed: l.DeletionAllowed, AllowedPrograms: []string{}, SSH: l.SSH, Versions: []versionJSON{}}
		for _, p := range l.AllowedPrograms {
			lj.AllowedPrograms = append(lj.AllowedPrograms, p.String())
		}
		for _, v := range l.Versions {
			lj.Versions = append(lj.Versions, versionJSON{v.Version, v.Created.UTC().Format(time.RFC3339Nano), v.Encryptions, v.EncryptionLimit})
		}
		k.Lifecycle = lj
	}
	for _, a := range i.ACL {
		id := a.ID
		e := aclJSON{Usage: usageList(a.Usage)}
		if a.Group {
			e.GID = &id
		} else {
			e.UID = &id
		}
		k.ACL = append(k.ACL, e)
	}
	return k
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func aclString(acl []keywarden.ACLEntry) string {
	if len(acl) == 0 {
		return "(owner only)"
	}
	var parts []string
	for _, a := range acl {
		who := "uid"
		if a.Group {
			who = "gid"
		}
		u := a.Usage.String()
		if u == "" {
			u = "(see only)"
		}
		parts = append(parts, fmt.Sprintf("%s:%d=%s", who, a.ID, u))
	}
	return strings.Join(parts, " ")
}

func printKey(e *env, asJSON bool, i keywarden.KeyInfo) error {
	if asJSON {
		return printJSON(e, keyToJSON(i))
	}
	w := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	name := i.Name
	if name == "" {
		name = "(none)"
	}
	fmt.Fprintf(w, "id:\t%s\n", i.ID)
	fmt.Fprintf(w, "name:\t%s\n", name)
	fmt.Fprintf(w, "type:\t%s (%s)\n", i.Type, i.Class)
	fmt.Fprintf(w, "owner:\tuid %d\n", i.Owner)
	fmt.Fprintf(w, "usage:\t%s\n", i.Usage)
	fmt.Fprintf(w, "exportable:\t%s\n", yesNo(i.Exportable))
	fmt.Fprintf(w, "wrappable:\t%s\n", yesNo(i.Wrappable))
	fmt.Fprintf(w, "ephemeral:\t%s\n", yesNo(i.Ephemeral))
	fmt.Fprintf(w, "acl:\t%s\n", aclString(i.ACL))
	fmt.Fprintf(w, "created:\t%s\n", i.Created.UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "version:\t%d\n", i.Version)
	if l := i.Lifecycle; len(l.Versions) > 0 {
		var vs []string
		for _, v := range l.Versions {
			if v.EncryptionLimit > 0 && (i.Type == keywarden.AES256GCM) {
				vs = append(vs, fmt.Sprintf("%d (%d of %d encryptions)", v.Version, v.Encryptions, v.EncryptionLimit))
			} else {
				vs = append(vs, strconv.FormatUint(uint64(v.Version), 10))
			}
		}
		fmt.Fprintf(w, "versions:\t%s; minimum %d\n", strings.Join(vs, ", "), l.MinVersion)
		origin := l.Origin.String()
		if l.NeverExportable {
			origin += ", never exportable"
		}
		if l.Trusted {
			origin += ", trusted wrapping key"
		}
		if l.WrappedOut {
			origin += ", wrapped out"
		}
		fmt.Fprintf(w, "origin:\t%s\n", origin)
		if l.DeletionAllowed {
			fmt.Fprintf(w, "deletion:\tallowed\n")
		} else {
			fmt.Fprintf(w, "deletion:\tnot allowed (key set --deletion-allowed first)\n")
		}
		if l.SSH {
			fmt.Fprintf(w, "ssh:\toffered by the ssh-agent sockets\n")
		}
		if len(l.AllowedPrograms) > 0 {
			ps := make([]string, len(l.AllowedPrograms))
			for i, p := range l.AllowedPrograms {
				ps[i] = p.String()
			}
			fmt.Fprintf(w, "programs:\t%s only\n", strings.Join(ps, ", "))
		}
		if l.RotateAfter > 0 || l.RefuseWhenSpent {
			rot := "rotate after " + l.RotateAfter.String()
			if l.RotateAfter == 0 {
				rot = "no rotation by age"
			}
			if l.RefuseWhenSpent {
				rot += "; refuse when a version's budget is spent"
			}
			fmt.Fprintf(w, "rotation:\t%s\n", rot)
		}
	}
	if r := i.KDF; r != nil {
		fmt.Fprintf(w, "kdf:\t%s v=%d m=%d,t=%d,p=%d salt=%s\n", r.Algorithm, r.Version,
			r.Params.MemoryKiB, r.Params.Time, r.Params.Threads, saltString(r.Salt))
	}
	return w.Flush()
}

func printKeyList(e *env, asJSON bool, keys []keywarden.KeyInfo) error {
	if asJSON {
		out := make([]keyJSON, 0, len(keys))
		for _, k := range keys {
			out = append(out, keyToJSON(k))
		}
		return printJSON(e, out)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tNAME\tTYPE\tOWNER\tUSAGE\tFLAGS")
	for _, k := range keys {
		var flags []string
		if k.Exportable {
			flags = append(flags, "exportable")
		}
		if k.Wrappable {
			flags = append(flags, "wrappable")
		}
		if len(k.ACL) > 0 {
			flags = append(flags, "shared")
		}
		fl := strings.Join(flags, ",")
		if fl == "" {
			fl = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\n", k.ID, k.Name, k.Type, k.Owner, k.CallerUsage, fl)
	}
	return w.Flush()
}
