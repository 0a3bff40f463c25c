// Command keywarden is the keywarden daemon and its command line client in
// one binary: "keywarden serve" runs the daemon, every other command talks
// to it. Run "keywarden help" for the commands.
package main
