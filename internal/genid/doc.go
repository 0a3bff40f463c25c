// Package genid tracks the machine's generation: a counter that starts at
// 0 when the daemon starts and increases whenever the virtual machine it
// runs in is restored from a snapshot or cloned (docs/genid.md).
//
// Linux gives userspace no single clean signal, so several Sources feed
// one Tracker: the kernel log line the vmgenid driver prints (Kmsg), the
// vmclock device's generation counter (VMClock), the NEW_VMGENID uevent of
// Linux 6.8 (Uevent), the ACPI VM generation ID itself (GUID), and a
// privileged request (Tracker.Bump). On a change the Tracker runs its
// hooks (re-seeding randomness, nonce budgets, the audit log) before any
// request can see the new generation, publishes it (Current, the shared
// generation page) and wakes watchers.
//
// The package knows nothing of keys, connections or the wire protocol
// beyond the generation page's layout; the server decides what a change
// means for sessions and requests. Sources only read: none of them ever
// writes to a device, and a source that cannot be opened is simply not
// active.
package genid
