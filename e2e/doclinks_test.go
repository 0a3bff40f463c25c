package e2e_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

var (
	// "### 4.1 Packed runs" is referred to as "Packed runs".
	sectionNumber = regexp.MustCompile(`^[0-9]+(\.[0-9]+)*\.? `)
	// A paragraph's run-in head, "**Reload.** SIGHUP ...", names a
	// section as a heading does.
	runInHead = regexp.MustCompile(`^\*\*([^*]+?)\.\*\*`)
)

// docHeadings returns the names of a Markdown file's sections (headings,
// with and without their numbers, and paragraphs' run-in heads, outside
// code blocks) and the anchors GitHub gives its headings.
func docHeadings(t *testing.T, path string) (names, anchors map[string]bool) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	names, anchors = map[string]bool{}, map[string]bool{}
	seen := map[string]int{}
	fence := false
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "```") {
			fence = !fence
			continue
		}
		if fence {
			continue
		}
		if m := runInHead.FindStringSubmatch(l); m != nil {
			names[strings.ReplaceAll(m[1], "`", "")] = true
		}
		if !strings.HasPrefix(l, "#") {
			continue
		}
		h := strings.TrimSpace(strings.TrimLeft(l, "#"))
		names[strings.ReplaceAll(h, "`", "")] = true
		names[strings.ReplaceAll(sectionNumber.ReplaceAllString(h, ""), "`", "")] = true
		a := headingAnchor(h)
		if n := seen[a]; n > 0 {
			anchors[a+"-"+strconv.Itoa(n)] = true
		} else {
			anchors[a] = true
		}
		seen[a]++
	}
	return names, anchors
}

// headingAnchor is GitHub's anchor of a heading: lower case, without
// punctuation but hyphens and underscores, spaces made hyphens.
func headingAnchor(h string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(h) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

var (
	// [text](FILE.md#anchor) or [text](#anchor)
	anchorLink = regexp.MustCompile(`\]\(([a-z0-9_./-]*\.md)?#([^)\s]+)\)`)
	// (FILE.md, "Section") or ([FILE.md](FILE.md), "Section"), the
	// section name perhaps broken over lines.
	sectionRef = regexp.MustCompile(`\(?([a-z0-9_./-]+\.md)\)?\)?,\s+"([^"]+)"`)
)

// The README's and docs' references to sections of the docs name
// headings that exist: links with an anchor (FILE.md#anchor, #anchor)
// and the written form (FILE.md, "Section"), so that a heading renamed
// leaves no reference behind.
func TestDocSectionReferences(t *testing.T) {
	root := filepath.Join("..")
	files, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, filepath.Join(root, "README.md"))
	type heads struct{ names, anchors map[string]bool }
	cache := map[string]heads{}
	lookup := func(path string) (heads, bool) {
		if h, ok := cache[path]; ok {
			return h, true
		}
		if _, err := os.Stat(path); err != nil {
			return heads{}, false
		}
		n, a := docHeadings(t, path)
		cache[path] = heads{n, a}
		return cache[path], true
	}
	checked := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		text := string(data)
		rel, _ := filepath.Rel(root, f)
		target := func(name string) string {
			if name == "" {
				return f
			}
			if strings.HasPrefix(name, "docs/") {
				return filepath.Join(root, name)
			}
			return filepath.Join(filepath.Dir(f), name)
		}
		for _, m := range anchorLink.FindAllStringSubmatch(text, -1) {
			h, ok := lookup(target(m[1]))
			if !ok {
				t.Errorf("%s: link to %s#%s: no such file", rel, m[1], m[2])
				continue
			}
			checked++
			if !h.anchors[m[2]] {
				t.Errorf("%s: link to %s#%s: no heading has that anchor", rel, m[1], m[2])
			}
		}
		for _, m := range sectionRef.FindAllStringSubmatch(text, -1) {
			h, ok := lookup(target(m[1]))
			if !ok {
				continue // a file of another project (PROTOCOL.sshsig and the like are not .md)
			}
			checked++
			sec := strings.Join(strings.Fields(m[2]), " ")
			if !h.names[sec] {
				t.Errorf("%s: reference to %s, %q: no such heading", rel, m[1], sec)
			}
		}
	}
	t.Logf("%d section references checked", checked)
	if checked < 10 {
		t.Fatalf("only %d section references found: the patterns no longer match the docs", checked)
	}
}
