#!/usr/bin/env node
// A webhook receiver that verifies atender-webhooks deliveries, Node.js built-ins only.
//
//     WEBHOOK_SECRET=whsec_... PORT=8000 node verify.js
//
// It answers 204 to a genuine delivery and 401 to anything else, and prints one line per request.
// By default it checks the Standard Webhooks headers (webhook-id, webhook-timestamp,
// webhook-signature), which also protect against replays; SCHEME=atender checks
// X-Atender-Signature instead. PORT=0 picks a free port; the first line printed names it.
'use strict';

const crypto = require('node:crypto');
const http = require('node:http');

// Deliveries signed longer ago (or further ahead) than this are refused as possible replays.
const TOLERANCE_SECONDS = 5 * 60;

// Constant-time comparison of two strings (timingSafeEqual needs equal lengths).
function safeEqual(expected, given) {
  const a = Buffer.from(expected);
  const b = Buffer.from(String(given));
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}

// X-Atender-Signature: lowercase hex HMAC-SHA256 of the raw body, keyed by the whole secret
// string (whsec_ prefix included).
function verifyAtenderSignature(secret, body, signature) {
  const expected = crypto.createHmac('sha256', secret).update(body).digest('hex');
  return safeEqual(expected, String(signature || '').trim());
}

// Standard Webhooks: base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}", keyed by
// the base64-decoded part of the secret after whsec_. The header may carry several
// space-separated signatures (during a secret rotation); one match is enough.
function verifyStandardWebhooks(secret, headers, body, nowSeconds = Date.now() / 1000) {
  const id = headers['webhook-id'];
  const timestamp = headers['webhook-timestamp'];
  const signatures = headers['webhook-signature'];
  if (!id || !timestamp || !signatures || !/^[0-9]+$/.test(timestamp)) return false;
  if (Math.abs(nowSeconds - Number(timestamp)) > TOLERANCE_SECONDS) return false;
  const key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64');
  const expected = crypto
    .createHmac('sha256', key)
    .update(`${id}.${timestamp}.`)
    .update(body)
    .digest('base64');
  return signatures.split(' ').some((signature) => {
    const [version, value] = signature.split(',');
    return version === 'v1' && safeEqual(expected, value || '');
  });
}

function main() {
  const secret = process.env.WEBHOOK_SECRET || '';
  if (!secret.startsWith('whsec_')) {
    console.error('set WEBHOOK_SECRET to the subscription secret (whsec_...)');
    process.exit(2);
  }
  const scheme = process.env.SCHEME || 'standard';
  const host = process.env.HOST || '127.0.0.1';
  const seen = new Set();
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      // Verify the raw bytes exactly as received, never re-serialized JSON.
      const body = Buffer.concat(chunks);
      const genuine =
        scheme === 'atender'
          ? verifyAtenderSignature(secret, body, req.headers['x-atender-signature'])
          : verifyStandardWebhooks(secret, req.headers, body);
      if (!genuine) {
        console.log('rejected: bad signature');
        res.writeHead(401).end();
        return;
      }
      const event = JSON.parse(body);
      // A delivery may arrive more than once (at-least-once): deduplicate on a signed value.
      // Each event reaches a subscription as one delivery, so the event id in the body will do.
      if (seen.has(event.id)) {
        console.log(`duplicate ${event.id}`);
      } else {
        seen.add(event.id);
        // Acknowledge at once; real work belongs in a background job.
        console.log(`verified ${event.id} ${event.event}`);
      }
      res.writeHead(204).end();
    });
  });
  server.listen(Number(process.env.PORT || 8000), host, () => {
    console.log(`listening on http://${host}:${server.address().port}`);
  });
}

module.exports = { verifyAtenderSignature, verifyStandardWebhooks };

if (require.main === module) main();
