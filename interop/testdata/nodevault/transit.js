// The transit paths with node-vault, as a Node program would use them.
//
// Usage: node transit.js unix SOCKET
//        node transit.js https URL CA CERT KEY
//
// Exits 0 and prints "node-vault: all passed" when every step worked.
'use strict';

const assert = require('assert');
const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const net = require('net');
const nodeVault = require('node-vault');

function client() {
    const [mode, ...rest] = process.argv.slice(2);
    if (mode === 'unix') {
        // node-vault speaks HTTP through axios, which takes an agent: this
        // one connects every request to the Unix socket.
        const agent = new http.Agent({ keepAlive: true });
        agent.createConnection = (_opts, cb) => {
            const s = net.connect(rest[0]);
            if (cb) s.once('connect', () => cb(null, s)).once('error', cb);
            return s;
        };
        return nodeVault({ endpoint: 'http://localhost', token: 'ignored', requestOptions: { httpAgent: agent } });
    }
    const [url, ca, cert, key] = rest;
    return nodeVault({
        endpoint: url,
        token: 'ignored',
        requestOptions: { ca: fs.readFileSync(ca), cert: fs.readFileSync(cert), key: fs.readFileSync(key) },
    });
}

const b64 = (s) => Buffer.from(s).toString('base64');
const unb64 = (s) => Buffer.from(s, 'base64').toString();

// refused runs p and wants a Vault error with the HTTP status.
async function refused(p, status, what) {
    try {
        await p;
    } catch (e) {
        assert.strictEqual(e.response && e.response.statusCode, status, `${what}: ${e}`);
        assert.ok(e.message.length > 0, what);
        return e;
    }
    assert.fail(`${what}: no error`);
}

async function main() {
    const v = client();

    // Keys: create, read, list.
    await v.transitCreateKey({ name: 'node', type: 'aes256-gcm96' });
    let info = (await v.transitReadKey({ name: 'node' })).data;
    assert.strictEqual(info.type, 'aes256-gcm96');
    assert.strictEqual(info.latest_version, 1);
    const names = (await v.transitListKeys()).data.keys;
    assert.ok(names.includes('node'), names);

    // Encrypt and decrypt, single and batch.
    const ct1 = (await v.encryptData({ name: 'node', plaintext: b64('hello from node') })).data.ciphertext;
    assert.match(ct1, /^vault:v1:/);
    assert.strictEqual(unb64((await v.decryptData({ name: 'node', ciphertext: ct1 })).data.plaintext), 'hello from node');
    const batch = [];
    for (let i = 0; i < 50; i++) batch.push({ plaintext: b64(`item ${i}`) });
    const res = (await v.encryptData({ name: 'node', batch_input: batch })).data.batch_results;
    assert.strictEqual(res.length, 50);

    // Rotate; older ciphertexts decrypt; rewrap; min_decryption_version.
    await v.write('transit/keys/node/rotate', {});
    info = (await v.transitReadKey({ name: 'node' })).data;
    assert.strictEqual(info.latest_version, 2);
    const dec = (await v.decryptData({ name: 'node', batch_input: res.map((r) => ({ ciphertext: r.ciphertext })) })).data.batch_results;
    dec.forEach((r, i) => assert.strictEqual(unb64(r.plaintext), `item ${i}`));
    const ct2 = (await v.rewrapData({ name: 'node', ciphertext: ct1 })).data.ciphertext;
    assert.match(ct2, /^vault:v2:/);
    await v.write('transit/keys/node/config', { min_decryption_version: 2 });
    await refused(v.decryptData({ name: 'node', ciphertext: ct1 }), 400, 'a retired version');
    assert.strictEqual(unb64((await v.decryptData({ name: 'node', ciphertext: ct2 })).data.plaintext), 'hello from node');

    // A tampered ciphertext is a 400, not a plaintext.
    const raw = Buffer.from(ct2.slice('vault:v2:'.length), 'base64');
    raw[raw.length - 1] ^= 1;
    await refused(v.decryptData({ name: 'node', ciphertext: 'vault:v2:' + raw.toString('base64') }), 400, 'a tampered ciphertext');

    // Data keys.
    const dk = (await v.write('transit/datakey/plaintext/node', { bits: 256 })).data;
    assert.strictEqual(Buffer.from(dk.plaintext, 'base64').length, 32);
    assert.strictEqual((await v.decryptData({ name: 'node', ciphertext: dk.ciphertext })).data.plaintext, dk.plaintext);

    // Sign and verify with each key type; check Ed25519's and ECDSA's
    // signatures with Node's own crypto against the public key read back.
    for (const type of ['ed25519', 'ecdsa-p256', 'ecdsa-p384', 'rsa-2048']) {
        const name = `sig-${type}`;
        await v.transitCreateKey({ name, type });
        const algs = type.startsWith('rsa') ? ['pss', 'pkcs1v15'] : [undefined];
        for (const alg of algs) {
            for (const m of ['asn1', 'jws']) {
                const body = { input: b64('node release'), hash_algorithm: 'sha2-256', marshaling_algorithm: m };
                if (alg) body.signature_algorithm = alg;
                const sig = (await v.write(`transit/sign/${name}`, body)).data.signature;
                assert.match(sig, /^vault:v1:/);
                const ok = (await v.write(`transit/verify/${name}`, { ...body, signature: sig })).data.valid;
                assert.strictEqual(ok, true, `${type} ${alg} ${m}`);
                const bad = (await v.write(`transit/verify/${name}`, { ...body, input: b64('forged'), signature: sig })).data.valid;
                assert.strictEqual(bad, false, `${type} ${alg} ${m} forged`);
            }
        }
        const pub = (await v.transitReadKey({ name })).data.keys['1'].public_key;
        const body = { input: b64('checked by node'), hash_algorithm: 'sha2-256' };
        const sig = Buffer.from((await v.write(`transit/sign/${name}`, body)).data.signature.slice('vault:v1:'.length), 'base64');
        if (type === 'ed25519') {
            const key = crypto.createPublicKey({ key: Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), Buffer.from(pub, 'base64')]), format: 'der', type: 'spki' });
            assert.ok(crypto.verify(null, Buffer.from('checked by node'), key, sig), 'Ed25519 signature checked by node');
        } else if (type.startsWith('ecdsa')) {
            assert.ok(crypto.verify('sha256', Buffer.from('checked by node'), pub, sig), `${type} signature checked by node`);
        } else {
            assert.ok(crypto.verify('sha256', Buffer.from('checked by node'),
                { key: pub, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: crypto.constants.RSA_PSS_SALTLEN_AUTO }, sig),
                'RSA-PSS signature checked by node');
        }
    }

    // HMAC and its verification.
    await v.transitCreateKey({ name: 'mac', type: 'hmac' });
    const mac = (await v.write('transit/hmac/mac', { input: b64('node data') })).data.hmac;
    assert.match(mac, /^vault:v1:/);
    assert.strictEqual((await v.write('transit/verify/mac', { input: b64('node data'), hmac: mac })).data.valid, true);
    assert.strictEqual((await v.write('transit/verify/mac', { input: b64('other data'), hmac: mac })).data.valid, false);
    const macs = (await v.write('transit/hmac/mac', { batch_input: [{ input: b64('a') }, { input: b64('b') }] })).data.batch_results;
    assert.strictEqual(macs.length, 2);

    // Hash and random.
    const h = (await v.write('transit/hash/sha2-256', { input: b64('abc'), format: 'hex' })).data.sum;
    assert.strictEqual(h, crypto.createHash('sha256').update('abc').digest('hex'));
    const rnd = (await v.write('transit/random/32', {})).data.random_bytes;
    assert.strictEqual(Buffer.from(rnd, 'base64').length, 32);

    // Errors: Vault's shape and codes.
    // (encrypt makes a missing key, as Vault's upsert does; decrypt does not)
    await refused(v.decryptData({ name: 'missing', ciphertext: ct2 }), 400, 'decrypt under a missing key');
    await refused(v.transitReadKey({ name: 'missing' }), 404, 'read a missing key');
    await refused(v.encryptData({ name: 'node', plaintext: 'not base64!' }), 400, 'wrong base64');
    // (a development-mode daemon allows deletion of new keys)
    await v.write('transit/keys/node/config', { deletion_allowed: false });
    await refused(v.transitDeleteKey({ name: 'node' }), 400, 'delete without deletion_allowed');

    // Delete.
    await v.write('transit/keys/node/config', { deletion_allowed: true });
    await v.transitDeleteKey({ name: 'node' });
    await refused(v.transitReadKey({ name: 'node' }), 404, 'read a deleted key');

    console.log('node-vault: all passed');
}

main().catch((e) => {
    console.error('node-vault:', e && e.stack ? e.stack : e, e && e.response ? JSON.stringify(e.response.body) : '');
    process.exit(1);
});
