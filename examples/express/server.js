// A backend for eddy's event-driven flow, in Express: it starts requests for the page,
// receives eddy's webhook, checks all three signatures, enriches the AI result and posts
// it to the callback URL; eddy then pushes it to the page. See examples/README.md.
import { createHmac, timingSafeEqual } from "node:crypto";
import express from "express";

const EDDY_URL = process.env.EDDY_URL ?? "http://127.0.0.1:3000";
const EDDY_API_KEY = process.env.EDDY_API_KEY; // a project key, mr_live_…
// Requests that pass webhook_url are signed with the project's request secret:
// GET /console/project → request_webhook_secret.
const WEBHOOK_SECRET = process.env.WEBHOOK_SECRET;
const WORKFLOW = process.env.WORKFLOW ?? "chat";

const post = (url, body) =>
  fetch(url, {
    method: "POST",
    headers: { authorization: `Bearer ${EDDY_API_KEY}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });

const hmac = (key, message, encoding) => createHmac("sha256", key).update(message).digest(encoding);
const same = (a, b) => a.length === b.length && timingSafeEqual(Buffer.from(a), Buffer.from(b));

function verified(req) {
  const header = (name) => req.get(name) ?? "";
  const raw = req.rawBody.toString("utf8");
  // mr-signature (ModelRiver's docs): hex HMAC of the raw body.
  const mr = same(header("mr-signature"), hmac(WEBHOOK_SECRET, raw, "hex"));
  // X-ModelRiver-Signature (ModelRiver's own backends): hex HMAC of "{timestamp}.{data}".
  const signed = req.body.data ? JSON.stringify(req.body.data) : raw;
  const stamped = `${header("x-modelriver-timestamp")}.${signed}`;
  const modelriver = same(header("x-modelriver-signature"), hmac(WEBHOOK_SECRET, stamped, "hex"));
  // Standard Webhooks: base64 HMAC keyed by the secret's bytes, any of the listed ones.
  const key = Buffer.from(WEBHOOK_SECRET.replace(/^whsec_/, ""), "base64");
  const message = `${header("webhook-id")}.${header("webhook-timestamp")}.${raw}`;
  const standard = header("webhook-signature")
    .split(" ")
    .some((signature) => same(signature, `v1,${hmac(key, message, "base64")}`));
  const fresh = Math.abs(Date.now() / 1000 - Number(header("webhook-timestamp"))) < 300;
  return mr && modelriver && standard && fresh;
}

const app = express();
app.use(express.json({ limit: "2mb", verify: (req, _res, buf) => (req.rawBody = buf) }));

// The page asks for an answer; it gets what it needs to follow it over the WebSocket.
app.post("/chat", async (req, res) => {
  const reply = await post(`${EDDY_URL}/v1/ai/async`, {
    workflow: WORKFLOW,
    messages: [{ role: "user", content: String(req.body.message ?? "") }],
    events: ["webhook_received"],
    delivery_method: "websocket",
    webhook_url: `${app.locals.publicUrl}/webhook`,
    metadata: { source: "express" },
  });
  const { channel_id, project_id, ws_token, websocket_url, websocket_channel } = await reply.json();
  res.status(reply.status).json({ channel_id, project_id, ws_token, websocket_url, websocket_channel });
});

app.post("/webhook", async (req, res) => {
  if (!verified(req)) return res.status(401).json({ error: "invalid signature" });
  const { type, ai_response, callback_url, channel_id, timestamp } = req.body;
  if (type !== "task.ai_generated") return res.json({ received: true });
  const data = { ...ai_response.data, enriched_by: "express", generated_at: timestamp };
  const callback = await post(callback_url, { data, task_id: `chat_${channel_id}` });
  // 409: an earlier delivery of this webhook already called back. Anything else fails the
  // webhook, so eddy retries it.
  res.status(callback.ok || callback.status === 409 ? 200 : 502).json({ callback: callback.status });
});

// What the SDK's reconnectWithBackend() calls after a page reload: a fresh ws_token.
app.post("/api/v1/ai/reconnect", async (req, res) => {
  const reply = await post(`${EDDY_URL}/v1/ai/reconnect`, { channel_id: req.body.channel_id });
  res.status(reply.status).json(await reply.json());
});

const server = app.listen(Number(process.env.PORT ?? 4000), "127.0.0.1", () => {
  const { port } = server.address();
  app.locals.publicUrl = process.env.PUBLIC_URL ?? `http://127.0.0.1:${port}`;
  console.log(`listening on http://127.0.0.1:${port}`);
});
