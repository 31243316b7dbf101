// Generates ownership.json: owner(guild_id, N) as the TypeScript reference computes it.
//   md5:  crypto.createHash('md5').update(id).digest().readUInt32BE(0) % N   (the reference, verbatim)
//   jump: Lamping-Veach jump consistent hash of md5(id)[0..8] read as a big-endian u64,
//         written here independently of the Rust code (BigInt for the 64-bit LCG).
// Run: node tests/vectors/ownership.js > tests/vectors/ownership.json
'use strict';
const crypto = require('crypto');

function md5Owner(id, n) {
  return crypto.createHash('md5').update(id).digest().readUInt32BE(0) % n;
}

function jumpOwner(id, n) {
  let key = crypto.createHash('md5').update(id).digest().readBigUInt64BE(0);
  const mask = (1n << 64n) - 1n;
  let b = -1;
  let j = 0;
  while (j < n) {
    b = j;
    key = (key * 2862933555777941757n + 1n) & mask;
    j = Math.floor((b + 1) * (Number(1n << 31n) / Number((key >> 33n) + 1n)));
  }
  return b;
}

// Deterministic pseudo-random snowflakes (xorshift64*), so the file is reproducible.
let state = 0x9E3779B97F4A7C15n;
function next() {
  state ^= state >> 12n; state ^= (state << 25n) & ((1n << 64n) - 1n); state ^= state >> 27n;
  return (state * 0x2545F4914F6CDD1Dn) & ((1n << 64n) - 1n);
}
const epoch = 1420070400000n;
const ids = [
  '0', '1', '2', '9', '10', '42', '1000', '4294967295', '4294967296',
  '81384788765712384', '41771983423143937', '175928847299117063', '222078108977594368',
  '267624335836053506', '302050872383242240', '613425648685547541', '1000000000000000000',
  '1099511627775999999', '9223372036854775807', '9223372036854775808', '18446744073709551615',
];
while (ids.length < 64) {
  const ms = 1420070400000n + (next() % (11n * 365n * 86400000n)); // 2015..2026
  const low = next() & ((1n << 22n) - 1n);
  ids.push((((ms - epoch) << 22n) | low).toString());
}
const pods = [1, 2, 3, 4, 5, 7, 10, 64];
const vectors = [];
for (const id of ids) {
  vectors.push({
    id,
    md5: pods.map((n) => md5Owner(id, n)),
    jump: pods.map((n) => jumpOwner(id, n)),
  });
}
process.stdout.write('{"pods": ' + JSON.stringify(pods) + ',\n"vectors": [\n' + vectors.map((v) => JSON.stringify(v)).join(',\n') + '\n]}\n');
