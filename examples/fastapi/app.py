"""A backend for eddy's event-driven flow, in FastAPI: it starts requests for the page,
receives eddy's webhook, checks all three signatures, enriches the AI result and posts it
to the callback URL; eddy then pushes it to the page. See examples/README.md."""

import base64
import decimal
import hashlib
import hmac
import json
import os
import socket
import time

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

EDDY_URL = os.environ.get("EDDY_URL", "http://127.0.0.1:3000")
EDDY_API_KEY = os.environ.get("EDDY_API_KEY", "")  # a project key, mr_live_…
# Requests that pass webhook_url are signed with the project's request secret:
# GET /console/project → request_webhook_secret.
WEBHOOK_SECRET = os.environ.get("WEBHOOK_SECRET", "")
WORKFLOW = os.environ.get("WORKFLOW", "chat")

app = FastAPI()
eddy = httpx.AsyncClient(headers={"authorization": f"Bearer {EDDY_API_KEY}"}, timeout=30)


def js_stringify(value) -> str:
    """What JavaScript's JSON.stringify prints for a parsed value. eddy writes `data` in
    that form, so only floats need care: JavaScript prints 1e-05 as 0.00001, 1e+16 as
    10000000000000000 and 1.0 as 1."""
    if isinstance(value, dict):
        items = (js_stringify(k) + ":" + js_stringify(v) for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(js_stringify(v) for v in value) + "]"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    if isinstance(value, float) and 1e-6 <= abs(value) < 1e21:
        return format(decimal.Decimal(repr(value)), "f")
    if isinstance(value, float):
        mantissa, exponent = repr(value).split("e")
        return f"{mantissa}e{int(exponent):+d}"
    return json.dumps(value, ensure_ascii=False)


def sign(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def verified(headers, raw: bytes, body: dict) -> bool:
    secret = WEBHOOK_SECRET.encode()
    # mr-signature (ModelRiver's docs): hex HMAC of the raw body.
    mr = hmac.compare_digest(headers.get("mr-signature", ""), sign(secret, raw).hex())
    # X-ModelRiver-Signature (ModelRiver's own backends): hex HMAC of "{timestamp}.{data}".
    signed = js_stringify(body["data"]).encode() if body.get("data") else raw
    stamped = headers.get("x-modelriver-timestamp", "").encode() + b"." + signed
    modelriver = hmac.compare_digest(
        headers.get("x-modelriver-signature", ""), sign(secret, stamped).hex()
    )
    # Standard Webhooks: base64 HMAC keyed by the secret's bytes, any of the listed ones.
    key = base64.b64decode(WEBHOOK_SECRET.removeprefix("whsec_"))
    message = f"{headers.get('webhook-id')}.{headers.get('webhook-timestamp')}.".encode() + raw
    want = "v1," + base64.b64encode(sign(key, message)).decode()
    listed = headers.get("webhook-signature", "").split(" ")
    standard = any(hmac.compare_digest(s, want) for s in listed)
    fresh = abs(time.time() - float(headers.get("webhook-timestamp") or 0)) < 300
    return mr and modelriver and standard and fresh


@app.post("/chat")
async def chat(request: Request):
    """The page asks for an answer; it gets what it needs to follow it over the WebSocket."""
    message = (await request.json()).get("message", "")
    reply = await eddy.post(f"{EDDY_URL}/v1/ai/async", json={
        "workflow": WORKFLOW,
        "messages": [{"role": "user", "content": str(message)}],
        "events": ["webhook_received"],
        "delivery_method": "websocket",
        "webhook_url": f"{app.state.public_url}/webhook",
        "metadata": {"source": "fastapi"},
    })
    fields = ("channel_id", "project_id", "ws_token", "websocket_url", "websocket_channel")
    return JSONResponse({f: reply.json().get(f) for f in fields}, reply.status_code)


@app.post("/webhook")
async def webhook(request: Request):
    raw = await request.body()
    body = json.loads(raw)
    if not verified(request.headers, raw, body):
        return JSONResponse({"error": "invalid signature"}, 401)
    if body["type"] != "task.ai_generated":
        return {"received": True}
    data = {**body["ai_response"]["data"], "enriched_by": "fastapi",
            "generated_at": body["timestamp"]}
    callback = await eddy.post(body["callback_url"], json={
        "data": data, "task_id": f"chat_{body['channel_id']}"})
    # 409: an earlier delivery of this webhook already called back. Anything else fails
    # the webhook, so eddy retries it.
    ok = callback.is_success or callback.status_code == 409
    return JSONResponse({"callback": callback.status_code}, 200 if ok else 502)


@app.post("/api/v1/ai/reconnect")
async def reconnect(request: Request):
    """What the SDK's reconnectWithBackend() calls after a page reload: a fresh ws_token."""
    channel_id = (await request.json()).get("channel_id")
    reply = await eddy.post(f"{EDDY_URL}/v1/ai/reconnect", json={"channel_id": channel_id})
    return JSONResponse(reply.json(), reply.status_code)


if __name__ == "__main__":
    listener = socket.create_server(("127.0.0.1", int(os.environ.get("PORT", "8000"))))
    port = listener.getsockname()[1]
    app.state.public_url = os.environ.get("PUBLIC_URL", f"http://127.0.0.1:{port}")
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[listener])
