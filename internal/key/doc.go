// Package key defines keywarden's key model: key ids, key types and the
// static facts about each (class, strength, which usages it can have at
// all), usage bits, ACL entries and the attribute set of a key object.
//
// It holds no key material and makes no decisions: which combinations are
// allowed, and who may do what, is package policy's job.
package key
