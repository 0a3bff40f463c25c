// Package seqpacket is keywarden's transport: Unix SOCK_SEQPACKET sockets
// driven with blocking system calls, one message per send or receive.
//
// It deliberately bypasses Go's network poller. A goroutine blocked in
// recvmsg is woken by the kernel directly when the peer sends, on the CPU
// the kernel chooses, instead of through epoll, the poller thread and the
// scheduler; on small virtual machines that hop costs more than the whole
// round trip. The price is one OS thread per blocked receiver, so the
// daemon receives that way only on connections that are busy: an idle one
// is parked, and Readiness (one goroutine over epoll for all of them)
// wakes it when its next message comes.
//
// The package is shared by the client library and the daemon. It carries
// bytes, the kernel's credentials and, for the one reply that needs it
// (the generation page), a descriptor; it knows nothing of keys or policy.
package seqpacket
