// Package stress holds the lifecycle stress suite: seal, unseal,
// master-key rotation, backup, restore, destroy, key rotation and
// generation bumps raced against client traffic on a real daemon (a
// server over a real socket, a bbolt store and a sealed master key, all in
// the test's process so that the race detector sees both sides), with
// checks after every round. It has no code outside its tests;
// docs/operations.md says how to run it longer.
package stress
