package cli

import (
	"fmt"
	"io"
)

// progress reports the steps of a long command on stderr: on a terminal
// each step overwrites the last on one line ("\r"); elsewhere (a log, a
// pipe, a CI job) each new step is a line of its own and a repeated one
// is not printed again.
type progress struct {
	w        io.Writer
	terminal bool
	last     string
	width    int
}

func newProgress(w io.Writer) *progress { return &progress{w: w, terminal: isTerminal(w)} }

func (p *progress) update(msg string) {
	if msg == p.last {
		return
	}
	p.last = msg
	if !p.terminal {
		fmt.Fprintln(p.w, msg)
		return
	}
	pad := max(0, p.width-len(msg))
	p.width = len(msg)
	fmt.Fprintf(p.w, "\r%s%*s", msg, pad, "")
}

// done ends the progress line on a terminal.
func (p *progress) done() {
	if p.terminal && p.last != "" {
		fmt.Fprintln(p.w)
	}
}
