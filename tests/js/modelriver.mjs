// What ModelRiver's public code computes from what eddy sends, computed here under Node
// the same way (written from their documented behaviour, not copied), for
// tests/it/compat.rs. One JSON object on stdin, one on stdout.
//
//   node modelriver.mjs webhook   {secret, headers: {name: value}, body: "<raw body>"}
//     → which signature checks pass:
//       seed         the seed doc's check: hex HMAC of JSON.stringify(parsed body) = mr-signature
//       raw          hex HMAC of the raw body = mr-signature
//       demo         the demo backend's verifyWebhookSignature: X-ModelRiver-Signature is the
//                    hex HMAC of "{timestamp}.{JSON.stringify(body.data)}", or of
//                    "{timestamp}.{raw body}" when body.data is falsy
//       test_server  the webhook test server's verifySignature: always
//                    "{timestamp}.{JSON.stringify(body.data)}"
//       standard     Standard Webhooks, any signature in webhook-signature
//       roundtrip    JSON.stringify(JSON.parse(body)) gives the body back
//   node modelriver.mjs token     {token}
//     → the SDK's decodeToken / isTokenExpired reading: {payload, topic, expired} or {error}

import { createHmac } from "node:crypto";

const hex = (key, message) => createHmac("sha256", key).update(message).digest("hex");

function webhook({ secret, headers, body }) {
  const parsed = JSON.parse(body);
  const timestamp = headers["x-modelriver-timestamp"];
  const signature = headers["x-modelriver-signature"];
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  const message = `${headers["webhook-id"]}.${headers["webhook-timestamp"]}.${body}`;
  const standard = `v1,${createHmac("sha256", key).update(message).digest("base64")}`;
  const demoSigned = parsed.data ? JSON.stringify(parsed.data) : body;
  return {
    seed: headers["mr-signature"] === hex(secret, JSON.stringify(parsed)),
    raw: headers["mr-signature"] === hex(secret, body),
    demo: signature === hex(secret, `${timestamp}.${demoSigned}`),
    test_server: signature === hex(secret, `${timestamp}.${JSON.stringify(parsed.data)}`),
    standard: headers["webhook-signature"].split(" ").includes(standard),
    roundtrip: JSON.stringify(parsed) === body,
  };
}

function token({ token }) {
  const parts = token.split(".");
  if (parts.length !== 3) return { error: "JWT must have 3 parts" };
  let base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
  base64 += "=".repeat((4 - (base64.length % 4)) % 4);
  const payload = JSON.parse(atob(base64));
  if (!payload.project_id || !payload.channel_id) return { error: "missing required fields" };
  const topic = payload.topic || `ai_response:${payload.project_id}:${payload.channel_id}`;
  const expired = payload.exp ? Date.now() >= payload.exp * 1000 : false;
  return { payload, topic, expired };
}

const commands = { webhook, token };
let text = "";
for await (const chunk of process.stdin) text += chunk;
const input = JSON.parse(text);
process.stdout.write(JSON.stringify(commands[process.argv[2]](input)));
