// Command vmguest runs inside the QEMU guest of keywarden's snapshot test
// (e2e/vm_test.go). As the guest's init (pid 1) it mounts the kernel's
// file systems, loads QEMU's fw_cfg module if the initramfs has it,
// starts the keywarden daemon (this same binary under another name) and
// answers the test's commands on the second serial port, one JSON object
// per line each way. Run otherwise, it is the keywarden command.
package main
